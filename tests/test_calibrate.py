"""calibrate.py: temperature scaling recovers a known temperature, ECE is what it says, the
non-digit generator is deterministic, and a cheap calibration on the real validation split
lands in the checkpoint where predict.py reads it."""

import json

import numpy as np
import pytest
import torch

import calibrate
import models
import predict


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=g) * 3
    labels = torch.multinomial(torch.softmax(logits / 2.5, 1), 1, generator=g).squeeze(1)
    assert abs(calibrate.fit_temperature(logits, labels) - 2.5) < 0.1


def test_ece_of_perfectly_calibrated_and_overconfident_predictions():
    probs = torch.full((1000, 10), 0.0)
    probs[:, 0] = 1.0
    labels = torch.zeros(1000, dtype=torch.long)
    assert calibrate.ece(probs, labels) == 0.0
    labels[:300] = 1  # 70% right at confidence 1: ECE 0.3
    assert abs(calibrate.ece(probs, labels) - 0.3) < 1e-9


def test_non_digits_are_deterministic_and_have_ink():
    a = calibrate.non_digits(8, seed=3)
    b = calibrate.non_digits(8, seed=3)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert all(np.asarray(x).min() < 128 for x in a)
    assert calibrate.fonts("DejaVu"), "Debian's DejaVu fonts are needed (fonts-dejavu-core)"


def test_calibration_is_stored_in_the_checkpoint_and_used(tmp_path, real_data_dir):
    model = models.build_model("convnet", width=8)
    path = tmp_path / "w.pt"
    torch.save({"model": "convnet", "model_config": {"width": 8}, "state_dict": model.state_dict(),
                "normalization": {"mean": 0.13, "std": 0.31}}, path)
    (tmp_path / "w.json").write_text(json.dumps({"model": "convnet"}))
    r = calibrate.calibrate(path, data_dir=real_data_dir, limit_val=200, n_non_digits=40, write=True)
    assert r["temperature"] > 0 and 0.3 <= r["threshold"] <= 0.99 and len(r["curve"]) > 10
    # the rejector's C: every candidate scored on the unseen non-digits, the best one kept
    tried = r["rejector_c_tried"]
    assert set(tried) == {str(c) for c in calibrate.REJECTOR_CS}
    assert tried[str(r["rejector"]["C"])] == max(tried.values()) == round(r["non_digit_refused"], 5)
    _, ckpt = models.load_checkpoint(path)
    cal = ckpt["calibration"]
    assert cal["temperature"] == r["temperature"] and cal["rejector"]["weights"].shape == (8 * 4 * 9 + 10,)
    assert json.loads((tmp_path / "w.json").read_text())["calibration"]["threshold"] == r["threshold"]
    assert predict.calibration(ckpt) == (r["temperature"], r["threshold"])


def test_a_refit_takes_temperature_and_threshold_from_its_held_out_twin(tmp_path, real_data_dir):
    """--twin: the refit's temperature, ECE and probability threshold are those of its twin (the same
    settings and seed, trained with the validation split held out), the rejector its own (in-sample,
    said so); a checkpoint with other settings, or a refit, is refused as a twin."""
    def save(name: str, seed: int, refit: bool, lr: float = 0.01):
        torch.manual_seed(seed)
        model = models.build_model("convnet", width=8)
        cfg = {"model": "convnet", "model_config": {"width": 8}, "lr": lr, "epochs": 3, "seed": 0, "refit": refit, "run_name": name}
        torch.save({"model": "convnet", "model_config": {"width": 8}, "state_dict": model.state_dict(), "train_config": cfg,
                    "normalization": {"mean": 0.13, "std": 0.31}, "metrics": {"val_acc": 0.5}}, tmp_path / f"{name}.pt")
        return tmp_path / f"{name}.pt"

    refit, twin = save("refit", 1, True), save("twin", 2, False)
    cheap = dict(data_dir=real_data_dir, limit_val=200, n_non_digits=40)
    held = calibrate.calibrate(twin, write=False, **cheap)
    r = calibrate.calibrate(refit, write=True, twin=twin, **cheap)
    assert (r["temperature"], r["threshold"], r["ece_after"]) == (held["temperature"], held["threshold"], held["ece_after"])
    assert r["in_sample"] is True and "held-out twin" in r["fitted_on"] and "in-sample" in r["fitted_on"]
    assert r["twin"]["run"] == "twin" and r["twin"]["sha256"] == calibrate.runs.sha256(twin)
    alone = calibrate.calibrate(refit, write=False, **cheap)  # without its twin: all in-sample, its own temperature
    assert alone["temperature"] != r["temperature"] and "twin" not in alone
    assert r["rejector"]["weights"].shape == alone["rejector"]["weights"].shape  # the rejector reads the refit's features
    _, ckpt = models.load_checkpoint(refit)
    assert predict.calibration(ckpt) == (held["temperature"], held["threshold"])
    for bad, why in ((save("other", 3, False, lr=0.1), "differs in lr"), (save("refit2", 4, True), "a refit itself")):
        with pytest.raises(models.CheckpointError, match=why):
            calibrate.calibrate(refit, write=False, twin=bad, **cheap)
    with pytest.raises(models.CheckpointError, match="not a refit"):  # it has held-out digits of its own
        calibrate.calibrate(twin, write=False, twin=twin, **cheap)
    assert r["curve"] == held["curve"] and r["twin"]["epoch"] is None  # the curve that chose p; no epoch saved here
