"""Calibrate a checkpoint's answers: a temperature and an "unsure" threshold, stored in it.

    python calibrate.py weights/convnet.pt                 # fit, write into the checkpoint, save results/calibration/
    python calibrate.py weights/*.pt --dry-run             # print what would be stored, write nothing
    python calibrate.py weights/convnet.pt --limit-val 500 # a cheap run (tests)
    python calibrate.py weights/resnet.pt --twin runs/study/final/<run>/best.pt   # a refit: T, p held out

Both are chosen on data the model was not trained on and the test split never sees:
- temperature T: temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
  Networks"): the one scalar minimizing the negative log-likelihood of softmax(logits / T)
  on the validation split (data.stratified_split's 5,000), each image taken through
  predict.py's own path (written as a PNG's pixels, prepared, framed) so T fits what the
  product sees. Expected calibration error (15 equal-width bins) before and after is reported.
- threshold p: the answer is "ok" only when the calibrated top probability is >= p. The
  candidates are scored on the validation digits (share accepted, accuracy of those accepted)
  and on generated non-digits (`non_digits`: letters and symbols drawn with Debian's DejaVu
  fonts and Pillow's bundled font, thickened and tilted, shapes, scribbles; share refused). The chosen p is the highest that still accepts
  PROB_ACCEPT of the validation digits; the whole curve is saved.
- a rejector: the top probability alone refuses few letters (a ConvNet is confident on an
  "A"), so a logistic regression over the penultimate features and the logits is fitted on
  validation half A (also as 8-16 px thumbnails) against the non-digits of seed 1; its
  threshold is the highest that keeps MIN_ACCEPT of validation half B "ok" together with p,
  and its regularization C (REJECTOR_CS) the one whose thresholds then refuse the most of
  the unseen non-digits of seed 2.
A refit (trained on train + validation, e.g. a recipe stage's refit) leaves no such data. With
`--twin`, a checkpoint of the same recipe and seed trained with the validation split held out,
the temperature and the probability threshold are the twin's, fitted held out as above (the
refit's confidence is taken to follow its twin's: same settings, 5,000 more images); the rejector,
which reads this file's own features, is fitted and thresholded in-sample. Without a twin all of
it is in-sample. The record says which (`in_sample`, `twin`, `fitted_on`); with a twin, `curve` is
the twin's (the one that chose the threshold). The twin is its run's validation-best checkpoint
(the epoch in `twin`), the refit its last epoch.
The checkpoint gets `calibration = {temperature, threshold, ...}`; weights/<name>.json too.
Imports data.py, models.py, predict.py, plots.py (pyplot) and runs.py (sha256) only.
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
import plots
import runs
from data import load_raw, resolve_data_dir, stratified_split
from models import CheckpointError, load_checkpoint, read_checkpoint, save_atomic

ROOT = Path(__file__).resolve().parent
MIN_ACCEPT = 0.995  # share of validation digits that must stay "ok" (the product promises >= 99% on test)
# Inverse L2 strengths tried for the rejector's logistic regression (thousands of features, few
# negatives); the one refusing the most held-out non-digits at the chosen thresholds is kept.
REJECTOR_CS = (0.0003, 0.001, 0.003, 0.01)
PROB_ACCEPT = 0.9975  # the probability threshold alone keeps this share; the rejector takes the rest of the margin
# A refit's twin must match it in these settings (train.TrainConfig fields); it differs in `refit` only.
TWIN_SAME = ("model", "model_config", "dataset", "lr", "epochs", "batch_size", "optimizer", "momentum", "schedule", "warmup",
             "gamma", "weight_decay", "label_smoothing", "augment", "translate", "rotate", "scale", "elastic", "elastic_sigma",
             "patience", "ema", "seed", "limit_train")
ECE_BINS = 15
FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
# Letters and symbols that are not drawn like any digit (no O, I, l, S, Z, B, G, b, g, q, ...).
NON_DIGIT_CHARS = "AEFHJKLMNPRTUVWXYacefhkmnprtuvwxy?%&@#*+=<>$€£¥§©®"
GLYPH_TILT = 20  # degrees: letters and symbols are drawn tilted by up to this either way (hands slant)


# -----------------------------------------------------------------------------
# Non-digits: what a user might show that is not a digit


def fonts(family: str = "DejaVu") -> list[Path]:
    """The TrueType fonts of one family in Debian's font folders ([] when none are installed)."""
    return sorted(p for d in FONT_DIRS if d.is_dir() for p in d.glob(f"{family}*.ttf") if "Math" not in p.name)


