"""test_model.py, feature_visualization.py and predict.py."""

import pickle
from pathlib import Path
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
# ROC curves and their AUCs: checked against scikit-learn on synthetic scores


def synthetic_scores(seed: int, n: int = 3000, k: int = 10, decimals: int | None = 1):
    """(y (n,), softmax (n, k)): the true class's logit raised by 0.5-4, rounded so that scores tie."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += rng.uniform(0.5, 4, n)
    if decimals is not None:
        logits = np.round(logits, decimals)
    p = np.exp(logits)
    return y, p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("seed, k, decimals", [(0, 10, 1), (1, 10, None), (2, 3, 0), (3, 4, 2)])
def test_roc_curves_are_sklearns_and_the_macro_area_is_the_macro_auc(seed, k, decimals):
    from sklearn.metrics import auc, roc_curve
    y, p = synthetic_scores(seed, k=k, decimals=decimals)
    c = tm.roc_curves(y, p)
    onehot = np.eye(k)[y]
    for i, (fpr, tpr) in enumerate(c["classes"]):
        ref = roc_curve(onehot[:, i], p[:, i])
        assert np.array_equal(fpr, ref[0]) and np.array_equal(tpr, ref[1])
    assert auc(*c["micro"]) == pytest.approx(roc_auc_score(onehot, p, average="micro"), abs=1e-12)
    assert auc(*c["macro"]) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    fpr, tpr = c["macro"]
    assert fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == pytest.approx(1) and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= -1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_macro_curve_never_lies_below_all_class_curves(seed):
    """Between the FPR points of the union (where no curve has a vertex, so every TPR is one number)
    and on the symlog plot's first decade, the macro curve is the mean of the class curves."""
    y, p = synthetic_scores(seed)
    c = tm.roc_curves(y, p)
    grid = np.unique(np.concatenate([f for f, _ in c["classes"]]))
    x = np.unique(np.r_[(grid[1:] + grid[:-1]) / 2, np.geomspace(1e-5, 1e-3, 50)])
    x = x[~np.isin(x, grid)]
    per_class = np.array([np.interp(x, f, t) for f, t in c["classes"]])  # (K, len(x))
    macro = np.interp(x, *c["macro"])
    assert np.all(macro >= per_class.min(0) - 1e-12) and np.all(macro <= per_class.max(0) + 1e-12)
    assert np.allclose(macro, per_class.mean(0), atol=1e-12)


def test_the_old_1001_point_grid_was_not_the_mean_of_the_curves():
    """The bug the exact macro curve replaces: near-perfect scorers reach TPR ~1 at FPR < 1e-3, so a
    macro curve on a 0.001-step grid ran below every class curve at FPR 0.0005, and its area was off."""
    from sklearn.metrics import auc
    y, p = synthetic_scores(0, n=20_000, decimals=None)
    c = tm.roc_curves(y, p)
    grid = np.linspace(0, 1, 1001)
    old = np.mean([np.interp(grid, f, t) for f, t in c["classes"]], axis=0)
    at = np.array([0.0005])
    assert np.interp(at, grid, old)[0] < min(np.interp(at, f, t)[0] for f, t in c["classes"])
    assert np.interp(at, *c["macro"])[0] >= min(np.interp(at, f, t)[0] for f, t in c["classes"])
    macro_auc = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert abs(auc(*c["macro"]) - macro_auc) < 1e-12 < abs(auc(grid, old) - macro_auc)


def test_the_roc_legend_shows_the_metrics_aucs_to_the_tables_precision():
    import re
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    y, p = synthetic_scores(4)
    names = [str(i) for i in range(10)]
    m = tm.metrics(y, p, names)
    fig = tm.roc_figure(y, p, m, "synthetic", names)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    plt.close(fig)
    shown = {t.rsplit(" (AUC ", 1)[0]: re.fullmatch(r".* \(AUC (\d\.\d+)\)", t).group(1) for t in texts}
    expected = {**{n: m["auc_per_class"][n] for n in names}, "micro-average": m["auc_micro"], "macro-average": m["auc_ovr_macro"]}
    assert set(shown) == set(expected)
    for name, value in expected.items():
        assert shown[name] == tm.fmt_auc(value) == f"{value:.6f}", name
    assert shown["macro-average"] == f"{roc_auc_score(y, p, multi_class='ovr', average='macro'):.6f}"


def test_one_minus_auc_is_reported_beside_the_auc():
    y, p = synthetic_scores(5)
    m = tm.metrics(y, p)
    onehot = np.eye(10)[y]
    for i in range(10):
        assert m["one_minus_auc_per_class"][str(i)] == pytest.approx(1 - roc_auc_score(onehot[:, i], p[:, i]), abs=1e-15)
        assert m["auc_per_class"][str(i)] == roc_auc_score(onehot[:, i], p[:, i])  # the old key stays
    assert m["one_minus_auc_ovr_macro"] == pytest.approx(1 - m["auc_ovr_macro"], abs=1e-15)
    assert m["one_minus_auc_micro"] == pytest.approx(1 - m["auc_micro"], abs=1e-15)


def test_the_1_minus_auc_figure_takes_old_metrics_files_and_perfect_classes(tmp_path):
    y, p = synthetic_scores(6)
    a = {"weights": "weights/a.pt", "model": "convnet", **tm.metrics(y, p)}
    perfect = np.full_like(p, 0.01)
    perfect[np.arange(len(y)), y] = 0.91
    b = {"weights": "weights/b.pt", "model": "dnn", **tm.metrics(y, perfect)}
    old = {k: v for k, v in a.items() if not k.startswith("one_minus")}  # a metrics file from before the new keys
    path = tm.auc_gap_figure([a, b, old], tmp_path / "x_roc_1-auc.png")
    assert (tmp_path / "x_roc_1-auc.png").stat().st_size > 5000 and path.endswith("x_roc_1-auc.png")


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


