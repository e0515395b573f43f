"""test_model.py, feature_visualization.py and predict.py."""

import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, roc_auc_score

import feature_visualization as fv
import models
import predict
import test_model as tm
import train


@pytest.fixture(scope="session")
def trained_convnet(real_data, tmp_path_factory):
    """A ConvNet trained for one epoch on 20,000 real training images (~5 s): a real checkpoint."""
    out = tmp_path_factory.mktemp("trained")
    cfg = train.TrainConfig(model="convnet", epochs=1, limit_train=20_000, out=str(out), weights_dir=None)
    r = train.train(cfg, real_data, quiet=True)
    assert r["test"]["acc"] > 0.97
    return out / r["config"]["run_name"] / "best.pt", r


# -----------------------------------------------------------------------------
# Metrics


def test_metrics_on_a_toy_case_computed_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[.8, .1, .1], [.3, .6, .1], [.1, .8, .1], [.2, .7, .1], [.1, .1, .8], [.5, .1, .4]])
    m = tm.metrics(y, proba)
    # predictions 0,1,1,1,2,0: 4 of 6 right
    assert m["accuracy"] == pytest.approx(4 / 6)
    # class 0: P 1/2 R 1/2 F1 1/2; class 1: P 2/3 R 1 F1 4/5; class 2: P 1 R 1/2 F1 2/3
    assert m["f1_macro"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert m["per_class"]["1"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["2"]["recall"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["f1_weighted"] == pytest.approx(f1_score(y, proba.argmax(1), average="weighted"))
    assert m["auc_ovr_macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    # class 2 one-vs-rest: positives score .8 and .4, negatives .1 x4: AUC = 1
    assert m["auc_per_class"]["2"] == 1.0
    assert m["n"] == 6


def test_auc_of_a_perfect_scorer_is_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 300)
    proba = np.full((300, 10), 0.01)
    proba[np.arange(300), y] = 0.91
    m = tm.metrics(y, proba)
    assert m["auc_ovr_macro"] == 1.0 and m["auc_micro"] == 1.0 and m["accuracy"] == 1.0


def test_ensemble_averages_probabilities():
    y = np.array([0, 1, 1, 2])
    a = {"weights": "a.pt", "_proba": np.array([[.9, .1, 0], [.6, .4, 0], [.2, .8, 0], [.1, .1, .8]])}
    b = {"weights": "b.pt", "_proba": np.array([[.7, .3, 0], [.2, .8, 0], [.6, .4, 0], [.3, .3, .4]])}
    e = tm.ensemble([a, b], y, ("0", "1", "2"))
    assert np.allclose(e["_proba"], [[.8, .2, 0], [.4, .6, 0], [.4, .6, 0], [.2, .2, .6]])
    assert e["accuracy"] == 1.0 and e["model"] == "ensemble"


# -----------------------------------------------------------------------------
# Bad checkpoints: one line naming the file, non-zero exit, no traceback


def _error_of(argv, capsys=None) -> str:
    with pytest.raises(SystemExit) as e:
        tm.main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg
    return msg


@pytest.fixture
def good_ckpt(tmp_path):
    model = models.build_model("convnet", width=8)
    ckpt = {"model": "convnet", "model_config": {"width": 8}, "state_dict": model.state_dict(), "train_config": {},
            "metrics": {"val_acc": 0.5}, "normalization": {"mean": 0.13, "std": 0.31}, "epoch": 1}
    path = tmp_path / "good.pt"
    torch.save(ckpt, path)
    return path, ckpt


def test_missing_file(tmp_path):
    msg = _error_of(["--weights", str(tmp_path / "nope.pt")])
    assert "nope.pt" in msg and "no such file" in msg


@pytest.mark.parametrize("content", [b"\x00\x01garbage" * 100, b"a text file\n"], ids=["random-bytes", "text"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    assert "bad.pt: not a readable checkpoint" in _error_of(["--weights", str(path)])


def test_truncated_checkpoint(tmp_path, good_ckpt):
    path, _ = good_ckpt
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "good.pt: not a readable checkpoint" in _error_of(["--weights", str(path)])


def test_unknown_model(tmp_path, good_ckpt):
    path, ckpt = good_ckpt
    torch.save({**ckpt, "model": "vgg16"}, path)
    msg = _error_of(["--weights", str(path)])
    assert "'vgg16'" in msg and "convnet" in msg


def test_state_dict_that_does_not_fit(tmp_path, good_ckpt):
    path, ckpt = good_ckpt
    sd = dict(ckpt["state_dict"])
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["stem.0.weight"] = torch.zeros(3, 1, 5, 5)
    torch.save({**ckpt, "state_dict": sd}, path)
    msg = _error_of(["--weights", str(path)])
    assert "1 missing, 1 unexpected, 1 wrongly shaped" in msg


def test_dict_without_checkpoint_keys(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(models.build_model("convnet").state_dict(), path)  # a bare state dict
    assert "not a checkpoint of this repository" in _error_of(["--weights", str(path)])


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {_Exploit.marker}",))


def test_malicious_pickle_is_refused_not_run(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": "convnet", "payload": _Exploit()}, path)  # torch.save pickles the object
    assert zipfile.is_zipfile(path)
    msg = _error_of(["--weights", str(path)])
    assert "refused" in msg and "evil.pt" in msg
    assert not _Exploit.marker.exists()
    # a plain (non-zip) pickle of the same payload too
    path.write_bytes(pickle.dumps(_Exploit()))
    _error_of(["--weights", str(path)])
    assert not _Exploit.marker.exists()


# -----------------------------------------------------------------------------
# Feature visualization


@pytest.mark.parametrize("name", models.list_models())
def test_feature_visualization_writes_files_for_every_model(name, tmp_path):
    model = models.build_model(name).eval()
    image = torch.randn(1, 28, 28)
    paths = fv.feature_visualization(model, image, tmp_path, name=name)
    if name == "dnn":
        expected = {f"{name}_fc1_weights.png"}
    else:
        expected = {f"{name}_{p}.png" for p in ("conv1_filters", "conv2_filters", "conv1_maps", "conv2_maps")}
    assert {p.split("/")[-1] for p in paths} == expected
    assert all((tmp_path / f).stat().st_size > 1000 for f in expected)


# -----------------------------------------------------------------------------
# Integration with a real checkpoint


def test_test_model_on_real_checkpoint(trained_convnet, real_data_dir, tmp_path):
    path, run = trained_convnet
    r = tm.test_model(path, data_dir=real_data_dir, device="cpu", out_dir=tmp_path)
    assert r["n"] == 10_000 and r["model"] == "convnet"
    assert abs(r["accuracy"] - run["test"]["acc"]) < 2e-3  # fp32 here, bf16 in training
    assert 0.99 < r["auc_ovr_macro"] <= 1 and sum(map(sum, r["confusion_matrix"])) == 10_000
    for suffix in ("roc", "confusion_matrix", "mistakes"):
        assert (tmp_path / f"best_{suffix}.png").is_file()


def test_cli_two_weights_give_an_ensemble_row(trained_convnet, real_data_dir, tmp_path, capsys):
    path, _ = trained_convnet
    assert tm.main(["--weights", str(path), str(path), "--data-dir", str(real_data_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| best+best |" in out and (tmp_path / "ensemble_metrics.json").is_file()


def _as_photo(digit: np.ndarray, path, size=300, offset=(280, 60)) -> None:
    """An MNIST digit as a large, off-centre, dark-on-light JPEG on cream paper."""
    ink = Image.fromarray(255 - digit).resize((size, size), Image.BICUBIC).convert("RGB")
    canvas = Image.new("RGB", (640, 480), (245, 240, 228))
    canvas.paste(ink, offset)
    canvas.save(path, quality=90)


def test_predict_gives_the_same_digit_for_a_photo_like_copy(trained_convnet, real_data_dir, tmp_path):
    import data
    path, _ = trained_convnet
    model, ckpt = models.load_checkpoint(path)
    _, _, x_te, y_te, _ = data.load_raw(data_dir=real_data_dir, download=False)
    files, expected = [], []
    for i in range(12):
        f = tmp_path / f"digit{i}.jpg"
        _as_photo(x_te[i].numpy(), f, offset=(40 + 20 * i, 30 + 5 * i))
        files.append(f)
        with torch.no_grad():
            x = data.normalize(x_te[i:i + 1], **ckpt["normalization"])
            expected.append(int(model(x).argmax()))
    results = predict.predict(files, model, ckpt["normalization"], topk=3, show_dir=tmp_path / "seen")
    got = [r["digit"] for r in results]
    assert sum(g == e for g, e in zip(got, expected)) >= 11, (got, expected)
    assert all(len(r["topk"]) == 3 and 0 < r["probability"] <= 1 for r in results)
    assert (tmp_path / "seen" / "digit0_28x28.png").is_file()


def test_preprocess_centres_and_scales_like_mnist():
    canvas = np.full((200, 300), 255, np.uint8)
    canvas[20:120, 200:240] = 0  # a dark bar, off-centre, on white
    a = predict.preprocess(Image.fromarray(canvas))
    assert a.shape == (28, 28) and a.max() == pytest.approx(1.0, abs=0.05) and a[0, 0] == 0
    rows, cols = np.nonzero(a.max(1) > 0.5)[0], np.nonzero(a.max(0) > 0.5)[0]
    assert 19 <= len(rows) <= 21  # longer side scaled to 20 px
    ys, xs = np.indices(a.shape)
    assert abs((ys * a).sum() / a.sum() - 13.5) <= 1 and abs((xs * a).sum() / a.sum() - 13.5) <= 1


def test_predict_cli_unreadable_file_reports_and_continues(trained_convnet, tmp_path, capsys):
    path, _ = trained_convnet
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    code = predict.main([str(good), str(bad), "--weights", str(path), "--json"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.png" in captured.err and captured.err.count("\n") == 1
    import json
    out = json.loads(captured.out)
    assert out[0]["file"] == str(good) and {"digit", "probability", "topk"} <= set(out[0])


def test_tta_shifts_pad_with_paper_and_are_reported_apart(trained_convnet, real_data_dir):
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    down = tm.shifted(x, 1, 0, background=-5.0)
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and (down[..., 0, :] == -5.0).all()
    right = tm.shifted(x, 0, -1, background=-5.0)  # dx = -1: one pixel to the left
    assert torch.equal(right[..., :, :-1], x[..., :, 1:]) and (right[..., :, -1] == -5.0).all()
    path, _ = trained_convnet
    r = tm.test_model(path, real_data_dir, "cpu", tta=True)
    assert len(r["tta"]["shifts"]) == 5 and 0.9 < r["tta"]["accuracy"] <= 1
    plain = tm.test_model(path, real_data_dir, "cpu")
    assert plain["accuracy"] == r["accuracy"] and "tta" not in plain
