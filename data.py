"""MNIST (and its same-format relatives) as verified in-memory tensors.

    raw IDX files --verify--> uint8 tensors (read here; torchvision only downloads)
        --split (seeded, stratified)--> train / val / test --normalize once--> float32

Everything after loading is tensor ops on the whole dataset: batches are slices of
one tensor, and augmentation is one affine warp applied to a whole batch. There are
no per-image Python transforms and no DataLoader workers, which is what makes an
epoch take seconds on a 2-core CPU.

`python data.py` answers the homework's "Step 1" questions, computed from the data.
"""

import argparse
import hashlib
import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# The datasets this layer knows. All share the IDX format and torchvision's layout
# (<root>/<Folder>/raw/<file>), so adding one is one entry here; models and training
# only ever see (N, 1, 28, 28) tensors and integer labels.


@dataclass(frozen=True)
class RawFile:
    name: str
    size: int  # bytes of the genuine release
    md5: str | None  # of the uncompressed genuine file; None where we have no reference


@dataclass(frozen=True)
class DatasetSpec:
    torchvision_class: str  # name in torchvision.datasets
    folder: str  # torchvision's folder under the root
    problem: str
    class_names: tuple[str, ...]
    train_images: RawFile
    train_labels: RawFile
    test_images: RawFile
    test_labels: RawFile

    @property
    def files(self) -> tuple[RawFile, ...]:
        return (self.train_images, self.train_labels, self.test_images, self.test_labels)


DATASETS = {
    "mnist": DatasetSpec(
        torchvision_class="MNIST",
        folder="MNIST",
        problem="10-class image classification: which handwritten digit (0-9) a 28x28 grey image shows",
        class_names=tuple(str(d) for d in range(10)),
        train_images=RawFile("train-images-idx3-ubyte", 47040016, "6bbc9ace898e44ae57da46a324031adb"),
        train_labels=RawFile("train-labels-idx1-ubyte", 60008, "a25bea736e30d166cdddb491f175f624"),
        test_images=RawFile("t10k-images-idx3-ubyte", 7840016, "2646ac647ad5339dbf082846283269ea"),
        test_labels=RawFile("t10k-labels-idx1-ubyte", 10008, "27ae3e4e09519cfbb04c329615203637"),
    ),
    # Same file names and sizes as MNIST. We hold no MD5 of the uncompressed files
    # (torchvision lists those of the .gz archives), so only the structure is checked.
    "fashion-mnist": DatasetSpec(
        torchvision_class="FashionMNIST",
        folder="FashionMNIST",
        problem="10-class image classification: which kind of clothing a 28x28 grey image shows",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        train_images=RawFile("train-images-idx3-ubyte", 47040016, None),
        train_labels=RawFile("train-labels-idx1-ubyte", 60008, None),
        test_images=RawFile("t10k-images-idx3-ubyte", 7840016, None),
        test_labels=RawFile("t10k-labels-idx1-ubyte", 10008, None),
    ),
}

VAL_FRACTION = 5_000 / 60_000  # 55,000 train / 5,000 validation out of MNIST's 60,000
SPLIT_SEED = 0  # the split never changes with the training seed: every run sees the same val set


class DataError(Exception):
    """A problem with the data files, phrased as one line the user can act on."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $DATA_DIR, else ./data."""
    return Path(data_dir or os.environ.get("DATA_DIR") or "data").expanduser()


# -----------------------------------------------------------------------------
# Verification: the IDX header must describe the file exactly (catches truncation and
# wrong files), and a file of the genuine release's size must have its MD5 (catches
# corruption). MD5 results are cached outside the data folder, which may be read-only.

IDX_MAGIC = {0x0801: 1, 0x0803: 3}  # unsigned-byte IDX: labels have 1 dim, images 3


def _idx_bytes(path: Path) -> bytes | None:
    """The IDX bytes of a gzip-compressed file (`.gz`), decompressed; None for a plain file."""
    if path.suffix != ".gz":
        return None
    import gzip
    import zlib

    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable gzip file ({e}); fetch it again or decompress it with gunzip") from None