def narrow(name: str) -> dict:
    """The smallest configuration of each model that keeps its layers: every figure panel is a matplotlib axes,
    so full widths make hundreds; the reference recipes' fixed-width nets draw them all (slow tier)."""
    config = models.complete_config(name)
    return {"width": 2} if "width" in config else {"hidden": (16,)} if "hidden" in config else {}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if not narrow(n) else n for n in models.list_models()])
def test_feature_visualization_writes_files_for_every_model(name, tmp_path):
    model = models.build_model(name, **narrow(name)).eval()
    image = torch.randn(1, 28, 28)
    paths = fv.feature_visualization(model, image, tmp_path, name=name)
    if name == "dnn":
        expected = {f"{name}_fc1_weights.png"}
    else:
        expected = {f"{name}_{p}.png" for p in ("conv1_filters", "conv2_filters", "conv1_maps", "conv2_maps")}
    assert {p.split("/")[-1] for p in paths} == expected
    assert all((tmp_path / f).stat().st_size > 1000 for f in expected)


def test_filter_orientations_names_each_edge_direction_and_ignores_flat_or_isotropic_filters():
    ramp = torch.arange(5.0) - 2  # -2..2
    horizontal = ramp[:, None].expand(5, 5)  # changes down the rows: an edge that runs along x
    vertical = horizontal.T
    down_right = ramp[None, :] - ramp[:, None]  # constant along the main diagonal (top-left to bottom-right)
    up_right = ramp[None, :] + ramp[:, None]  # constant along the anti-diagonal
    flat = torch.ones(5, 5)  # one sign: no edge, balance 1
    spot = -(ramp[:, None] ** 2 + ramp[None, :] ** 2)  # a blob: no preferred direction
    kernels = torch.stack([horizontal, vertical, down_right, up_right, 2 * down_right, 3 * horizontal, 3 * horizontal, flat, spot])
    o = fv.filter_orientations(kernels[:, None])  # (9, 1, 5, 5)
    assert o["filters"] == 9 and o["oriented"] == 7
    assert o["by_direction"] == {"horizontal": 3, "diagonal (down-right)": 2, "vertical": 1, "diagonal (up-right)": 1}
    for k, name in ((horizontal, "horizontal"), (vertical, "vertical"), (down_right, "diagonal (down-right)"), (up_right, "diagonal (up-right)")):
        one = fv.filter_orientations(k[None])  # each kernel alone: x and y must not be swapped
        assert one["oriented"] == 1 and one["by_direction"][name] == 1 and one["median_balance"] == pytest.approx(0.0), name
    for k in (flat, spot):  # one sign: balance 1; no preferred direction
        one = fv.filter_orientations(k[None])
        assert one["median_balance"] == pytest.approx(1.0) and one["oriented"] == 0
    assert fv.filter_orientations(spot[None], min_coherence=0.0)["oriented"] == 1  # the threshold is applied
    with pytest.raises(ValueError, match="expected"):
        fv.filter_orientations(torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match="k >= 2"):
        fv.filter_orientations(torch.zeros(4, 1, 1, 1))


def test_the_shipped_convnets_filters_are_edge_detectors_unlike_at_initialization():
    from conftest import ROOT
    model, ckpt = models.load_checkpoint(ROOT / "weights" / "convnet.pt")  # fully trained (one epoch moves 5x5 filters little)
    trained = fv.filter_orientations(models.conv_layers(model)["first_conv"].weight)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = fv.filter_orientations(models.conv_layers(models.build_model("convnet", **ckpt["model_config"]))["first_conv"].weight)
    assert trained["oriented"] >= trained["filters"] / 2 > 5 * init["oriented"], (trained, init)


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
    assert (tmp_path / "models_roc_1-auc.png").stat().st_size > 5000
    import json
    saved = json.loads((tmp_path / "best_metrics.json").read_text())
    assert {"auc_per_class", "auc_ovr_macro", "one_minus_auc_per_class", "one_minus_auc_ovr_macro"} <= set(saved)


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
    assert 19 <= len(rows) <= 21 and len(cols) < len(rows) / 2  # longer side scaled to 20 px, the 2:5 bar stays narrow
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


def test_test_model_scores_a_run_folder_and_saves_its_figures_and_curves(tmp_path, synthetic_root, synthetic_data, capsys):
    """`python test_model.py --weights RUN_DIR --out DIR --json`: the run's best.pt is scored, its training
    curves are copied beside the test figures, and the JSON names every figure written."""
    cfg = train.TrainConfig(model="convnet", model_config={"width": 8}, epochs=1, lr=0.05, batch_size=64, device="cpu",
                            precision="fp32", out=str(tmp_path / "runs"), weights_dir="")
    run_dir = train.train(cfg, synthetic_data, quiet=True)["run_dir"]
    out = tmp_path / "figures"
    assert tm.main(["--weights", str(run_dir), "--out", str(out), "--data-dir", str(synthetic_root), "--json"]) == 0
    import json
    printed = json.loads(capsys.readouterr().out)
    figures = printed["figures"] if isinstance(printed, dict) else printed[0]["figures"]
    assert figures and all((tmp_path / f).exists() or Path(f).exists() for f in figures)
    assert any(str(f).endswith("_curves.png") for f in figures)