def non_digits(n: int, seed: int = 0, family: str = "DejaVu", size: int = 280):
    """n PIL images ("L", size x size, dark ink on white): two fifths a letter or symbol of
    NON_DIGIT_CHARS in a random font of `family` or Pillow's own bundled font, its strokes
    thickened by 0 to size/30 px (pens and markers) and tilted by up to GLYPH_TILT degrees;
    a fifth each a filled or outlined shape (square, triangle, star, cross), a scribble (a
    random walk of 8-20 steps), and two to four short random strokes. Deterministic for a seed."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    faces = (fonts(family) or fonts()) + [None]  # None: Pillow's bundled font (a third design)
    out = []
    for i in range(n):
        img = Image.new("L", (size, size), 255)
        draw = ImageDraw.Draw(img)
        kind = (0, 0, 1, 2, 3)[i % 5]
        width = int(rng.integers(size // 40, size // 14))
        c = size / 2 + rng.uniform(-size / 10, size / 10, 2)
        r = size * rng.uniform(0.2, 0.35)
        if kind == 0:
            ch = NON_DIGIT_CHARS[rng.integers(len(NON_DIGIT_CHARS))]
            face, px = faces[rng.integers(len(faces))], int(size * rng.uniform(0.45, 0.7))
            font = ImageFont.truetype(str(face), px) if face is not None else ImageFont.load_default(px)
            draw.text(tuple(c), ch, fill=0, font=font, anchor="mm", stroke_width=int(rng.integers(0, size // 30 + 1)),
                      stroke_fill=0)
            img = img.rotate(float(rng.uniform(-GLYPH_TILT, GLYPH_TILT)), resample=Image.BILINEAR, center=tuple(c),
                             fillcolor=255)
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


THUMB_SIDES = (8, 10, 12, 16)


def thumbnail(a28: np.ndarray, side: int):
    """A (28, 28) uint8 MNIST digit as a side x side dark-on-light thumbnail (area-averaged)."""
    from PIL import Image

    return Image.fromarray(255 - np.asarray(a28, np.uint8)).resize((side, side), Image.BOX)


def prepared(images) -> tuple[list[list[np.ndarray]], list[int]]:
    """Each image through predict.prepare: (crops per image, the number of crops per image)."""
    crops = [predict.prepare(im) for im in images]
    return crops, [len(c) for c in crops]


def logits_per_image(crops: list[list[np.ndarray]], model, ckpt: dict) -> list[torch.Tensor]:
    """The model's logits (k, 10) per image, k its number of crops (batches of 512)."""
    flat = [c for cs in crops for c in cs]
    logits = torch.cat([predict.logits_of(flat[i:i + 512], model, ckpt) for i in range(0, len(flat), 512)]
                       or [torch.zeros(0, 10)])
    out, at = [], 0
    for cs in crops:
        out.append(logits[at:at + len(cs)])
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


_VAL_CROPS: dict = {}


def plain(d: dict) -> dict:
    """The calibration record without its tensors (for JSON): a tensor becomes its shape."""
    if isinstance(d, dict):
        return {k: plain(v) for k, v in d.items()}
    return f"tensor{list(d.shape)}" if isinstance(d, torch.Tensor) else d


def validation_crops(data_dir, limit_val: int | None):
    """The validation split (data.stratified_split's, first limit_val when given) through predict's path.
    Returns (x_tr (N, 28, 28) uint8 training images, val_idx, labels (V,) long, crops per image,
    number of crops per image); the crops are prepared once per process and data folder."""
    x_tr, y_tr, _, _, _ = load_raw("mnist", resolve_data_dir(data_dir), download=False)
    _, val_idx = stratified_split(y_tr)
    if limit_val:
        val_idx = val_idx[:limit_val]
    labels = y_tr[val_idx].long()
    key = (str(resolve_data_dir(data_dir)), len(val_idx))
    if key not in _VAL_CROPS:  # the same for every checkpoint: prepared once per process
        _VAL_CROPS[key] = prepared([digit_image(a) for a in x_tr[val_idx].numpy()])
    crops, counts = _VAL_CROPS[key]
    return x_tr, val_idx, labels, crops, counts


