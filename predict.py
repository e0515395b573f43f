"""Classify your own digit images with a trained model: phone photos, scans, canvas exports.

    python predict.py my_digit.png --weights weights/convnet.pt
    python predict.py photos/ 'scans/*.jpg' --weights weights/convnet.pt --topk 3 --json
    python predict.py my_digit.png --show seen/      # also save the 28x28 crop(s) the model saw

The contract (what serve.py and the benchmarks use; each step is one function):

    image  = read_image(source, name)        # bytes | str | Path | data URL bytes -> PIL image, or ImageError
    crops  = prepare(image)                  # [(28, 28) float32 in [0, 1]], one per digit, left to right; [] = no ink
    x      = normalize(crop, ckpt)           # -> tensor (1, 1, 28, 28), as in training
    logits, feats = forward(crops, model, ckpt)   # (n, 10) and the penultimate features (n, F)
    answer = decide(logits, ckpt, topk=3, features=feats, crops=crops)  # -> {status, digit, probability, topk, number, digits}

`classify(image, model, ckpt)` runs prepare -> forward -> decide in one call and returns
(answer, crops). For an ensemble, `decide_ensemble([(logits, feats, ckpt), ...], crops=crops)`: the
members' calibrated probabilities averaged against their mean threshold, and each crop kept "ok"
only when every member's rejector accepts it (one member: exactly `decide`). Given the crops, both
also refuse a crop whose ink is a stroke with a dot apart above or below it (`dot_apart`: ?, !, i, j). read_image raises ImageError (a ValueError, one line naming the file and
the fix) with `kind` in "empty", "data_url", "unreadable", "too_large" (e.g. for HTTP 400/413/415).

An answer's `status` is one of
    ok              one digit, read with calibrated probability >= the checkpoint's threshold
                    (and, given the features, a rejector score >= its threshold; given the
                    crops, not a stroke with a dot apart)
    no_digit        no ink at all (blank page or canvas): digit None, probability None, topk []
    unsure          ink, but not confidently a digit (a letter, a symbol, a scribble): digit None
    several_digits  several digits side by side, each confident: `number` ("37") and `digits`
                    (one answer dict per digit, left to right); digit None
An `unsure` answer (and each unsure digit) says why in `reason`: "probability" (the calibrated
probability is under the threshold), "digit_score" (the rejector says it is no digit) or "shape"
(dot_apart); None otherwise.
`probability` is the calibrated probability of the top class (for several_digits: the
product of the digits' probabilities); `topk` is [[digit, p], ...], best first.

The calibration (`ckpt["calibration"] = {"temperature": T, "threshold": p, ...}`) is written
by calibrate.py: T is fitted on the validation split (temperature scaling, Guo et al. 2017),
the threshold chosen on validation digits plus generated non-digits, and a "rejector" (a
logistic regression over the penultimate features and logits: digit or not) with its own
threshold, applied when decide() is given the features. A checkpoint without calibration
gets T = 1, DEFAULT_THRESHOLD and no rejector.

Finding the ink (prepare, with ink.py): grey with ink from the alpha channel when the colour
carries none; a sheet on a darker desk cut out; uneven light divided out; an Otsu threshold with
fainter connected ink (hysteresis); ruled and grid lines removed; specks dropped; pieces that
overlap horizontally joined into one digit; a square-ish thumbnail (shorter side under MIN_SIDE,
at most ONE_CELL_ASPECT elongated: an MNIST 28x28) is one digit, all its ink. Each digit is
framed as MNIST's were: strokes thinner than MNIST's grown (thicken), its bounding box scaled so
the longer side is 20 px, pasted into 28x28 with its centre of mass at the centre.
"""

import argparse
import glob
import json
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

# The decoding floor; predict.read_image, predict.ImageError, ... stay the contract serve.py and the tests use
from images import (IMAGE_SUFFIXES, MAX_GREY_PIXELS, MAX_PIXELS, WORK_SIDE, ImageError, heif_opener,  # noqa: F401
                    read_image, to_grey)
# The ink floor: where the digits are on the page
from ink import MIN_SIDE, _reduce, find_digits, find_marks, ink_map, on_sheet  # noqa: F401 (find_digits: the contract tests use)
from models import CheckpointError, load_checkpoint