def _read_idx_header(path: Path, raw: bytes | None = None) -> tuple[int, ...]:
    """The dims of an unsigned-byte IDX file, checked against its size. `raw`: the file's bytes
    when already read (a decompressed .gz); else only the header is read from disk."""
    if raw is None and path.suffix == ".gz":
        raw = _idx_bytes(path)
    if raw is not None:
        head = raw[:4]
    else:
        with open(path, "rb") as f:
            head = f.read(4)
    if len(head) < 4 or head[:2] != b"\x00\x00" or struct.unpack(">I", head)[0] not in IDX_MAGIC:
        raise DataError(f"{path} is not an unsigned-byte IDX file (wrong magic number {head.hex() or 'empty'}); "
                        f"replace it with the genuine file")
    ndim = IDX_MAGIC[struct.unpack(">I", head)[0]]
    if raw is not None:
        dims_bytes = raw[4:4 + 4 * ndim]
    else:
        with open(path, "rb") as f:
            dims_bytes = f.read(4 + 4 * ndim)[4:]
    if len(dims_bytes) < 4 * ndim:
        raise DataError(f"{path} is truncated inside its header; replace it with the genuine file")
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    expected = 4 + 4 * ndim + math.prod(dims)
    actual = len(raw) if raw is not None else path.stat().st_size
    if actual != expected:
        raise DataError(f"{path} is {actual} bytes{' uncompressed' if raw is not None else ''} but its header describes "
                        f"{expected} ({'truncated' if actual < expected else 'trailing bytes'}); replace it with the genuine file")
    return dims


def read_idx(path: Path) -> torch.Tensor:
    """An unsigned-byte IDX file (already verified; plain or .gz) as a uint8 tensor of its shape,
    e.g. (60000, 28, 28).

    Read here rather than through torchvision.datasets: importing torchvision costs ~1.2 s
    of every start-up, and the format is a header and raw bytes.
    """
    gz = _idx_bytes(path)
    dims = _read_idx_header(path, gz)
    raw = bytearray(gz if gz is not None else path.read_bytes())  # writable: torch.frombuffer warns on read-only buffers
    return torch.frombuffer(raw, dtype=torch.uint8, offset=4 + 4 * len(dims)).view(*dims)


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mnist-study" / "verified.json"


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _md5_cached(path: Path) -> str:
    """MD5 of a file, remembered by (path, size, mtime) so a 47 MB file is hashed once."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = _md5(path)
    cache[key] = digest
    try:  # caching is a convenience: a read-only home must not stop anyone
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cache_path)
    except OSError:
        pass
    return digest


def verify_raw_files(spec: DatasetSpec, raw_dir: Path, paths: dict[str, Path] | None = None) -> bool:
    """Raise DataError unless the raw files are sound. Returns True for the genuine release.
    paths: {canonical name: the file found} (locate_raw_files); default the four files in raw_dir."""
    paths = paths or {f.name: raw_dir / f.name for f in spec.files}
    genuine = len(paths) == len(spec.files)
    dims = {}
    for raw in spec.files:
        if raw.name not in paths:
            continue
        path = paths[raw.name]
        gz = _idx_bytes(path)
        dims[raw.name] = _read_idx_header(path, gz)
        size = len(gz) if gz is not None else path.stat().st_size
        if size != raw.size or raw.md5 is None:
            genuine = False  # a structurally valid file of another size (e.g. the tests' small fixture)
        elif (hashlib.md5(gz).hexdigest() if gz is not None else _md5_cached(path)) != raw.md5:
            raise DataError(f"{path} has the genuine size but the wrong MD5 (corrupted); replace it with the genuine file")
    for images, labels in ((spec.train_images, spec.train_labels), (spec.test_images, spec.test_labels)):
        if images.name in dims and labels.name in dims and dims[images.name][0] != dims[labels.name][0]:
            raise DataError(f"{raw_dir}: image and label files hold different numbers of samples; replace them with the genuine files")
    return genuine


def _missing_message(spec: DatasetSpec, raw_dir: Path, missing: list[str], why: str, found: list[str] = ()) -> str:
    seen = f"; found there: {', '.join(found[:6])}" if found else ""
    return (f"{spec.folder} not found: {raw_dir} lacks {', '.join(missing)} ({why}{seen}). "
            f"Point DATA_DIR or --data-dir at a folder holding {spec.folder}/raw/ (or the files themselves, named as "
            f"released, .gz or Kaggle's train-images.idx3-ubyte), e.g. DATA_DIR=../shared/data")


# Where a hand-fetched copy may lie, relative to DATA_DIR: torchvision's layout first, then DATA_DIR
# pointing at MNIST/ or at MNIST/raw/ itself, or a flat folder of the files.
LAYOUTS = ("{folder}/raw", "raw", ".", "{folder}")


def _spellings(name: str) -> list[str]:
    """The names a file is published under: as released (train-images-idx3-ubyte), Kaggle's
    (train-images.idx3-ubyte), each also gzip-compressed (.gz)."""
    kaggle = name.replace("-idx", ".idx")
    return [name, kaggle, name + ".gz", kaggle + ".gz"]


def locate_raw_files(spec: DatasetSpec, root: Path, parts: tuple[str, ...] = ("train", "test")) -> tuple[Path, dict[str, Path]]:
    """(the folder the files were found in, {canonical name: path}) for the files of `parts`
    ("train", "test"): the first of LAYOUTS under `root` that holds every one of them under one of
    its _spellings. None found: (root/<folder>/raw, {}). A plain file is preferred to its .gz."""
    wanted = [f.name for f in spec.files if (f.name.startswith("t10k") and "test" in parts)
              or (f.name.startswith("train") and "train" in parts)]
    for layout in LAYOUTS:
        folder = root / layout.format(folder=spec.folder)
        found = {}
        for name in wanted:
            hit = next((folder / n for n in _spellings(name) if (folder / n).is_file()), None)
            if hit is not None:
                found[name] = hit
        if len(found) == len(wanted):
            return folder, found
    return root / spec.folder / "raw", {}


def _what_is_there(spec: DatasetSpec, root: Path) -> list[str]:
    """Files under `root` (in the LAYOUTS folders) that look like the dataset's, for the error message."""
    seen = []
    for layout in LAYOUTS:
        folder = root / layout.format(folder=spec.folder)
        if folder.is_dir():
            seen += [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in sorted(folder.iterdir())
                     if p.is_file() and ("idx" in p.name or "ubyte" in p.name)]
    return sorted(set(seen))