def temperature_step(model, ckpt: dict, crops, counts: list[int], labels: torch.Tensor, weights) -> tuple[float, list[int], dict]:
    """The temperature from the validation images that give one crop (what "a digit" is to the product).
    Returns (T, the indices of those images, the result's temperature fields: T, ECE and NLL before/after)."""
    single = [i for i, k in enumerate(counts) if k == 1]
    logits = predict.logits_of([crops[i][0] for i in single], model, ckpt)
    t = fit_temperature(logits, labels[single])
    before, after = torch.softmax(logits, 1), torch.softmax(logits / t, 1)
    nll = lambda p: float(torch.nn.functional.nll_loss(p.clamp_min(1e-12).log(), labels[single]))  # noqa: E731
    in_sample = bool(ckpt.get("train_config", {}).get("refit"))  # a refit trained on these images: nothing of MNIST is held out
    result = {"weights": str(weights), "temperature": round(t, 4), "method": "temperature scaling (Guo et al. 2017)",
              "fitted_on": f"validation split through predict.prepare ({len(single)} of {len(counts)} images "
                           f"give one crop)" + ("; in-sample: this model was trained on them (a refit)" if in_sample else ""),
              "in_sample": in_sample, "ece_bins": ECE_BINS,
              "ece_before": round(ece(before, labels[single]), 5), "ece_after": round(ece(after, labels[single]), 5),
              "nll_before": round(nll(before), 5), "nll_after": round(nll(after), 5)}
    return t, single, result