DEFAULT_THRESHOLD = 0.5  # calibrated probability needed for "ok" when the checkpoint has no calibration
UPSAMPLE = 1  # PIL.Image.LANCZOS: how a digit smaller than the 20-px box is enlarged (best of 5 filters on 8x8 thumbnails)
FRAME_NEAR, FRAME_PCT, FRAME_BOX = 4, 98, 0.2  # px a digit's faint edge may reach; the stroke percentile that is 1; the box threshold
TINY_SIDE, TINY_RESAMPLE, TINY_DILATE = 20, 1, 2  # thumbnails under 20 px: framed from a LANCZOS enlargement, mask grown 2 px
# Stroke width / the box's longer side (stroke_width): MNIST's training digits have a median of
# 0.145 and a 1st percentile of 0.079 (tests/test_predict.py measures them). A thinner stroke,
# a fine pen on a big photo, frames as a faint hairline that every model reads as a "1": under
# STROKE_MIN it is grown to MNIST's median before framing.
STROKE_MIN, STROKE_TARGET = 0.06, 0.145
# A hairline along the pixel grid, box-reduced to WORK_SIDE, is split between two rows at half the
# strength it has where it falls on one: thicken grows strokes from this share of the core up.
STROKE_GROW_FROM = 0.4
ONE_CELL_ASPECT = 1.5  # a thumbnail (shorter side < MIN_SIDE) at most this elongated holds one digit
# A picture with no EXIF orientation may be sideways: its quarter turns are read (read_turned) when its
# one mark is SIDEWAYS wider than tall, or read as a digit under TURN_SURE. A turn is
# read at TURN_STRONG or more; a turn reading another digit is a rival when its 1 - probability is within
# TURN_MARGIN times the best turn's; an accepted upright reading gives way only to a turn TURN_OVERRIDE
# times surer, or (shaped like an upright digit) to both sideways turns at TURN_STRONG.
SIDEWAYS, TURN_SURE, TURN_STRONG, TURN_MARGIN, TURN_OVERRIDE = 1.25, 0.999, 0.9995, 10.0, 300.0
STATUSES = ("ok", "no_digit", "unsure", "several_digits")


# -----------------------------------------------------------------------------
# Framing the digits

# A crop's ink that is one stroke plus one small, round, solid piece clear of it straight above or
# below is a ?, !, i or j, not a digit (the "?" of ../shared/user-images was read as a 3 at 0.99,
# past the rejector). How often these bounds fire on MNIST's test digits through prepare, and on
# those characters rendered in Debian's fonts: tests/test_predict.py::test_dot_apart_*.
DOT_LEVEL = 0.3  # ink strength (of the crop's 1) that counts
DOT_MIN_PIXELS = 4  # a dot is at least 2x2 pixels of the 28x28: a 1-px speck near a digit is not one
DOT_MAX_SIZE = 0.35  # the dot's pixels, at most this share of the stroke's
DOT_MAX_HEIGHT = 0.5  # the dot's height, at most this share of the stroke's
DOT_MAX_ASPECT = 1.6  # the dot's box, at most this elongated
DOT_MIN_FILL = 0.5  # the dot fills at least this share of its box


def dot_apart(crop: np.ndarray) -> bool:
    """True when a (28, 28) crop from `prepare` holds exactly two pieces of ink (8-connected,
    above DOT_LEVEL): a stroke and a dot, the dot small but no speck (DOT_MIN_PIXELS,
    DOT_MAX_SIZE, DOT_MAX_HEIGHT), round and solid (DOT_MAX_ASPECT, DOT_MIN_FILL), with at least
    one empty row between them and its centre within the stroke's columns: the shape of ?, !, i
    and j, which no digit has. A digit's own detached piece (the bar of a 5, a broken 4) is
    elongated, beside the rest, or large."""
    from scipy import ndimage as ndi

    ink = np.asarray(crop) > DOT_LEVEL
    labels, n = ndi.label(ink, structure=np.ones((3, 3), bool))
    if n != 2:
        return False
    sizes = ndi.sum(ink, labels, index=[1, 2])
    (stroke, dot), (ss, ds) = (ndi.find_objects(labels), sizes) if sizes[0] >= sizes[1] else \
        (ndi.find_objects(labels)[::-1], sizes[::-1])
    dh, dw = dot[0].stop - dot[0].start, dot[1].stop - dot[1].start
    if not DOT_MIN_PIXELS <= ds <= DOT_MAX_SIZE * ss or dh > DOT_MAX_HEIGHT * (stroke[0].stop - stroke[0].start):
        return False
    if max(dh, dw) > DOT_MAX_ASPECT * min(dh, dw) or ds < DOT_MIN_FILL * dh * dw:
        return False
    gap = max(dot[0].start - stroke[0].stop, stroke[0].start - dot[0].stop)  # empty rows between them
    return gap >= 1 and stroke[1].start <= (dot[1].start + dot[1].stop) / 2 <= stroke[1].stop