def load_raw(name: str = "mnist", data_dir=None, download: bool = True, parts: tuple[str, ...] = ("train", "test")):
    """The official train and test sets as uint8 tensors: (60000, 28, 28), (60000,), (10000, 28, 28), (10000,),
    and whether the files are the genuine release. parts=("test",): only the test files are needed
    and read (the train pair is None, None). The files may be named as released, as Kaggle names
    them, or gzip-compressed, in torchvision's layout, a flat folder, or DATA_DIR at MNIST/raw
    itself (locate_raw_files). Errors: DataError, one line naming what was found and the fix."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    root = resolve_data_dir(data_dir)
    needed = [f for f in spec.files if (f.name.startswith("t10k") and "test" in parts) or (f.name.startswith("train") and "train" in parts)]
    raw_dir, paths = locate_raw_files(spec, root, parts)
    if not paths and download:
        import torchvision.datasets  # heavy import, paid only when files must be downloaded

        try:  # downloads and extracts all four files
            getattr(torchvision.datasets, spec.torchvision_class)(str(root), train=True, download=True)
        except (RuntimeError, OSError) as e:
            # Offline, torchvision raises a RuntimeError listing every mirror it tried: its first line
            # names the file ("Error downloading x.gz:"), its last the reason ("<urlopen error ...>").
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            first = f"{lines[0]} {lines[-1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
            raise DataError(_missing_message(spec, raw_dir, [f.name for f in needed], f"download failed: {first}",
                                             _what_is_there(spec, root))) from None
        raw_dir, paths = locate_raw_files(spec, root, parts)
    if not paths:
        raise DataError(_missing_message(spec, raw_dir, [f.name for f in needed],
                                         "download disabled" if not download else "download incomplete", _what_is_there(spec, root)))
    genuine = verify_raw_files(spec, raw_dir, paths)
    loaded = [read_idx(paths[f.name]) if f.name in paths else None for f in spec.files]
    x_train, y_train, x_test, y_test = loaded
    for images, labels, file in ((x_train, y_train, spec.train_labels), (x_test, y_test, spec.test_labels)):
        if images is None:
            continue
        if images.dim() != 3 or labels.dim() != 1:
            raise DataError(f"{raw_dir}: images must be a 3-D and labels a 1-D IDX file ({file.name} and its images are not); "
                            "replace them with the genuine files")
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < len(spec.class_names)):
            raise DataError(f"{paths[file.name]} holds labels outside 0..{len(spec.class_names) - 1}; replace it with the genuine file")
    return x_train, None if y_train is None else y_train.long(), x_test, y_test.long(), genuine


# -----------------------------------------------------------------------------
# Split and normalization


def stratified_split(labels: torch.Tensor, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED):
    """Indices (train_idx, val_idx), disjoint, each class represented in proportion.

    Per class the validation count is its share of round(N * val_fraction), rounded by
    largest remainder so the total is exact (5,000 of MNIST's 60,000).
    """
    n_val = round(len(labels) * val_fraction)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n_val / len(labels)
    take = exact.floor().long()
    leftover = n_val - int(take.sum())
    take[torch.argsort(exact - take, descending=True)[:leftover]] += 1
    g = torch.Generator().manual_seed(seed)
    train_idx, val_idx = [], []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return torch.cat(train_idx).sort().values, torch.cat(val_idx).sort().values


@dataclass
class Data:
    """One dataset, split and normalized, as tensors on one device.

    x_*: (N, 1, 28, 28) float32, normalized with the training split's mean and std.
    y_*: (N,) int64.
    """
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float
    class_names: tuple[str, ...]
    genuine: bool  # the four files are the genuine release (MD5-verified)

    @property
    def normalization(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    @property
    def background(self) -> float:
        """The value of a blank (0) pixel after normalization: what augmentation pads with."""
        return -self.mean / self.std


def normalize(images_uint8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(N, 28, 28) uint8 in 0..255 -> (N, 1, 28, 28) float32 with the given statistics.

    In place on one new float tensor: the same values as ((x / 255 - mean) / std), without
    three more 188 MB temporaries (0.06 s instead of 0.16 s for the training split); load_data
    makes MNIST's tensors in 0.3 s instead of 0.45.
    """
    return images_uint8.float().div_(255.0).sub_(mean).div_(std).unsqueeze(1)


def load_data(name: str = "mnist", data_dir=None, device="cpu", download: bool = True,
              val_fraction: float = VAL_FRACTION) -> Data:
    """The whole dataset as normalized tensors on `device` (MNIST: ~0.25 s on 2 CPU cores)."""
    return split_and_normalize(name, load_raw(name, data_dir, download), device, val_fraction)


def split_and_normalize(name: str, raw: tuple, device="cpu", val_fraction: float = VAL_FRACTION) -> Data:
    """load_raw's (x_train, y_train, x_test, y_test, genuine) as load_data returns it: the stratified
    train/validation split, normalized with the training split's mean and std (raw is not modified)."""
    x_tr, y_tr, x_te, y_te, genuine = raw
    train_idx, val_idx = stratified_split(y_tr, val_fraction)
    # Statistics of the training split only: validation and test stay unseen. float32, as every
    # committed run was normalized (a histogram in float64 moves them in the 8th digit, and that
    # alone sends a short run down another path). (55000, 28, 28) in 0..1, normalized in place below.
    train_pixels = x_tr[train_idx].float().div_(255.0)
    mean, std = float(train_pixels.mean()), float(train_pixels.std())
    to = lambda t: t.to(device)  # noqa: E731
    return Data(
        name=name,
        # = normalize(x_tr[train_idx], mean, std), the same operations, on the buffer already made
        x_train=to(train_pixels.sub_(mean).div_(std).unsqueeze(1)), y_train=to(y_tr[train_idx].long()),
        x_val=to(normalize(x_tr[val_idx], mean, std)), y_val=to(y_tr[val_idx].long()),
        x_test=to(normalize(x_te, mean, std)), y_test=to(y_te.long()),
        mean=mean, std=std, class_names=DATASETS[name].class_names, genuine=genuine,
    )


# -----------------------------------------------------------------------------
# Batches and augmentation, as whole-tensor operations


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, order: torch.Tensor | None = None):
    """Yield (x, y) slices of `batch_size` in `order` (a permutation), the last one possibly smaller."""
    n = len(x)
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


