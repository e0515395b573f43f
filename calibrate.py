"""Calibrate a checkpoint's answers: a temperature and an "unsure" threshold, stored in it.

    python calibrate.py weights/convnet.pt                 # fit, write into the checkpoint, save results/calibration/
    python calibrate.py weights/*.pt --dry-run             # print what would be stored, write nothing
    python calibrate.py weights/convnet.pt --limit-val 500 # a cheap run (tests)

Both are chosen on data the model was not trained on and the test split never sees:
- temperature T: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
  Networks"): the one scalar minimizing the negative log-likelihood of softmax(logits / T)
  on the validation split (data.stratified_split's 5,000), each image taken through
  predict.py's own path (written as a PNG's pixels, prepared, framed) so T fits what the
  product sees. Expected calibration error (15 equal-width bins) before and after is reported.
- threshold p: the answer is "ok" only when the calibrated top probability is >= p. The
  candidates are scored on the validation digits (share accepted, accuracy of those accepted)
  and on generated non-digits (`non_digits`: letters and symbols drawn with Debian's DejaVu
  fonts, shapes, scribbles; share refused). The chosen p is the highest that still accepts
  at least MIN_ACCEPT of the validation digits; the whole curve is saved.
The checkpoint gets `calibration = {temperature, threshold, ...}`; weights/<name>.json too.
Imports data.py, models.py and predict.py only.
"""

import argparse
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import predict
from data import load_raw, resolve_data_dir, stratified_split
from models import CheckpointError, load_checkpoint, read_checkpoint, save_atomic

ROOT = Path(__file__).resolve().parent
MIN_ACCEPT = 0.995  # share of validation digits that must stay "ok" (the product promises >= 99% on test)
ECE_BINS = 15
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
# Letters and symbols that are not drawn like any digit (no O, I, l, S, Z, B, G, b, g, q, ...).
NON_DIGIT_CHARS = "AEFHKMNRUVWXYacefhkmnrtuvwxy?%&@#*+=<>"


# -----------------------------------------------------------------------------
# Non-digits: what a user might show that is not a digit


def fonts(family: str = "DejaVu") -> list[Path]:
    """The TrueType fonts of one family in Debian's font folders ([] when none are installed)."""
    return sorted(p for d in FONT_DIRS if d.is_dir() for p in d.glob(f"{family}*.ttf") if "Math" not in p.name)


def non_digits(n: int, seed: int = 0, family: str = "DejaVu", size: int = 280):
    """n PIL images ("L", size x size, dark ink on white), a quarter each: a letter or symbol
    of NON_DIGIT_CHARS in a random font of `family`, a filled or outlined shape (square,
    triangle, star, cross), a scribble (a random walk of 8-20 steps), and two to four short
    random strokes. Deterministic for a seed."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    faces = fonts(family) or fonts()
    out = []
    for i in range(n):
        img = Image.new("L", (size, size), 255)
        draw = ImageDraw.Draw(img)
        kind = i % 4
        width = int(rng.integers(size // 40, size // 14))
        c = size / 2 + rng.uniform(-size / 10, size / 10, 2)
        r = size * rng.uniform(0.2, 0.35)
        if kind == 0 and faces:
            ch = NON_DIGIT_CHARS[rng.integers(len(NON_DIGIT_CHARS))]
            font = ImageFont.truetype(str(faces[rng.integers(len(faces))]), int(size * rng.uniform(0.45, 0.7)))
            draw.text(tuple(c), ch, fill=0, font=font, anchor="mm")
        elif kind == 1:
            shape = rng.integers(4)
            if shape == 0:
                pts = [(c[0] - r, c[1] - r), (c[0] + r, c[1] - r), (c[0] + r, c[1] + r), (c[0] - r, c[1] + r)]
            elif shape == 1:
                pts = [(c[0], c[1] - r), (c[0] + r, c[1] + r * 0.8), (c[0] - r, c[1] + r * 0.8)]
            elif shape == 2:
                a = np.arange(10) * np.pi / 5 - np.pi / 2
                rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
                pts = list(zip(c[0] + rad * np.cos(a), c[1] + rad * np.sin(a)))
            else:
                pts = None
                draw.line([(c[0] - r, c[1] - r), (c[0] + r, c[1] + r)], fill=0, width=width)
                draw.line([(c[0] - r, c[1] + r), (c[0] + r, c[1] - r)], fill=0, width=width)
            if pts is not None:
                if rng.random() < 0.5:
                    draw.polygon(pts, fill=0)
                else:
                    draw.line(pts + [pts[0]], fill=0, width=width, joint="curve")
        elif kind == 2:
            steps = int(rng.integers(8, 21))
            p = c + rng.normal(0, r / 3, 2)
            pts = [tuple(p)]
            for _ in range(steps):
                p = np.clip(p + rng.normal(0, r / 2.5, 2), size * 0.1, size * 0.9)
                pts.append(tuple(p))
            draw.line(pts, fill=0, width=width, joint="curve")
        else:
            for _ in range(int(rng.integers(2, 5))):
                a = c + rng.uniform(-r, r, 2)
                b = a + rng.uniform(-r, r, 2)
                draw.line([tuple(a), tuple(b)], fill=0, width=width)
        out.append(img)
    return out


# -----------------------------------------------------------------------------
# Fitting


def digit_image(a28: np.ndarray):
    """A (28, 28) uint8 MNIST digit -> the PIL image a user would have saved (white on black PNG)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(a28, np.uint8)).save(buf, format="PNG")
    return predict.read_image(buf.getvalue(), "digit.png")