def frame(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The digit under `mask` (H, W) bool, from `ink` (H, W) in [0, 1] -> (28, 28) float32,
    framed as MNIST's: bounding box scaled to 20 px on its longer side, centre of mass at
    the centre of the 28x28, strokes' strength stretched so the core is 1."""
    from PIL import Image
    from scipy import ndimage as ndi

    core = ink[mask]
    # The digit's faint edges too: pixels above a tenth of its stroke strength, connected to
    # its strokes, within FRAME_NEAR px of them (hysteresis thresholding, bounded).
    level = max(np.percentile(core, FRAME_PCT), 1e-3)
    near = ndi.binary_propagation(mask, mask=(ink > 0.1 * level) & ndi.binary_dilation(mask, iterations=FRAME_NEAR))
    a = np.where(near | mask, ink, 0.0)
    a = np.clip(a / level, 0.0, 1.0)
    box = a > FRAME_BOX  # the box, as MNIST's, holds the faint edge of the strokes too
    rows, cols = np.nonzero(box.any(1))[0], np.nonzero(box.any(0))[0]
    a = thicken(a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    h, w = a.shape
    scale = 20.0 / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.LANCZOS if scale < 1 else UPSAMPLE
    small = np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((new_w, new_h), resample), np.float32)
    small = np.clip(small, 0.0, 1.0)
    out = np.zeros((28, 28), np.float32)
    top, left = (28 - new_h) // 2, (28 - new_w) // 2
    out[top:top + new_h, left:left + new_w] = small
    total = out.sum()
    if total <= 0:
        return out
    ys, xs = np.indices(out.shape)
    dy = int(round(13.5 - (ys * out).sum() / total))
    dx = int(round(13.5 - (xs * out).sum() / total))
    dy = int(np.clip(dy, -top, 28 - (top + new_h)))
    dx = int(np.clip(dx, -left, 28 - (left + new_w)))
    return np.roll(out, (dy, dx), axis=(0, 1))


def stroke_width(a: np.ndarray) -> float:
    """Mean stroke width of the ink a > 0.5 in (H, W), as a fraction of max(H, W): ink area over
    skeleton length (skimage's skeletonize); 0.0 when there is no ink."""
    from skimage.morphology import skeletonize

    ink = a > 0.5
    length = int(skeletonize(ink).sum())
    return float(ink.sum()) / length / max(a.shape) if length else 0.0


def thicken(a: np.ndarray) -> np.ndarray:
    """A digit cropped to its box, (H, W) ink in [0, 1]: returned as is when its strokes are at
    least STROKE_MIN of the longer side (stroke_width), else padded and its strokes grown, with a
    1-px soft edge, until they are STROKE_TARGET of the new longer side (MNIST's median)."""
    from scipy import ndimage as ndi

    ratio = stroke_width(a)
    if ratio == 0.0 or ratio >= STROKE_MIN:
        return a
    f = -(-max(a.shape) // (2 * WORK_SIDE))
    if f > 1:  # a long strip (an enlarged thumbnail): block maxima first, so the padding stays bounded and the strokes whole
        h, w = a.shape
        a = np.pad(a, ((0, -h % f), (0, -w % f))).reshape(-(-h // f), f, -(-w // f), f).max(axis=(1, 3))
        ratio = stroke_width(a)
        if ratio == 0.0 or ratio >= STROKE_MIN:
            return a
    side = max(a.shape)
    r = (STROKE_TARGET - ratio) * side / (2 * (1 - STROKE_TARGET))  # px added on each side of a stroke
    pad = int(np.ceil(r)) + 1
    a = np.pad(a, pad)
    away = ndi.distance_transform_edt(a < STROKE_GROW_FROM)  # px from the stroke
    return np.maximum(a, np.clip(r + 0.5 - away, 0.0, 1.0)).astype(np.float32)


def _enlarge(grey: np.ndarray, side: int) -> np.ndarray:
    """Bilinear upsampling of a thumbnail (H, W) so its shorter side is at least `side`."""
    from PIL import Image

    h, w = grey.shape
    f = int(np.ceil(side / max(min(h, w), 1)))
    if f <= 1:
        return grey
    return np.asarray(Image.fromarray(grey.astype(np.float32), mode="F").resize((w * f, h * f), Image.BILINEAR), np.float32)


class Marks(NamedTuple):
    """What `prepare_marks` finds in one picture, left to right."""
    crops: list[np.ndarray]  # one (28, 28) float32 in [0, 1] per digit
    layout: str  # one character per mark: "d" a digit (its crop, in order), or a sign ".", ",", "-", "?" (out of place)
    wide: bool  # one digit whose ink is at least SIDEWAYS wider than tall: perhaps a photo turned sideways
    thumb: bool = False  # a thumbnail (shorter side under MIN_SIDE): a cell of digits, never turned


def working_grey(image) -> np.ndarray:
    """A PIL image (from read_image) -> (H, W) grey in [0, 1], reduced to WORK_SIDE, a sheet on a
    darker desk cut out (on_sheet): what prepare_marks reads, at any quarter turn."""
    f = -(-max(image.size) // WORK_SIDE)
    if image.mode in ("1", "L") and f > 1:  # _reduce's box average (whole boxes only), done in Pillow: no full-size floats
        w, h = image.size
        image = (image if image.mode == "L" else image.convert("L")).reduce(f, box=(0, 0, w // f * f, h // f * f))
    return on_sheet(_reduce(to_grey(image), WORK_SIDE))


def prepare(image) -> list[np.ndarray]:
    """A PIL image (from read_image) -> the digits in it, left to right, each a (28, 28)
    float32 array in [0, 1], white ink on black, framed as MNIST's. [] means no ink.
    Printed structure (boxes, circles, underlines, comb fields) is set aside; signs are left out
    (prepare_marks has them)."""
    return prepare_marks(working_grey(image)).crops


def prepare_marks(grey: np.ndarray) -> Marks:
    """(H, W) grey from working_grey (or a quarter turn of it) -> Marks: the digits' crops, framed
    as MNIST's, and the signs written between them."""
    big = _enlarge(grey, MIN_SIDE)
    thumb = big.shape != grey.shape
    marks = find_marks(ink_map(big), structure=not thumb)
    masks = [m for kind, m in marks if kind == "digit"]
    layout = "".join("d" if kind == "digit" else kind for kind, _ in marks)
    if thumb:
        layout = "d" * len(masks)  # a thumbnail holds digits only
    if thumb and len(masks) > 1 and max(grey.shape) <= ONE_CELL_ASPECT * min(grey.shape):
        # A square-ish thumbnail (an MNIST 28x28, an 8x8 crop) is one character cell: a gap of a
        # pixel there is sampling (a 4's bar or a 1's stroke broken between two pixels), not space
        # between two digits, so all its ink is one digit.
        masks, layout = [np.logical_or.reduce(masks)], "d"
    wide = False
    if not thumb and len(masks) == 1:
        rows, cols = np.nonzero(masks[0].any(1))[0], np.nonzero(masks[0].any(0))[0]
        wide = bool(cols[-1] - cols[0] + 1 >= SIDEWAYS * (rows[-1] - rows[0] + 1))
    if not thumb:
        return Marks([frame(ink_map(grey), m) for m in masks], layout, wide, thumb)
    # A thumbnail: the digits are found on the enlarged copy (components hold together), then
    # framed from the pixels as given, so they are resampled once, as MNIST's were.
    (h, w), f = grey.shape, big.shape[0] // grey.shape[0]
    if min(h, w) < TINY_SIDE:  # a few pixels per stroke: frame from a smooth enlargement instead
        from PIL import Image
        smooth = np.asarray(Image.fromarray(grey.astype(np.float32), mode="F").resize((w * f, h * f), TINY_RESAMPLE), np.float32)
        ink = ink_map(np.clip(smooth, 0, 1))
        return Marks([frame(ink, ndi_dilate(m, TINY_DILATE)) for m in masks], layout, wide, thumb)
    ink = ink_map(grey)
    return Marks([frame(ink, m.reshape(h, f, w, f).any(axis=(1, 3))) for m in masks], layout, wide, thumb)


def ndi_dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.binary_dilation(mask, iterations=iterations) if iterations else mask


def preprocess(image) -> np.ndarray:
    """The first digit `prepare` finds (28, 28), or zeros when there is none (the old API)."""
    crops = prepare(image)
    return crops[0] if crops else np.zeros((28, 28), np.float32)


# -----------------------------------------------------------------------------
# From crops to answers


def normalize(a28: np.ndarray, ckpt: dict) -> torch.Tensor:
    """(28, 28) float in [0, 1] -> tensor (1, 1, 28, 28) normalized with the checkpoint's
    training mean and std (ckpt["normalization"])."""
    norm = ckpt["normalization"]
    x = (torch.as_tensor(np.asarray(a28, np.float32)) - norm["mean"]) / norm["std"]
    return x.reshape(1, 1, 28, 28)


def calibration(ckpt: dict) -> tuple[float, float]:
    """(temperature, threshold) stored by calibrate.py, or (1.0, DEFAULT_THRESHOLD)."""
    c = ckpt.get("calibration") or {}
    return float(c.get("temperature", 1.0)), float(c.get("threshold", DEFAULT_THRESHOLD))


def probabilities(logits: torch.Tensor, ckpt: dict) -> torch.Tensor:
    """Logits (n, 10) -> calibrated probabilities (n, 10): softmax(logits / temperature)."""
    temperature, _ = calibration(ckpt)
    return torch.softmax(torch.as_tensor(logits).float().reshape(-1, 10) / temperature, dim=1)


def _one(p: torch.Tensor, threshold: float, topk: int) -> dict:
    q, idx = p.topk(min(topk, p.numel()))
    ok = float(q[0]) >= threshold
    return {"status": "ok" if ok else "unsure", "digit": int(idx[0]) if ok else None, "reason": None if ok else "probability",
            "probability": float(q[0]), "topk": [[int(i), float(v)] for i, v in zip(idx, q)]}


def decide_probs(probs: torch.Tensor, threshold: float, topk: int = 3) -> dict:
    """Calibrated probabilities (n, 10), one row per crop left to right -> the answer dict
    {status, digit, probability, topk, number, digits} (see the module docstring).
    n = 0: no_digit. n = 1: ok or unsure. n > 1: several_digits when every digit is ok,
    else unsure (with `digits` still given, so a caller can show which one was unsure)."""
    probs = torch.as_tensor(probs).reshape(-1, 10)
    if len(probs) == 0:
        return {"status": "no_digit", "digit": None, "reason": None, "probability": None, "topk": [], "number": None, "digits": []}
    parts = [_one(p, threshold, topk) for p in probs]
    if len(parts) == 1:
        return {**parts[0], "number": None, "digits": []}
    sure = all(d["status"] == "ok" for d in parts)
    return {"status": "several_digits" if sure else "unsure", "digit": None, "reason": None if sure else "probability",
            "probability": float(np.prod([d["probability"] for d in parts])), "topk": [],
            "number": "".join(str(d["digit"]) for d in parts) if sure else None, "digits": parts}


def digit_score(logits: torch.Tensor, features: torch.Tensor | None, ckpt: dict) -> torch.Tensor | None:
    """How digit-like each crop looks, (n,) in [0, 1], from the checkpoint's rejector: a
    logistic regression that calibrate.py fits on validation digits against generated
    non-digits, over the model's penultimate features (the input of its last Linear, from
    `forward`) and its logits, both standardized. None when the checkpoint has no rejector
    or no features were given."""
    rej = (ckpt.get("calibration") or {}).get("rejector")
    if not rej or features is None:
        return None
    x = torch.cat([torch.as_tensor(features).float().flatten(1), torch.as_tensor(logits).float().reshape(-1, 10)], 1)
    if x.shape[1] != len(rej["mean"]):
        return None  # features of another model: no rejector rather than a wrong one
    z = (x - torch.as_tensor(rej["mean"]).float()) / torch.as_tensor(rej["scale"]).float()
    return torch.sigmoid(z @ torch.as_tensor(rej["weights"]).float() + float(rej["bias"]))


def shape_keep(crops: list[np.ndarray] | None, n: int) -> torch.Tensor | None:
    """(n,) bools: the crop is not a stroke with a dot apart (dot_apart); None without crops."""
    if crops is None or len(crops) != n or n == 0:
        return None
    return torch.tensor([not dot_apart(c) for c in crops])


def decide(logits: torch.Tensor, ckpt: dict, topk: int = 3, features: torch.Tensor | None = None,
           crops: list[np.ndarray] | None = None, layout: str | None = None) -> dict:
    """The model's logits (n, 10) for the crops of one image -> the answer dict, with the
    checkpoint's calibration: a crop is "ok" when its calibrated top probability reaches the
    threshold and, when `features` (n, F) from `forward` are given and the checkpoint has a
    rejector, its digit_score reaches calibration["rejector"]["threshold"], and, when the n
    `crops` themselves are given, it is not a stroke with a dot apart (dot_apart); else "unsure".
    Without features only the probability threshold applies (it refuses fewer letters).
    Given the `layout` of prepare_marks, the signs are written into the number (as_written)."""
    answer = decide_probs(probabilities(logits, ckpt), calibration(ckpt)[1], topk)
    score = digit_score(logits, features, ckpt)
    if score is not None and len(score):
        _refuse(answer, score >= float(ckpt["calibration"]["rejector"]["threshold"]), "digit_score")
    answer = _refuse(answer, shape_keep(crops, len(answer["digits"]) or (1 if answer["status"] != "no_digit" else 0)), "shape")
    return as_written(answer, layout)


def as_written(answer: dict, layout: str | None) -> dict:
    """The answer for the digits of `layout` (prepare_marks: "d" per digit, or a sign ".", ",",
    "-", "?") with the signs written into `number` as written ("3.5", "3,5", "-7"), status
    several_digits and `digits` the digits' answers left to right, when every digit is ok; a mark
    out of place ("?") makes the answer unsure (reason "mark"). Digits alone: unchanged."""
    if not layout or set(layout) == {"d"} or answer["status"] == "no_digit":
        return answer
    parts = answer["digits"] or [{k: v for k, v in answer.items() if k not in ("number", "digits")}]
    if "?" in layout:
        return {**answer, "status": "unsure", "digit": None, "reason": "mark", "number": None, "digits": parts}
    if any(d["status"] != "ok" for d in parts):
        return {**answer, "status": "unsure", "digit": None, "number": None, "digits": parts,
                "reason": next(d["reason"] for d in parts if d["status"] != "ok")}
    digits = iter(str(d["digit"]) for d in parts)
    number = "".join(next(digits) if c == "d" else c for c in layout)
    return {"status": "several_digits", "digit": None, "reason": None, "probability": float(np.prod([d["probability"] for d in parts])),
            "topk": [], "number": number, "digits": parts}


def _refuse(answer: dict, keep: torch.Tensor | None, reason: str) -> dict:
    """The answer with every crop whose `keep` (n,) is False turned from "ok" to "unsure" with
    `reason` (and a number with such a digit turned "unsure"); keep None changes nothing. The
    answer is changed in place and returned."""
    if keep is None:
        return answer
    parts = answer["digits"] if answer["digits"] else [answer]
    for part, k in zip(parts, keep):
        if not bool(k) and part["status"] == "ok":
            part.update(status="unsure", digit=None, reason=reason)
    if answer["digits"] and answer["status"] != "unsure" and any(d["status"] != "ok" for d in parts):
        answer.update(status="unsure", number=None, reason=next(d["reason"] for d in parts if d["status"] != "ok"))
    return answer


def ensemble_probabilities(members: list[tuple[torch.Tensor, torch.Tensor | None, dict]]) -> torch.Tensor:
    """(n, 10): the members' calibrated probabilities (each member's own temperature) averaged;
    members as decide_ensemble takes them."""
    return torch.stack([probabilities(lg, ck) for lg, _, ck in members]).mean(0)


def decide_ensemble(members: list[tuple[torch.Tensor, torch.Tensor | None, dict]], topk: int = 3,
                    crops: list[np.ndarray] | None = None, layout: str | None = None) -> dict:
    """The answer of an ensemble for the crops of one image. members: one (logits (n, 10),
    features (n, F) or None, ckpt) per model, from `forward` on the same n crops.

    The rule: the members' calibrated probabilities are averaged and the mean of their
    probability thresholds applies to the mean (decide_probs); then every member whose
    checkpoint has a rejector (and whose features are given) checks each crop, and a crop
    stays "ok" only when every one of them scores it at or above its own rejector threshold
    (each threshold was chosen on that member's validation digits; the ensemble is the
    careful option, so one member that sees a letter is enough to refuse it, at the cost of
    the few digits any one rejector refuses). With one member this is exactly `decide`; with
    no rejector among the members, only the probability threshold applies. Given the n crops,
    a stroke with a dot apart is refused as in `decide`; given the layout, signs as in `decide`."""
    if len(members) == 1:
        logits, features, ckpt = members[0]
        return decide(logits, ckpt, topk, features, crops, layout)
    probs = ensemble_probabilities(members)
    threshold = float(np.mean([calibration(ck)[1] for _, _, ck in members]))
    answer = decide_probs(probs, threshold, topk)
    votes = []  # (n,) bools, one per member with a rejector: it accepts the crop
    for logits, features, ckpt in members:
        score = digit_score(logits, features, ckpt)
        if score is not None and len(score):
            votes.append(score >= float(ckpt["calibration"]["rejector"]["threshold"]))
    _refuse(answer, torch.stack(votes).all(0) if votes else None, "digit_score")  # (n,): every rejector accepts
    answer = _refuse(answer, shape_keep(crops, len(answer["digits"]) or (1 if answer["status"] != "no_digit" else 0)), "shape")
    return as_written(answer, layout)


def _last_linear(model: torch.nn.Module) -> torch.nn.Module | None:
    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m
    return last


@torch.no_grad()
def forward(crops: list[np.ndarray], model: torch.nn.Module, ckpt: dict,
            layers: dict[str, torch.nn.Module] | None = None,
            outputs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits (n, 10), penultimate features (n, F) or None) for n crops (28, 28), one batch.
    The features are the input of the model's last nn.Linear (its classifier), caught by a
    forward hook; None when the model has no Linear. n = 0 gives ((0, 10), None).

    layers/outputs: optionally {name: module} of `model` whose outputs (float, CPU) this same
    forward pass also stores into the dict `outputs` under those names (serve.py shows the
    conv layers' feature maps from the pass that gives the answer). The hooks live for this
    one call only, so concurrent callers of one model need a lock (serve.py holds one)."""
    if not crops:
        return torch.zeros(0, 10), None
    device = next(model.parameters()).device
    x = torch.cat([normalize(c, ckpt) for c in crops]).to(device)
    caught = {}
    head = _last_linear(model)
    hooks = [head.register_forward_hook(lambda m, i, o: caught.__setitem__("f", i[0]))] if head is not None else []
    if layers and outputs is not None:
        hooks += [m.register_forward_hook(lambda mod, i, o, key=k: outputs.__setitem__(key, o.detach().float().cpu()))
                  for k, m in layers.items()]
    try:
        logits = model(x).float().cpu()
    finally:
        for hook in hooks:
            hook.remove()
    f = caught.get("f")
    return logits, (f.float().flatten(1).cpu() if f is not None and len(f) == len(logits) else None)


def logits_of(crops: list[np.ndarray], model: torch.nn.Module, ckpt: dict) -> torch.Tensor:
    """The model's logits (n, 10) for n crops (28, 28), one batch; (0, 10) for none."""
    return forward(crops, model, ckpt)[0]


def classify(image, model: torch.nn.Module, ckpt: dict, topk: int = 3) -> tuple[dict, list[np.ndarray]]:
    """A PIL image -> (answer dict, the crops the model saw): prepare_marks, normalize, model,
    decide, and the quarter turns when the picture may be sideways (answer_marks)."""
    grey = working_grey(image)
    return answer_marks(prepare_marks(grey), [(model, ckpt)], topk, lambda: grey)


def answer_marks(marks: Marks, members: list, topk: int = 3, grey=None, passes: list | None = None,
                 run=None) -> tuple[dict, list[np.ndarray]]:
    """One picture's Marks -> (answer, the crops read): the members' (model, ckpt) answer with the
    signs written in (decide_ensemble with the layout), read over the quarter turns when
    needs_turns says so; `grey` a callable giving working_grey's picture then (it is read again
    only for those). passes: the members' (logits, features, ckpt) for marks.crops when already
    computed (predict batches them). run: what computes a member's (logits, features) for crops,
    `forward` unless given (serve.py's takes its lock)."""
    run = run or forward
    passes = passes if passes is not None else [(*run(marks.crops, model, ckpt), ckpt) for model, ckpt in members]
    answer = decide_ensemble(passes, topk, marks.crops, marks.layout)
    if grey is not None and needs_turns(answer, marks):
        return read_turned(grey(), members, topk, answer, marks, run)
    return answer, marks.crops


def needs_turns(answer: dict, marks: Marks) -> bool:
    """Whether the quarter turns are worth reading: a picture (not a thumbnail) of one mark that
    is wider than tall (Marks.wide: a digit lying on its side), or read upright as a digit under
    TURN_SURE. An unsure mark of a digit's shape is not turned (a letter on its side reads as a
    digit too surely), nor a digit read at TURN_SURE or more."""
    if marks.thumb or answer["status"] == "no_digit" or len(marks.layout) != 1:
        return False  # a thumbnail, a blank, or a row of marks read upright (a sideways row stands as one mark)
    if answer["status"] == "unsure":  # a letter or a shape is unsure too, and often reads as a digit on its side
        return marks.wide
    return answer["status"] == "ok" and (marks.wide or answer["probability"] < TURN_SURE)


def _said(a: dict):
    return a["number"] if a["status"] == "several_digits" else a["digit"]


def read_turned(grey: np.ndarray, members: list, topk: int, upright: dict, marks: Marks,
                run=None) -> tuple[dict, list[np.ndarray]]:
    """The reading of a picture with no EXIF orientation over its four quarter turns -> (answer,
    crops). `upright` and `marks` are the reading as given. An accepted upright reading of a digit
    that is not lying wide stands unless both sideways turns (90 and 270) are read at TURN_STRONG
    or more: then the picture is sideways, and the turn is read when both say the same digit
    (unsure, reason "orientation", when they do not: a 6 and a 9). Otherwise a turn is read instead, with `turned`
    the degrees (counter-clockwise) the picture was turned, when it singles itself out: its answer
    is accepted at TURN_STRONG or more (and does not leave one digit lying on its side), the
    opposite turn reads the same (a digit on its side is read once upright and once upside down,
    and only 0, 1, 8 and a few 5s read the same both ways; a letter on its side seldom does), and
    an accepted upright answer is TURN_OVERRIDE times less sure (in 1 - probability). Another
    accepted turn reading something else nearly as surely (1 - probability within TURN_MARGIN
    times the best's: a 6 or a 9 on its side) makes the answer unsure, reason "orientation",
    with `turns` {degrees: reading}. A turn read as 1s only is never taken (a dash is not a 1 on its
    side). Otherwise the upright answer stands."""
    readings = {0: (upright, marks)}
    for k in (1, 2, 3):
        m = prepare_marks(np.ascontiguousarray(np.rot90(grey, k)))
        passes = [(*(run or forward)(m.crops, model, ckpt), ckpt) for model, ckpt in members]
        readings[90 * k] = (decide_ensemble(passes, topk, m.crops, m.layout), m)
    # A turn read as 1s only is no evidence of a turn: a straight stroke lying flat is a dash (or a
    # "=") as readily as a 1 on its side, so a sideways 1 stays as read upright.
    sure = {d: a for d, (a, m) in readings.items() if a["status"] in ("ok", "several_digits") and (d == 0 or not m.wide)
            and (d == 0 or set(str(_said(a))) - set("-.,") != {"1"})}
    if not sure:
        return upright, marks.crops
    if 0 in sure and not marks.wide:  # read upright, and shaped like an upright digit
        side = [sure.get(90), sure.get(270)]
        if not all(a is not None and a["probability"] >= TURN_STRONG for a in side):
            return upright, marks.crops
        if _said(side[0]) != _said(side[1]):  # a 6 and a 9 on its side
            return ({**upright, "status": "unsure", "digit": None, "number": None, "reason": "orientation",
                     "turns": {d: _said(a) for d, a in sure.items()}}, marks.crops)
        deg = 90 if side[0]["probability"] >= side[1]["probability"] else 270
        return {**sure[deg], "turned": deg}, readings[deg][1].crops
    deg = max(sure, key=lambda d: sure[d]["probability"])
    best = sure[deg]
    if deg == 0:
        return upright, marks.crops
    doubt = max(1.0 - best["probability"], 1e-6)
    if 0 in sure and 1.0 - upright["probability"] < TURN_OVERRIDE * doubt:
        return upright, marks.crops  # the upright reading stands
    opposite = sure.get((deg + 180) % 360)
    agree = best["probability"] >= TURN_STRONG and opposite is not None and _said(opposite) == _said(best)
    rival = any(_said(a) != _said(best) and 1.0 - a["probability"] <= TURN_MARGIN * doubt for a in sure.values())
    if not agree or rival:  # no turn singles itself out
        return ({**upright, "status": "unsure", "digit": None, "number": None, "turns": {d: _said(a) for d, a in sure.items()},
                 "reason": upright["reason"] if upright["status"] == "unsure" else "orientation"}, marks.crops)
    return {**best, "turned": deg}, readings[deg][1].crops


# -----------------------------------------------------------------------------
# The command line


def expand(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and globs, in the order given."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in item for ch in "*?["):  # ** also matches the folder itself; only image files are taken
            paths += [q for q in map(Path, sorted(glob.glob(item, recursive=True))) if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES]
        else:
            paths.append(p)
    return paths


def predict(paths: list[Path], model, ckpt: dict | None = None, topk: int = 3, show_dir=None) -> list[dict]:
    """One dict per file: {file, status, digit, probability, topk, number, digits} or
    {file, status: "error", error}. A file that cannot be read costs only itself.
    `model`, `ckpt`: one model and its checkpoint dict (or, as before, just its "normalization"
    dict); or `model` a list of (model, ckpt) pairs and no ckpt: their ensemble (decide_ensemble)."""
    from PIL import Image

    members = model if ckpt is None else [(model, ckpt if "normalization" in ckpt else {"normalization": ckpt})]
    read: list[tuple[Path, Marks | ImageError]] = []  # (path, its marks or the error)
    for path in paths:
        try:
            read.append((path, prepare_marks(working_grey(read_image(path)))))
        except ImageError as e:
            read.append((path, e))
    # One forward pass per member for every crop of every file (batches of 512): far faster than one per file.
    flat = [c for _, marks in read if isinstance(marks, Marks) for c in marks.crops]
    passes = []  # per member: (logits (N, 10), features (N, F) or None, ckpt)
    for m, ck in members:
        outs = [forward(flat[i:i + 512], m, ck) for i in range(0, len(flat), 512)]
        passes.append((torch.cat([o[0] for o in outs] or [torch.zeros(0, 10)]),
                       torch.cat([o[1] for o in outs]) if outs and all(o[1] is not None for o in outs) else None, ck))
    results, at = [], 0
    for path, marks in read:
        if isinstance(marks, ImageError):
            results.append({"file": str(path), "status": "error", "digit": None, "reason": None, "probability": None, "topk": [],
                            "number": None, "digits": [], "error": str(marks)})
            continue
        part = slice(at, at + len(marks.crops))
        answer, crops = answer_marks(marks, members, topk, lambda: working_grey(read_image(path)),  # read again if turned
                                     [(lg[part], None if ft is None else ft[part], ck) for lg, ft, ck in passes])
        at += len(marks.crops)
        r = {"file": str(path), **answer}
        if show_dir:
            Path(show_dir).mkdir(parents=True, exist_ok=True)
            seen = Path(show_dir) / f"{path.stem}_28x28.png"
            strip = np.hstack(crops) if crops else np.zeros((28, 28), np.float32)
            Image.fromarray((strip * 255).round().astype(np.uint8)).save(seen)
            r["seen"] = str(seen)
        results.append(r)
    return results


UNSURE_WORDS = {  # why a crop is "unsure": the answer's `reason`
    "probability": "not confidently a digit: its calibrated probability is under the checkpoint's threshold",
    "digit_score": "does not look like a digit to the rejector, the checkpoint's digit/non-digit check",
    "shape": "a stroke with a dot above or below it, like ?, !, i or j: not a digit",
    "mark": "a mark beside the digits that is neither a digit nor a sign in its place (a decimal point, a comma, a minus)",
    "orientation": "the picture reads as different digits turned different ways (a 6 or a 9 on its side)"}


def describe(r: dict) -> str:
    """One line of text for one result."""
    if r["status"] == "error":
        return f"{r['file']}: error: {r['error']}"
    if r["status"] == "no_digit":
        return f"{r['file']}: no digit (the image has no ink)"
    turned = f"; read with the picture turned {r['turned']} degrees counter-clockwise" if r.get("turned") else ""
    if r["status"] == "several_digits":
        each = ", ".join(f"{d['digit']} {d['probability']:.3f}" for d in r["digits"])
        return f"{r['file']}: the number {r['number']} (probability of each digit: {each}{turned})"
    alts = ", ".join(f"{d} {q:.3f}" for d, q in r["topk"][1:])
    if r["status"] == "unsure":
        if r.get("reason") in ("mark", "orientation"):
            return f"{r['file']}: unsure: {UNSURE_WORDS[r['reason']]}"
        if r["digits"]:
            each = ", ".join(f"{d['topk'][0][0] if d.get('topk') else d['digit']} {d['probability']:.3f}"
                             + ("" if d["status"] == "ok" else " refused") for d in r["digits"])
            return f"{r['file']}: unsure: {len(r['digits'])} marks, not all read as digits (each mark's closest digit: {each})"
        return (f"{r['file']}: unsure: {UNSURE_WORDS.get(r.get('reason'), 'not confidently a digit')}; the closest digit "
                f"is {r['topk'][0][0]}, probability {r['probability']:.3f}" + (f"; next: {alts}" if alts else ""))
    return f"{r['file']}: {r['digit']} (probability {r['probability']:.3f}" + (f"; next: {alts}" if alts else "") + turned + ")"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a one-line usage error otherwise, never a traceback)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Predict the digit(s) in image files (any format Pillow reads). "
                                            "Exit 0 when every file was read (a refusal is an answer), 1 otherwise.")
    p.add_argument("images", nargs="*", help="image files, folders or globs")
    p.add_argument("--weights", nargs="+", action="extend",
                   help="checkpoint written by train.py (default: weights/convnet.pt, from this repository when not here); "
                        "several (--weights a.pt b.pt, as test_model.py takes them, or --weights repeated): their "
                        "ensemble (mean calibrated probability, every rejector must accept)")
    p.add_argument("--topk", type=positive_int, default=3,
                   help="how many of the most probable digits to report per image, best first (default: %(default)s); "
                        "the text output shows the best and, after 'next:', the others")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    p.add_argument("--show", metavar="DIR", help="save the 28x28 crop(s) the model saw, per file")
    a = p.parse_args(argv)
    # images written after --weights (python predict.py --weights a.pt photo.jpg) are images, not checkpoints
    a.images += [w for w in a.weights or [] if Path(w).suffix.lower() in IMAGE_SUFFIXES]
    a.weights = [w for w in a.weights or [] if Path(w).suffix.lower() not in IMAGE_SUFFIXES]
    if not a.images:
        p.error("give one or more image files, folders or globs: python predict.py photo.jpg [--weights weights/convnet.pt]")
    from PIL import Image
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # 100-200 MP: read_image's own limit decides
    if not a.weights:  # the default, this repository's when run from another folder
        here = Path("weights/convnet.pt")
        a.weights = [str(here if here.exists() else Path(__file__).resolve().parent / here)]
    try:
        members = [load_checkpoint(w) for w in a.weights]
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    paths = expand(a.images)
    if not paths:
        sys.exit(f"error: no image files found in {' '.join(a.images)}")
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    results = predict(paths, members, None, a.topk, a.show)
    for r in results:
        if r["status"] == "error":
            print(f"error: {r['error']}", file=sys.stderr)
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if r["status"] != "error":
                print(describe(r))
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