@dataclass(frozen=True)
class Augment:
    """Random warp per sample: an affine part (shift in pixels, rotation in degrees,
    relative scale) and an optional elastic part (Simard et al., 2003): a random
    displacement field smoothed by a Gaussian of `elastic_sigma` pixels and scaled by
    `elastic` (alpha, in pixels; Simard used 34 with sigma 4 on 28x28 digits)."""
    translate: float = 2.0
    rotate: float = 0.0
    scale: float = 0.0
    elastic: float = 0.0
    elastic_sigma: float = 4.0

    @property
    def active(self) -> bool:
        return bool(self.translate or self.rotate or self.scale or self.elastic)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel of x: (B, C, H, W) -> (B, C, H, W), zero-padded.

    As two matrix products, G_H @ x @ G_W^T, with G_n the (n, n) banded matrix of the kernel's
    taps (|i - j| <= 2 sigma): the same sums as a zero-padded separable convolution. The depthwise
    convolution it replaced (25 taps at sigma 6) made a DNN epoch with elastic distortion take 6 s
    instead of 3 s on 2 CPU cores; speed.py measures the cost of each augmentation per batch.
    """
    radius = max(1, int(2 * sigma + 0.5))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    total = torch.exp(-taps ** 2 / (2 * sigma ** 2)).sum()  # the kernel is normalized over all its taps

    def band(n: int) -> torch.Tensor:  # (n, n): row i holds the kernel centred on pixel i
        i = torch.arange(n, dtype=x.dtype, device=x.device)
        d = i[:, None] - i[None, :]
        return torch.exp(-d ** 2 / (2 * sigma ** 2)) * (d.abs() <= radius) / total

    h, w = x.shape[-2:]
    return band(h) @ x @ band(w).T


def augment(x: torch.Tensor, spec: Augment, generator: torch.Generator, background: float) -> torch.Tensor:
    """Apply a different random warp to every image of x: (B, 1, H, W) -> (B, 1, H, W).

    One `affine_grid` (+ the elastic displacement, added to the same sampling grid) and one
    `grid_sample` for the whole batch. Pixels that come in from outside the image take
    `background` (blank paper), not 0, because x is normalized.
    """
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=generator, device=generator.device) * 2 - 1  # (B, 4) in [-1, 1)
    u = u.to(x.device)
    angle = u[:, 0] * math.radians(spec.rotate)
    scale = 1 + u[:, 1] * spec.scale
    # affine_grid works in [-1, 1] coordinates: a shift of t pixels is 2t/W there.
    tx, ty = u[:, 2] * spec.translate * 2 / w, u[:, 3] * spec.translate * 2 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2), (x, y) order
    if spec.elastic:
        # Drawn after the affine part, so runs without it see exactly the same random numbers as before.
        field = torch.rand(b, 2, h, w, generator=generator, device=generator.device).to(x.device, x.dtype) * 2 - 1
        field = gaussian_blur(field, spec.elastic_sigma) * spec.elastic  # (B, 2, H, W) displacement in pixels
        scale_xy = torch.tensor([2 / w, 2 / h], dtype=x.dtype, device=x.device)
        grid = grid + field.permute(0, 2, 3, 1) * scale_xy  # pixels -> [-1, 1] units
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background


# -----------------------------------------------------------------------------
# Step 1: what the data is, computed from the files


def describe(name: str = "mnist", data_dir=None, download: bool = True) -> dict:
    """The homework's Step 1 answers, every number computed from the loaded data."""
    raw = load_raw(name, data_dir, download)  # read once: the raw numbers and the split come from it
    x_tr, y_tr, x_te, y_te, genuine = raw
    data = split_and_normalize(name, raw)
    n_classes = len(DATASETS[name].class_names)
    everything = torch.cat([x_tr.flatten(), x_te.flatten()]).float()
    # uint8 cannot hold NaN, so "missing" means NaN or outside the 0..255 pixel range after
    # conversion to float, plus any label outside the class set.
    missing = int(torch.isnan(everything).sum() + ((everything < 0) | (everything > 255)).sum())
    missing += int(((y_tr < 0) | (y_tr >= n_classes)).sum() + ((y_te < 0) | (y_te >= n_classes)).sum())
    normalized = torch.cat([data.x_train.flatten(), data.x_val.flatten(), data.x_test.flatten()])
    n_total = len(data.y_train) + len(data.y_val) + len(data.y_test)
    split = {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)}
    return {
        "dataset": name,
        "genuine_files": genuine,
        "problem": DATASETS[name].problem,
        "train_samples": len(y_tr),
        "test_samples": len(y_te),
        "shape": list(x_tr.shape[1:]),
        "channels": 1,
        "features_per_sample": int(math.prod(x_tr.shape[1:])),
        "dtype": str(x_tr.dtype).replace("torch.", ""),
        "min": int(everything.min()),
        "max": int(everything.max()),
        "normalized_min": round(float(normalized.min()), 4),
        "normalized_max": round(float(normalized.max()), 4),
        "missing": missing,
        "classes": list(range(n_classes)),
        "class_names": list(DATASETS[name].class_names),
        "class_counts_train": torch.bincount(y_tr, minlength=n_classes).tolist(),
        "class_counts_test": torch.bincount(y_te, minlength=n_classes).tolist(),
        "split": split,
        "split_percent": {k: round(100 * v / n_total, 2) for k, v in split.items()},
        "preprocessing": (f"pixels /255, then standardized with the training split's mean {data.mean:.4f} and "
                          f"std {data.std:.4f}; stratified {split['train']}/{split['val']} train/validation split "
                          f"(seed {SPLIT_SEED}) of the official training set; training batches get a random "
                          f"shift of up to 2 px per sample (optionally rotation/scale)"),
    }