def prepared(images) -> tuple[list[list[np.ndarray]], list[int]]:
    """Each image through predict.prepare: (crops per image, the number of crops per image)."""
    crops = [predict.prepare(im) for im in images]
    return crops, [len(c) for c in crops]


def answers_probs(crops: list[list[np.ndarray]], model, ckpt: dict, temperature: float) -> list[torch.Tensor]:
    """Calibrated probabilities (k, 10) per image, k its number of crops."""
    flat = [c for cs in crops for c in cs]
    logits = torch.cat([predict.logits_of(flat[i:i + 512], model, ckpt) for i in range(0, len(flat), 512)]
                       or [torch.zeros(0, 10)])
    probs = torch.softmax(logits / temperature, dim=1)
    out, at = [], 0
    for cs in crops:
        out.append(probs[at:at + len(cs)])
        at += len(cs)
    return out


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimizing NLL of softmax(logits / T): a grid over log T (0.05..20, 400 points),
    then refined around the best (a convex problem in 1/T, so the grid cannot miss the minimum)."""
    logits, labels = logits.double(), labels.long()

    def nll(t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / t, labels))

    grid = np.exp(np.linspace(math.log(0.05), math.log(20.0), 400))
    best = min(grid, key=nll)
    fine = np.linspace(best / 1.02, best * 1.02, 81)
    return float(min(fine, key=nll))


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the mean over equal-width confidence bins of |accuracy -
    confidence|, weighted by the bin's share of samples. probs (N, 10), labels (N,)."""
    conf, pred = probs.max(1)
    right = (pred == labels).double()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += float(m.double().mean() * (right[m].mean() - conf[m].double().mean()).abs())
    return total