def model_outputs(crop_lists, model, ckpt: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: (logits (k, 10), penultimate features (k, F)), k its number of crops (batches of 512)."""
    flat = [c for cs in crop_lists for c in cs]
    outs = [predict.forward(flat[i:i + 512], model, ckpt) for i in range(0, len(flat), 512)]
    lg = torch.cat([o[0] for o in outs] or [torch.zeros(0, 10)])
    ft = torch.cat([o[1] for o in outs]) if outs else torch.zeros(0, 1)
    res, at = [], 0
    for cs in crop_lists:
        res.append((lg[at:at + len(cs)], ft[at:at + len(cs)]))
        at += len(cs)
    return res


def rejector_data(model, ckpt: dict, x_val: np.ndarray, crops, half_a: list[int], n_non_digits: int):
    """The rejector's training set: positives are the one-crop images of validation half A and the
    same digits as 8-16 px thumbnails (a user may well have those, so "low resolution" is not learnt
    as "not a digit"); negatives the non-digits of seed 1. x_val (V, 28, 28) uint8.
    Returns (x (n, F + 10) features and logits, y (n,) 1 digit / 0 not, the fitted StandardScaler,
    the number of negative images)."""
    from sklearn.preprocessing import StandardScaler

    x_a = x_val[half_a]
    thumbs = [thumbnail(a, side) for a, side in zip(x_a, np.resize(THUMB_SIDES, len(x_a)))]
    pos = [o for o in model_outputs([crops[i] for i in half_a] + prepared(thumbs)[0], model, ckpt) if len(o[0]) == 1]
    neg = [o for o in model_outputs(prepared(non_digits(n_non_digits, seed=1, family="DejaVu"))[0], model, ckpt) if len(o[0])]
    x = torch.cat([torch.cat([f, lg], 1) for lg, f in pos + neg]).numpy()
    y = np.r_[np.ones(sum(len(o[0]) for o in pos)), np.zeros(sum(len(o[0]) for o in neg))]
    return x, y, StandardScaler().fit(x), len(neg)


def fit_rejector(strength: float, x: np.ndarray, y: np.ndarray, scaler, n_half_a: int, n_neg: int) -> dict:
    """The rejector (a logistic regression with C = strength over standardized x) as stored in the
    checkpoint; its threshold is 0.0 until choose_thresholds sets it."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=strength, class_weight="balanced", max_iter=3000).fit(scaler.transform(x), y)
    return {"mean": torch.tensor(scaler.mean_, dtype=torch.float32),
            "scale": torch.tensor(np.where(scaler.scale_ > 0, scaler.scale_, 1.0), dtype=torch.float32),
            "weights": torch.tensor(clf.coef_[0], dtype=torch.float32), "bias": float(clf.intercept_[0]),
            "threshold": 0.0, "C": strength,
            "features": "penultimate features (input of the last Linear) and the 10 logits, standardized",
            "fitted_on": f"{n_half_a} validation digits (half A) and as many 8-16 px thumbnails of them, "
                         f"vs {n_neg} generated non-digits (DejaVu, seed 1)"}


def per_image(outs, c: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per image: number of crops, the lowest calibrated top probability and rejector score
    over its crops, and the first crop's digit (what predict.decide compares with thresholds).
    c: a checkpoint-like {"calibration": {temperature, rejector}}."""
    k = np.array([len(lg) for lg, _ in outs])
    lowest_p, lowest_s, digit = np.ones(len(k)), np.ones(len(k)), np.full(len(k), -1)
    for i, (lg, f) in enumerate(outs):
        if len(lg):
            probs = predict.probabilities(lg, c)
            lowest_p[i] = float(probs.max(1).values.min())
            lowest_s[i] = float(predict.digit_score(lg, f, c).min())
            digit[i] = int(probs[0].argmax())
    return k, lowest_p, lowest_s, digit


def choose_thresholds(val: tuple, nd: tuple, labels_b: np.ndarray, p: float | None = None) -> tuple[dict, list[dict], list[dict]]:
    """The probability threshold (the highest keeping PROB_ACCEPT of the validation digits; p when
    given: a refit's twin's), then the rejector's on top of it (the highest keeping MIN_ACCEPT). val,
    nd: per_image of validation half B and of the unseen non-digits. Returns (the chosen scores, the
    probability curve, the rejector curve)."""
    vk, vp, vs, vd = val
    nk, np_, ns, _ = nd

    def scores(p: float, r: float) -> dict:
        # as predict.decide: "ok" needs one crop passing both thresholds; a refusal is no crop or any crop failing
        ok = (vk == 1) & (vp >= p) & (vs >= r)
        refused = (nk == 0) | (np_ < p) | (ns < r)
        return {"threshold": p, "rejector_threshold": r, "val_accepted": float(ok.mean()),
                "val_acc_accepted": float((ok & (vd == labels_b)).sum() / max(ok.sum(), 1)),
                "non_digit_refused": float(refused.mean())}

    curve = [scores(float(p), 0.0) for p in np.round(np.arange(0.30, 0.996, 0.01), 2)]
    fit = [c for c in curve if c["val_accepted"] >= PROB_ACCEPT]
    p_chosen = p if p is not None else max(fit, key=lambda c: c["threshold"])["threshold"] if fit else 0.3
    rejector_curve = [scores(p_chosen, float(r)) for r in np.round(np.arange(0.0, 0.995, 0.005), 3)]
    fit = [c for c in rejector_curve if c["val_accepted"] >= MIN_ACCEPT]
    chosen = max(fit, key=lambda c: c["rejector_threshold"]) if fit else rejector_curve[0]
    return chosen, curve, rejector_curve


def write_calibration(weights: str | Path, result: dict) -> None:
    """Store the calibration (result without its curves and path) in the checkpoint, atomically,
    and in weights/<name>.json beside it when that exists (tensors as their shapes)."""
    stored = {k: v for k, v in result.items() if k not in ("curve", "rejector_curve", "weights")}
    raw = read_checkpoint(weights)
    raw["calibration"] = stored
    save_atomic(raw, weights)
    side = Path(weights).with_suffix(".json")
    if side.is_file():
        meta = json.loads(side.read_text())
        meta["calibration"] = plain(stored)
        side.write_text(json.dumps(meta, indent=2) + "\n")


def twin_calibration(weights, ckpt: dict, twin, data_dir, limit_val, n_non_digits) -> dict:
    """calibrate() of a refit's twin (held out, nothing written), with "twin": {file, sha256, run,
    epoch, val_acc}. Raises CheckpointError when `weights` is no refit (it has held-out digits of its
    own) or `twin` is not its twin: a refit itself, or other settings (TWIN_SAME)."""
    a = ckpt.get("train_config", {})
    if not a.get("refit"):
        raise CheckpointError(f"{weights}: not a refit, so its validation split is held out: calibrate it without --twin")
    _, tw = load_checkpoint(twin)
    b = tw.get("train_config", {})
    differ = [k for k in TWIN_SAME if a.get(k) != b.get(k)]
    if b.get("refit") or differ:
        raise CheckpointError(f"{twin}: not a held-out twin of {weights} ("
                              + (f"differs in {', '.join(differ)}" if differ else "a refit itself") + "); train its recipe "
                              "and seed without --refit, e.g. the command in its card with --refit dropped")
    r = calibrate(twin, data_dir, limit_val, n_non_digits, write=False)
    return {**r, "twin": {"file": str(twin), "sha256": runs.sha256(twin), "run": b.get("run_name") or Path(twin).parent.name,
                          "epoch": tw.get("epoch"), "val_acc": tw.get("metrics", {}).get("val_acc")}}


def calibrate(weights: str | Path, data_dir=None, limit_val: int | None = None, n_non_digits: int = 1600,
              write: bool = True, twin: str | Path | None = None) -> dict:
    """Fit the temperature and threshold of one checkpoint (see the module docstring) and,
    with write=True, store them in the checkpoint (atomically) and in its .json beside it.
    twin: for a refit, its held-out twin (temperature and probability threshold from it).
    Returns {weights, temperature, threshold, ece_before, ece_after, nll_before, nll_after, in_sample,
    fitted_on, twin (with a twin), val_n, val_accepted, val_acc_accepted, non_digit_n,
    non_digit_refused, rejector, curve: [...], rejector_curve: [...]}; val_* are this file's own
    (in-sample for a refit). Raises CheckpointError for an unreadable checkpoint or a wrong twin."""
    model, ckpt = load_checkpoint(weights)
    held = twin_calibration(weights, ckpt, twin, data_dir, limit_val, n_non_digits) if twin else None
    x_tr, val_idx, labels, crops, counts = validation_crops(data_dir, limit_val)
    t, single, result = temperature_step(model, ckpt, crops, counts, labels, weights)
    if held:  # the twin's held-out temperature, and its ECE and NLL (this file's would be in-sample)
        t = held["temperature"]
        result.update({k: held[k] for k in ("temperature", "ece_before", "ece_after", "nll_before", "nll_after")}, twin=held["twin"],
                      fitted_on=f"temperature and probability threshold: its held-out twin's ({held['fitted_on']}); the rejector: "
                                "this file's validation split, in-sample (a refit)")
    # The rejector is fitted on half the validation digits (A) and the non-digits of seed 1;
    # both thresholds are chosen on the other half (B) and non-digits of seed 2, unseen by the fit.
    half_a, half_b = single[0::2], [i for i in range(len(val_idx)) if i not in set(single[0::2])]
    x, y, scaler, n_neg = rejector_data(model, ckpt, x_tr[val_idx].numpy(), crops, half_a, n_non_digits)
    nd_b = non_digits(max(n_non_digits // 2, 1), seed=2, family="DejaVu")
    val_outs, nd_outs = model_outputs([crops[i] for i in half_b], model, ckpt), model_outputs(prepared(nd_b)[0], model, ckpt)
    labels_b = labels.numpy()[half_b]

    def fit_and_choose(strength: float):
        """The rejector fitted with C = strength, and both thresholds chosen for it on half B."""
        rejector = fit_rejector(strength, x, y, scaler, len(half_a), n_neg)
        c = {"calibration": {"temperature": t, "rejector": rejector}}
        return (rejector, *choose_thresholds(per_image(val_outs, c), per_image(nd_outs, c), labels_b, held and held["threshold"]))

    # C (the rejector's regularization) chosen like the thresholds: on half B and the unseen
    # non-digits, the C whose chosen thresholds refuse the most of them (ties: the stronger one).
    tried = [(strength, *fit_and_choose(strength)) for strength in REJECTOR_CS]
    _, rejector, chosen, curve, rejector_curve = max(tried, key=lambda r: (r[2]["non_digit_refused"], -r[0]))
    result["rejector_c_tried"] = {str(st): round(ch["non_digit_refused"], 5) for st, _, ch, _, _ in tried}
    rejector["threshold"] = chosen["rejector_threshold"]
    result.update({"threshold": chosen["threshold"], "rejector": rejector, "min_accept": MIN_ACCEPT,
                   "prob_accept": PROB_ACCEPT, "val_n": len(val_idx),
                   "val_accepted": chosen["val_accepted"], "val_acc_accepted": chosen["val_acc_accepted"],
                   "val_n_thresholds": len(half_b), "non_digit_n": len(nd_b),
                   "non_digit_refused": chosen["non_digit_refused"],
                   "non_digits": "letters/symbols (DejaVu fonts and Pillow's bundled font, thickened, tilted), shapes, scribbles, strokes: calibrate.non_digits; "
                                 "seed 1 fits the rejector, seed 2 scores the thresholds",
                   "curve": held["curve"] if held else curve, "rejector_curve": rejector_curve})
    if write:
        write_calibration(weights, result)
    return result


def plot_tradeoff(results_dir: str | Path, out: str | Path) -> Path:
    """figures/unsure_tradeoff.png from results/calibration/*.json: per checkpoint, the share of
    validation digits accepted against the share of (unseen) non-digits refused, as the
    rejector's threshold moves (at the chosen probability threshold); the chosen point marked."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for f in sorted(Path(results_dir).glob("*.json")):
        r = json.loads(f.read_text())
        xs = [100 * c["non_digit_refused"] for c in r["rejector_curve"]]
        ys = [100 * c["val_accepted"] for c in r["rejector_curve"]]
        line, = ax.plot(xs, ys, label=f.stem)
        ax.plot([100 * r["non_digit_refused"]], [100 * r["val_accepted"]], "o", color=line.get_color())
    ax.set_xlabel("generated non-digits refused (%)")
    ax.set_ylabel("validation digits accepted (%)")
    ax.set_ylim(97, 100.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("'unsure': digits kept vs non-digits refused (dot: chosen)")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Fit a temperature and an 'unsure' threshold and store them in checkpoints.")
    p.add_argument("weights", nargs="+", help="checkpoints (.pt) to calibrate")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $DATA_DIR or data/)")
    p.add_argument("--limit-val", type=int, default=None, help="use only the first N validation images (cheap runs)")
    p.add_argument("--non-digits", type=int, default=1600, help="generated non-digit images for the threshold")
    p.add_argument("--twin", help="for one refit: its held-out twin (same recipe and seed, trained without --refit), "
                                  "whose temperature and probability threshold it takes")
    p.add_argument("--dry-run", action="store_true", help="print the result, write nothing")
    p.add_argument("--out", default=str(ROOT / "results" / "calibration"), help="folder for <name>.json with the curve")
    p.add_argument("--figures", default=str(ROOT / "figures"), help="folder for unsure_tradeoff.png (every <name>.json in --out)")
    a = p.parse_args(argv)
    if a.twin and len(a.weights) > 1:
        p.error("--twin goes with one refit checkpoint")
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    for w in a.weights:
        try:
            r = calibrate(w, a.data_dir, a.limit_val, a.non_digits, write=not a.dry_run, twin=a.twin)
        except CheckpointError as e:
            sys.exit(f"error: {e}")
        print(f"{w}: T = {r['temperature']}, ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}, threshold "
              f"{r['threshold']:.2f}, rejector {r['rejector']['threshold']:.3f}: {100 * r['val_accepted']:.2f}% of validation digits accepted "
              f"({100 * r['val_acc_accepted']:.2f}% of them right), {100 * r['non_digit_refused']:.1f}% of "
              f"{r['non_digit_n']} non-digits refused")
        if not a.dry_run:
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{Path(w).stem}.json").write_text(json.dumps(plain(r), indent=2) + "\n")
    if not a.dry_run:
        print(f"wrote {plot_tradeoff(a.out, Path(a.figures) / 'unsure_tradeoff.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