def save_sample_grid(name: str, data_dir, path: str | os.PathLike, per_class: int = 10) -> Path:
    """A grid of `per_class` training digits for every class, one row each."""
    import matplotlib
    matplotlib.use("Agg")  # plots.pyplot() is the one place above floor 1; data.py imports nothing of ours
    import matplotlib.pyplot as plt

    x_tr, y_tr, *_ = load_raw(name, data_dir, download=False)
    names = DATASETS[name].class_names
    fig, axes = plt.subplots(len(names), per_class, figsize=(per_class * 0.8, len(names) * 0.85))
    for c, row in enumerate(axes):
        idx = torch.nonzero(y_tr == c).flatten()[:per_class]
        for ax, i in zip(row, idx.tolist()):
            ax.imshow(x_tr[i].numpy(), cmap="gray")
        for ax in row:
            ax.axis("off")
        row[0].set_title(names[c], fontsize=8, loc="left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _print_report(d: dict) -> None:
    print(f"Dataset: {d['dataset']} ({'genuine, MD5-verified' if d['genuine_files'] else 'not the genuine release'})")
    print(f"Problem: {d['problem']}")
    print(f"Samples: {d['train_samples']:,} train, {d['test_samples']:,} test")
    print(f"Sample: {d['shape'][0]}x{d['shape'][1]} pixels, {d['channels']} channel ({d['features_per_sample']} features), {d['dtype']}")
    print(f"Pixel range: {d['min']}..{d['max']} raw; {d['normalized_min']}..{d['normalized_max']} after normalization")
    print(f"Missing values (NaN, out-of-range pixels or labels): {d['missing']}")
    print(f"Labels: {d['classes']}")
    print(f"  train counts: {d['class_counts_train']}")
    print(f"  test counts:  {d['class_counts_test']}")
    s, p = d["split"], d["split_percent"]
    print(f"Split: train {s['train']:,} ({p['train']}%), val {s['val']:,} ({p['val']}%), test {s['test']:,} ({p['test']}%)")
    print(f"Preprocessing: {d['preprocessing']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Describe the dataset (the homework's Step 1), computed from the files.")
    parser.add_argument("--data-dir", help="folder holding MNIST/raw/ (default: $DATA_DIR, else ./data)")
    parser.add_argument("--dataset", default="mnist", choices=list(DATASETS))
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    parser.add_argument("--grid", metavar="PNG", help="also save a grid of sample digits per class, e.g. figures/mnist_samples.png")
    parser.add_argument("--no-download", action="store_true", help="never try to download missing files")
    cli = parser.parse_args()
    try:
        answers = describe(cli.dataset, cli.data_dir, download=not cli.no_download)
        if cli.grid:
            answers["grid"] = str(save_sample_grid(cli.dataset, cli.data_dir, cli.grid))
    except DataError as e:
        sys.exit(f"error: {e}")
    if cli.json:
        print(json.dumps(answers, indent=2))
    else:
        _print_report(answers)
        if cli.grid:
            print(f"Saved {answers['grid']}")