def calibrate(weights: str | Path, data_dir=None, limit_val: int | None = None, n_non_digits: int = 400,
              write: bool = True) -> dict:
    """Fit the temperature and threshold of one checkpoint (see the module docstring) and,
    with write=True, store them in the checkpoint (atomically) and in its .json beside it.
    Returns {weights, temperature, threshold, ece_before, ece_after, nll_before, nll_after,
    val_n, val_accepted, val_acc_accepted, non_digit_n, non_digit_refused, curve: [...]}."""
    model, ckpt = load_checkpoint(weights)
    x_tr, y_tr, _, _, _ = load_raw("mnist", resolve_data_dir(data_dir), download=False)
    _, val_idx = stratified_split(y_tr)
    if limit_val:
        val_idx = val_idx[:limit_val]
    images = [digit_image(a) for a in x_tr[val_idx].numpy()]
    labels = y_tr[val_idx].long()
    crops, counts = prepared(images)
    # Temperature from the images that give one crop (what "a digit" is to the product).
    single = [i for i, k in enumerate(counts) if k == 1]
    logits = predict.logits_of([crops[i][0] for i in single], model, ckpt)
    t = fit_temperature(logits, labels[single])
    before, after = torch.softmax(logits, 1), torch.softmax(logits / t, 1)
    nll = lambda p: float(torch.nn.functional.nll_loss(p.clamp_min(1e-12).log(), labels[single]))  # noqa: E731
    result = {"weights": str(weights), "temperature": round(t, 4), "method": "temperature scaling (Guo et al. 2017)",
              "fitted_on": f"validation split through predict.prepare ({len(single)} of {len(val_idx)} images "
                           f"give one crop)", "ece_bins": ECE_BINS,
              "ece_before": round(ece(before, labels[single]), 5), "ece_after": round(ece(after, labels[single]), 5),
              "nll_before": round(nll(before), 5), "nll_after": round(nll(after), 5)}
    # Threshold: the answer of the product (predict.decide_probs) for every candidate.
    val_probs = answers_probs(crops, model, ckpt, t)
    nd_images = non_digits(n_non_digits, seed=1, family="DejaVu")
    nd_probs = answers_probs(prepared(nd_images)[0], model, ckpt, t)
    curve = []
    for p in np.round(np.arange(0.30, 0.996, 0.01), 2):
        val = [predict.decide_probs(q, float(p)) for q in val_probs]
        ok = [i for i, a in enumerate(val) if a["status"] == "ok"]
        right = sum(val[i]["digit"] == int(labels[i]) for i in ok)
        refused = sum(predict.decide_probs(q, float(p))["status"] in ("unsure", "no_digit") for q in nd_probs)
        curve.append({"threshold": float(p), "val_accepted": len(ok) / len(val),
                      "val_acc_accepted": right / max(len(ok), 1), "non_digit_refused": refused / len(nd_probs)})
    fit = [c for c in curve if c["val_accepted"] >= MIN_ACCEPT]
    chosen = max(fit, key=lambda c: c["threshold"]) if fit else curve[0]
    result.update({"threshold": chosen["threshold"], "min_accept": MIN_ACCEPT, "val_n": len(val_idx),
                   "val_accepted": chosen["val_accepted"], "val_acc_accepted": chosen["val_acc_accepted"],
                   "non_digit_n": len(nd_images), "non_digit_refused": chosen["non_digit_refused"],
                   "non_digits": "letters/symbols (DejaVu fonts), shapes, scribbles, strokes: calibrate.non_digits seed 1",
                   "curve": curve})
    if write:
        stored = {k: v for k, v in result.items() if k not in ("curve", "weights")}
        raw = read_checkpoint(weights)
        raw["calibration"] = stored
        save_atomic(raw, weights)
        side = Path(weights).with_suffix(".json")
        if side.is_file():
            meta = json.loads(side.read_text())
            meta["calibration"] = stored
            side.write_text(json.dumps(meta, indent=2) + "\n")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Fit a temperature and an 'unsure' threshold and store them in checkpoints.")
    p.add_argument("weights", nargs="+", help="checkpoints (.pt) to calibrate")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $DATA_DIR or data/)")
    p.add_argument("--limit-val", type=int, default=None, help="use only the first N validation images (cheap runs)")
    p.add_argument("--non-digits", type=int, default=400, help="generated non-digit images for the threshold")
    p.add_argument("--dry-run", action="store_true", help="print the result, write nothing")
    p.add_argument("--out", default=str(ROOT / "results" / "calibration"), help="folder for <name>.json with the curve")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    for w in a.weights:
        try:
            r = calibrate(w, a.data_dir, a.limit_val, a.non_digits, write=not a.dry_run)
        except CheckpointError as e:
            sys.exit(f"error: {e}")
        print(f"{w}: T = {r['temperature']}, ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}, threshold "
              f"{r['threshold']:.2f}: {100 * r['val_accepted']:.2f}% of validation digits accepted "
              f"({100 * r['val_acc_accepted']:.2f}% of them right), {100 * r['non_digit_refused']:.1f}% of "
              f"{r['non_digit_n']} non-digits refused")
        if not a.dry_run:
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{Path(w).stem}.json").write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
