import json
import shutil
import subprocess
import sys
from dataclasses import replace

from pathlib import Path

import pytest
import torch

import data
from conftest import ROOT, make_synthetic_root, synthetic_digits, write_idx

# -----------------------------------------------------------------------------
# Unit tests on the synthetic fixture


def test_split_sizes_disjoint_and_stratified():
    labels = torch.arange(60_000) % 10
    labels[:1000] = 3  # unbalanced classes: stratification must follow them
    train_idx, val_idx = data.stratified_split(labels)
    assert len(train_idx) == 55_000 and len(val_idx) == 5_000
    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0
    assert len(torch.cat([train_idx, val_idx]).unique()) == 60_000
    share_all = torch.bincount(labels, minlength=10).double() / len(labels)
    share_val = torch.bincount(labels[val_idx], minlength=10).double() / len(val_idx)
    assert torch.allclose(share_all, share_val, atol=1e-3)


def test_split_is_deterministic_and_independent_of_global_seed():
    labels = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    a = data.stratified_split(labels)
    torch.manual_seed(2)
    b = data.stratified_split(labels)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = data.stratified_split(labels, seed=1)
    assert not torch.equal(a[1], c[1])


def test_load_data_shapes_and_normalization(synthetic_data):
    d = synthetic_data
    assert d.x_train.shape == (1100, 1, 28, 28) and d.x_val.shape == (100, 1, 28, 28) and d.x_test.shape == (200, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    # statistics come from the training split: there it is standardized exactly
    assert abs(float(d.x_train.mean())) < 1e-4 and abs(float(d.x_train.std()) - 1) < 1e-3
    assert d.genuine is False
    assert d.background == pytest.approx(-d.mean / d.std)
    # the blank pixel value maps to the background value
    assert float(data.normalize(torch.zeros(1, 28, 28, dtype=torch.uint8), d.mean, d.std).min()) == pytest.approx(d.background)


def test_batches_are_deterministic_for_a_seed(synthetic_data):
    import train
    d = synthetic_data
    o1, o2 = train.epoch_order(len(d.x_train), 3, 0), train.epoch_order(len(d.x_train), 3, 0)
    assert torch.equal(o1, o2)
    assert not torch.equal(o1, train.epoch_order(len(d.x_train), 3, 1))
    b1 = [y for _, y in data.batches(d.x_train, d.y_train, 64, o1)]
    b2 = [y for _, y in data.batches(d.x_train, d.y_train, 64, o2)]
    assert all(torch.equal(a, b) for a, b in zip(b1, b2))
    assert sum(len(b) for b in b1) == len(d.x_train)


def test_augmentation_keeps_shape_dtype_labels_and_moves_pixels(synthetic_data):
    d = synthetic_data
    x, y = d.x_train[:64], d.y_train[:64].clone()
    out = data.augment(x, data.Augment(translate=2, rotate=10, scale=0.1), torch.Generator().manual_seed(0), d.background)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(y, d.y_train[:64])  # labels untouched
    moved = (out - x).abs().flatten(1).max(1).values > 0.5
    assert moved.float().mean() > 0.9  # nearly every image changed
    # no warp at all leaves the images as they are; the padding is blank paper, not 0
    same = data.augment(x, data.Augment(0, 0, 0), torch.Generator().manual_seed(0), d.background)
    assert torch.allclose(same, x, atol=1e-5)
    shifted = data.augment(torch.full((2, 1, 28, 28), d.background), data.Augment(translate=3), torch.Generator().manual_seed(1), d.background)
    assert torch.allclose(shifted, torch.full_like(shifted, d.background), atol=1e-5)


def test_integer_shift_moves_content_by_that_many_pixels(synthetic_data):
    """Calibration: a shift of +2 px in x under affine_grid's convention must move the block 2 px."""
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 10:14, 10:14] = 1.0
    g = torch.Generator().manual_seed(0)
    spec = data.Augment(translate=2)
    # find a draw and compare the centre of mass shift with what was drawn
    u = torch.rand(1, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = data.augment(img, spec, g, 0.0)
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    com = lambda t: (float((t[0, 0] * xs).sum() / t.sum()), float((t[0, 0] * ys).sum() / t.sum()))  # noqa: E731
    (x0, y0), (x1, y1) = com(img), com(out)
    # grid_sample samples the input at (output + t): content moves by -t pixels
    assert x1 - x0 == pytest.approx(-float(u[0, 2]) * 2, abs=0.05)
    assert y1 - y0 == pytest.approx(-float(u[0, 3]) * 2, abs=0.05)


# -----------------------------------------------------------------------------
# Bad files: one clear DataError, never a numpy traceback


@pytest.fixture
def broken_root(tmp_path):
    return make_synthetic_root(tmp_path, n_train=120, n_test=20)


def test_truncated_file_is_a_clear_error(broken_root):
    path = broken_root / "MNIST/raw/train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match="truncated.*replace it"):
        data.load_data(data_dir=broken_root, download=False)


def test_wrong_magic_is_a_clear_error(broken_root):
    path = broken_root / "MNIST/raw/t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[2:4] = b"\x08\x02"
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*magic"):
        data.load_data(data_dir=broken_root, download=False)


def test_label_out_of_range_is_a_clear_error(broken_root):
    x, y = synthetic_digits(20, 2)
    y[3] = 12
    write_idx(broken_root / "MNIST/raw/t10k-labels-idx1-ubyte", y)
    with pytest.raises(data.DataError, match="labels outside"):
        data.load_data(data_dir=broken_root, download=False)


def test_corrupted_file_of_genuine_size_fails_md5(broken_root, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    spec = data.DATASETS["mnist"]
    path = broken_root / "MNIST/raw/train-labels-idx1-ubyte"
    # pretend the fixture's size is the genuine one, with a reference MD5 it cannot have
    fake = replace(spec, train_labels=data.RawFile(path.name, path.stat().st_size, "0" * 32))
    monkeypatch.setitem(data.DATASETS, "mnist", fake)
    with pytest.raises(data.DataError, match="wrong MD5"):
        data.load_data(data_dir=broken_root, download=False)


def test_md5_cache_works_when_cache_folder_is_unwritable(broken_root, monkeypatch, tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))  # mkdir below a file fails
    path = broken_root / "MNIST/raw/train-labels-idx1-ubyte"
    assert data._md5_cached(path) == data._md5(path)


def test_missing_files_offline_is_one_clear_line(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load_data(data_dir=tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "DATA_DIR" in msg


def test_failed_download_becomes_the_clear_line(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(self):  # what torchvision does with no network: a RuntimeError listing mirrors
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://mirror/, got:\n<urlopen error>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(data.DataError, match="download failed: Error downloading train-images-idx3-ubyte.gz: <urlopen error>") as e:
        data.load_data(data_dir=tmp_path, download=True)
    assert "\n" not in str(e.value)


def test_cli_error_is_one_line_and_nonzero(tmp_path, monkeypatch):
    import runpy
    monkeypatch.setattr(sys, "argv", ["data.py", "--data-dir", str(tmp_path), "--no-download"])
    with pytest.raises(SystemExit) as e:  # `python data.py ...`, in this process: the message is what it prints, exiting 1
        runpy.run_path(str(ROOT / "data.py"), run_name="__main__")
    assert isinstance(e.value.code, str) and e.value.code.startswith("error:") and len(e.value.code.strip().splitlines()) == 1


def test_an_images_file_in_the_labels_place_is_a_clear_error(broken_root):
    x, _ = synthetic_digits(20, 2)
    write_idx(broken_root / "MNIST/raw/t10k-labels-idx1-ubyte", x)  # a valid IDX file, of the wrong kind
    with pytest.raises(data.DataError, match="labels a 1-D IDX file.*replace them"):
        data.load_data(data_dir=broken_root, download=False)


def test_read_idx_gives_the_written_array(tmp_path):
    x, y = synthetic_digits(30, 4)
    write_idx(tmp_path / "images", x)
    write_idx(tmp_path / "labels", y)
    assert data.read_idx(tmp_path / "images").dtype == torch.uint8
    assert torch.equal(data.read_idx(tmp_path / "images"), torch.from_numpy(x))
    assert torch.equal(data.read_idx(tmp_path / "labels"), torch.from_numpy(y))


def test_in_place_normalization_is_bit_identical_to_the_plain_formula(synthetic_root):
    """Normalization was made in place for speed: the same bits, so runs before and after agree."""
    x = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    assert torch.equal(data.normalize(x, 0.13, 0.31), ((x.float() / 255.0 - 0.13) / 0.31).unsqueeze(1))
    d = data.load_data(data_dir=synthetic_root, download=False)
    x_tr, y_tr, *_ = data.load_raw(data_dir=synthetic_root, download=False)
    train_idx, _ = data.stratified_split(y_tr)
    pixels = x_tr[train_idx].float() / 255.0
    assert (d.mean, d.std) == (float(pixels.mean()), float(pixels.std()))
    assert torch.equal(d.x_train, ((pixels - d.mean) / d.std).unsqueeze(1))


def test_loading_data_does_not_import_torchvision(synthetic_root):
    """torchvision costs ~1.2 s of `python train.py`'s start-up; it is only imported to download."""
    code = ("import sys, data; data.load_data(data_dir=sys.argv[1], download=False); "
            "assert 'torchvision' not in sys.modules, 'torchvision was imported'")
    subprocess.run([sys.executable, "-c", code, str(synthetic_root)], cwd=ROOT, check=True)


def test_data_folder_is_never_written(synthetic_root):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in synthetic_root.rglob("*"))
    data.load_data(data_dir=synthetic_root, download=False)
    data.describe(data_dir=synthetic_root, download=False)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in synthetic_root.rglob("*")) == before


def test_another_dataset_of_the_family_loads(tmp_path):
    root = make_synthetic_root(tmp_path, n_train=120, n_test=20, folder="FashionMNIST")
    d = data.load_data("fashion-mnist", data_dir=root, download=False)
    assert d.name == "fashion-mnist" and d.class_names[0] == "T-shirt/top" and d.x_train.shape[1:] == (1, 28, 28)


# -----------------------------------------------------------------------------
# MNIST fetched by hand: other names and folders load, or say what was found and the fix


def _hand_fetched(root: Path, folder: str, name, gz: bool = False, parts=("train", "test")) -> dict:
    """The synthetic files written in IDX format under root/folder, each named by name(canonical);
    gzip-compressed when gz. Returns {canonical name: the array written}."""
    import gzip

    written = {}
    for part, n, seed in (("train", 120, 1), ("t10k", 20, 2)):
        if ("train" if part == "train" else "test") not in parts:
            continue
        x, y = synthetic_digits(n, seed)
        for kind, a in (("images-idx3-ubyte", x), ("labels-idx1-ubyte", y)):
            canonical = f"{part}-{kind}"
            path = root / folder / name(canonical)
            write_idx(path, a)
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
                path.unlink()
            written[canonical] = a
    return written


@pytest.mark.parametrize("layout", ["gz_only", "kaggle_names", "flat_folder", "data_dir_is_raw", "data_dir_is_mnist"])
def test_hand_fetched_layouts_load(tmp_path, layout):
    folder, name, gz, data_dir = {
        "gz_only": ("MNIST/raw", str, True, tmp_path),
        "kaggle_names": ("MNIST/raw", lambda n: n.replace("-idx", ".idx"), False, tmp_path),
        "flat_folder": ("", str, False, tmp_path),
        "data_dir_is_raw": ("MNIST/raw", str, False, tmp_path / "MNIST" / "raw"),
        "data_dir_is_mnist": ("MNIST/raw", lambda n: n.replace("-idx", ".idx"), True, tmp_path / "MNIST"),
    }[layout]
    written = _hand_fetched(tmp_path, folder, name, gz)
    x_tr, y_tr, x_te, y_te, genuine = data.load_raw(data_dir=data_dir, download=False)
    assert not genuine and x_tr.shape == (120, 28, 28) and x_te.shape == (20, 28, 28)
    assert torch.equal(x_tr, torch.from_numpy(written["train-images-idx3-ubyte"]))
    assert torch.equal(y_te, torch.from_numpy(written["t10k-labels-idx1-ubyte"]).long())


def test_the_test_files_alone_are_enough_for_the_test_split(tmp_path):
    written = _hand_fetched(tmp_path, "MNIST/raw", str, parts=("test",))
    x_tr, y_tr, x_te, y_te, _ = data.load_raw(data_dir=tmp_path, download=False, parts=("test",))
    assert x_tr is None and y_tr is None and torch.equal(x_te, torch.from_numpy(written["t10k-images-idx3-ubyte"]))
    with pytest.raises(data.DataError, match="lacks train-images-idx3-ubyte"):  # training still needs the train pair
        data.load_raw(data_dir=tmp_path, download=False)


def test_a_layout_that_cannot_be_read_names_what_was_found_and_the_fix(tmp_path):
    _hand_fetched(tmp_path, "MNIST/raw", lambda n: n + ".bin", parts=("test",))  # renamed past recognition
    with pytest.raises(data.DataError) as e:
        data.load_raw(data_dir=tmp_path, download=False, parts=("test",))
    msg = str(e.value)
    assert "\n" not in msg and "found there: MNIST/raw/t10k-images-idx3-ubyte.bin" in msg and "DATA_DIR" in msg
    assert "t10k-images-idx3-ubyte" in msg and "Kaggle" in msg


def test_a_broken_gz_is_a_clear_error(tmp_path):
    _hand_fetched(tmp_path, "MNIST/raw", str, gz=True)
    path = tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz.*gunzip"):
        data.load_raw(data_dir=tmp_path, download=False)


# -----------------------------------------------------------------------------
# Integration: the real MNIST


def test_real_data_is_genuine_and_split_55000_5000_10000(real_data):
    d = real_data
    assert d.genuine
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (55_000, 5_000, 10_000)
    assert d.mean == pytest.approx(0.1307, abs=2e-4) and d.std == pytest.approx(0.3081, abs=2e-4)
    counts = torch.bincount(d.y_val, minlength=10)
    assert counts.min() >= 450 and counts.max() <= 565  # ~5000 * 6742/60000 for "1"


def test_our_idx_reader_matches_torchvision_on_the_real_files(real_data_dir):
    import torchvision.datasets
    ours = data.load_raw(data_dir=real_data_dir, download=False)
    train = torchvision.datasets.MNIST(str(real_data_dir), train=True, download=False)
    test = torchvision.datasets.MNIST(str(real_data_dir), train=False, download=False)
    for a, b in zip(ours[:4], (train.data, train.targets, test.data, test.targets)):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_step1_json_on_real_data(real_data_dir):
    r = subprocess.run([sys.executable, str(ROOT / "data.py"), "--json", "--data-dir", str(real_data_dir)],
                       capture_output=True, text=True, check=True)
    d = json.loads(r.stdout)
    assert d["train_samples"] == 60_000 and d["test_samples"] == 10_000
    assert d["shape"] == [28, 28] and d["min"] == 0 and d["max"] == 255 and d["missing"] == 0
    assert d["classes"] == list(range(10))
    assert sum(d["class_counts_train"]) == 60_000 and d["class_counts_train"][1] == 6742
    assert sum(d["class_counts_test"]) == 10_000 and d["class_counts_test"][5] == 892
    assert d["split"] == {"train": 55_000, "val": 5_000, "test": 10_000}


def test_real_file_corruption_is_caught(real_data_dir, tmp_path, monkeypatch):
    """A copy of the genuine labels with one flipped byte keeps its size: only the MD5 can tell."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in data.DATASETS["mnist"].files:
        shutil.copy(real_data_dir / "MNIST" / "raw" / f.name, raw / f.name)
    labels = bytearray((raw / "t10k-labels-idx1-ubyte").read_bytes())
    labels[100] = (labels[100] + 1) % 10
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(labels))
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.*wrong MD5"):
        data.load_data(data_dir=tmp_path, download=False)


@pytest.mark.parametrize("sigma", [1.0, 4.0, 6.0])
def test_gaussian_blur_equals_a_zero_padded_separable_convolution(sigma):
    import torch.nn.functional as F
    x = torch.rand(3, 2, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    r = max(1, int(2 * sigma + 0.5))
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    ref = F.conv2d(x, k.view(1, 1, 1, -1).expand(2, 1, 1, -1), padding=(0, r), groups=2)
    ref = F.conv2d(ref, k.view(1, 1, -1, 1).expand(2, 1, -1, 1), padding=(r, 0), groups=2)
    assert torch.allclose(data.gaussian_blur(x, sigma), ref, atol=1e-6)


def test_elastic_distortion_is_smooth_seeded_and_leaves_affine_draws_unchanged(synthetic_data):
    x = synthetic_data.x_train[:16]
    bg = synthetic_data.background
    affine = data.Augment(translate=2.0)
    elastic = data.Augment(translate=2.0, elastic=34.0, elastic_sigma=4.0)
    a = data.augment(x, affine, torch.Generator().manual_seed(3), bg)
    e1 = data.augment(x, elastic, torch.Generator().manual_seed(3), bg)
    e2 = data.augment(x, elastic, torch.Generator().manual_seed(3), bg)
    assert e1.shape == x.shape and torch.equal(e1, e2)  # a function of the generator's seed
    assert not torch.allclose(e1, a)  # it moves pixels beyond the affine part
    # alpha 0 is exactly the affine warp: the elastic field is drawn after the affine numbers
    assert torch.equal(data.augment(x, data.Augment(translate=2.0, elastic=0.0), torch.Generator().manual_seed(3), bg), a)
    # the field is smooth: a blurred field varies much less from pixel to pixel than white noise
    noise = torch.rand(4, 2, 28, 28) * 2 - 1
    smooth = data.gaussian_blur(noise, 4.0)
    assert smooth.diff(dim=-1).abs().mean() < 0.1 * noise.diff(dim=-1).abs().mean()
    assert elastic.active and not data.Augment(0, 0, 0, 0).active
