"""Robustness benchmark: MNIST test digits turned into the files people really have (our MNIST-C).

    python benchmarks/user_images.py             # every condition x 100 digits, every shipped model, + the MNIST check
    python benchmarks/user_images.py --quick     # 3 images per condition (one 12 MP photo), convnet only, no MNIST check (CI)
    python benchmarks/user_images.py --mnist 0   # skip the 10,000-PNG MNIST test-split check
    python benchmarks/user_images.py --mnist-only   # only the MNIST check, printed (writes nothing)

Each condition is a generator (`CONDITIONS`): a 28x28 MNIST test digit (uint8, white on
black) and a random generator -> the bytes of an image file (PNG or JPEG, with EXIF, 16-bit,
alpha, ... as a user's file would be). Every file goes through the product's own path,
predict.read_image -> prepare -> model -> decide (with the checkpoint's calibration), once
per condition and image; each shipped model then scores the same crops. A digit counts as
right when the answer is "ok" with the right digit (or "several_digits" with the right
number); a refusal is "unsure" or "no_digit". For the non-digit conditions a refusal is
the right answer. The non-digits here use the Liberation fonts and other seeds than
calibrate.py, which chose the threshold on DejaVu letters.

The MNIST check writes all 10,000 test digits as 28x28 PNGs to a temporary folder and reads
them back with predict.predict, for the accuracy and the share accepted.
Results: benchmarks/results/user_images.json and .md (the table that README and report show).
"""

import argparse
import datetime
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

import calibrate  # noqa: E402
import predict  # noqa: E402
from data import load_raw, resolve_data_dir  # noqa: E402
from models import load_checkpoint  # noqa: E402
from runs import sha256  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHIPPED = [m for m in ("convnet", "resnet", "fastresnet", "quicknet", "dnn") if (ROOT / "weights" / f"{m}.pt").exists()]
DEFAULT_MODEL = "convnet"


# -----------------------------------------------------------------------------
# From an MNIST digit to a user's file


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def ink_mask(d: np.ndarray, rng, px: int) -> np.ndarray:
    """The digit (28, 28) uint8 white-on-black enlarged to px x px, as ink strength (px, px) in [0, 1]."""
    img = Image.fromarray(d).resize((px, px), Image.BICUBIC)
    return np.clip(np.asarray(img, np.float32) / 255.0, 0, 1)


def on_paper(d, rng, size=(600, 800), digit_px=None, paper=(236, 228, 214), ink=(35, 35, 45), where=None):
    """An RGB float image (H, W, 3) in 0..255: the digit written in `ink` on `paper`."""
    h, w = size
    px = digit_px or int(rng.integers(int(0.15 * h), int(0.3 * h)))
    m = ink_mask(d, rng, px)
    img = np.ones((h, w, 3), np.float32) * np.array(paper, np.float32)
    y0, x0 = where or (int(rng.integers(h // 5, h - px - h // 5)), int(rng.integers(w // 5, w - px - w // 5)))
    m3 = m[..., None]
    img[y0:y0 + px, x0:x0 + px] = img[y0:y0 + px, x0:x0 + px] * (1 - m3) + np.array(ink, np.float32) * m3
    return img


def photo(img: np.ndarray, rng, light=None, noise=3.0) -> np.ndarray:
    """Multiply by a light field (H, W) and add sensor noise."""
    if light is not None:
        img = img * light[..., None]
    return np.clip(img + rng.normal(0, noise, img.shape), 0, 255)


def gradient_light(h, w, rng, depth):
    """Light falling by `depth` across the page, in a random direction."""
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (np.cos(a) * (xx / w - 0.5) + np.sin(a) * (yy / h - 0.5)) + 0.5
    return 1 - depth * np.clip(t, 0, 1)


def shadow_light(h, w, rng, depth=0.45):
    """A soft-edged shadow over one side of the page (over part of the digit, often)."""
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = np.cos(a) * (xx - w / 2) + np.sin(a) * (yy - h / 2) - rng.uniform(-0.1, 0.15) * min(h, w)
    soft = rng.uniform(0.02, 0.08) * min(h, w)
    return 1 - depth * (1 / (1 + np.exp(-t / soft)))


def to_jpeg(img: np.ndarray, quality=90, exif_orientation=None) -> bytes:
    im = Image.fromarray(img.astype(np.uint8))
    kw = {}
    if exif_orientation:
        ex = Image.Exif()
        ex[0x0112] = exif_orientation
        kw["exif"] = ex.tobytes()
    return encode(im, "JPEG", quality=quality, **kw)


def c_even(d, rng):
    return to_jpeg(photo(on_paper(d, rng), rng))


def c_gradient(d, rng):
    img = on_paper(d, rng)
    return to_jpeg(photo(img, rng, gradient_light(*img.shape[:2], rng, rng.uniform(0.3, 0.6))))


def c_shadow(d, rng):
    img = on_paper(d, rng)
    return to_jpeg(photo(img, rng, shadow_light(*img.shape[:2], rng, rng.uniform(0.35, 0.55))))


def c_faint_pencil(d, rng):
    return to_jpeg(photo(on_paper(d, rng, paper=(210, 210, 212), ink=(150, 150, 155)), rng))


def lines_paper(d, rng, squared: bool):
    h, w = 600, 800
    img = on_paper(d, rng, (h, w), paper=(250, 250, 248), ink=tuple(rng.choice([(20, 30, 120), (25, 25, 30)])))
    step = int(rng.integers(22, 36))
    colour = np.array((150, 175, 225) if not squared else (190, 190, 190), np.float32)
    off = int(rng.integers(0, step))
    lw = int(rng.integers(1, 3))
    under = img.copy()
    for y in range(off, h, step):
        img[y:y + lw] = np.minimum(img[y:y + lw], colour)
    if squared:
        for x in range(off, w, step):
            img[:, x:x + lw] = np.minimum(img[:, x:x + lw], colour)
    else:
        x = int(rng.integers(40, 120))
        img[:, x:x + 2] = np.minimum(img[:, x:x + 2], np.array((225, 90, 90), np.float32))
    img = np.minimum(img, under)  # the ink stays on top of the lines
    return to_jpeg(photo(img, rng, noise=2.0))


def c_ruled(d, rng):
    return lines_paper(d, rng, squared=False)


def c_squared(d, rng):
    return lines_paper(d, rng, squared=True)


def c_exif(d, rng):
    """A portrait photo stored sideways: the pixels rotated, the EXIF orientation to undo it."""
    img = Image.fromarray(photo(on_paper(d, rng, (400, 300)), rng).astype(np.uint8))
    orientation = int(rng.choice([3, 6, 8]))
    # The inverse of what Pillow's exif_transpose does for the tag (6: turn 90 clockwise to view).
    stored = img.transpose({3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation])
    return to_jpeg(np.asarray(stored), exif_orientation=orientation)


def c_bit16(d, rng):
    m = ink_mask(d, rng, 112)
    dark_on_light = rng.random() < 0.5
    top = int(rng.choice([65535, 4095]))  # 16-bit, or 12-bit in 16
    a = (1 - m if dark_on_light else m) * top
    return encode(Image.fromarray(a.astype(np.uint16)), "PNG")


def canvas(d, rng, px=280):
    m = ink_mask(d, rng, int(px * 0.7))
    out = np.zeros((px, px), np.float32)
    o = (px - m.shape[0]) // 2 + rng.integers(-20, 21, 2)
    out[o[0]:o[0] + m.shape[0], o[1]:o[1] + m.shape[1]] = m
    return out


def c_white_on_clear(d, rng):
    a = canvas(d, rng)
    rgba = np.dstack([np.full(a.shape, 255, np.float32)] * 3 + [a * 255]).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def c_black_on_clear(d, rng):
    a = canvas(d, rng)
    rgba = np.dstack([np.zeros(a.shape, np.float32)] * 3 + [a * 255]).astype(np.uint8)
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def c_canvas_black(d, rng):
    return encode(Image.fromarray((canvas(d, rng) * 255).astype(np.uint8)), "PNG")


def c_colour_pen(d, rng):
    ink = tuple(int(v) for v in rng.choice([(200, 30, 30), (30, 120, 40), (30, 60, 200), (120, 40, 160)]))
    return to_jpeg(photo(on_paper(d, rng, paper=(250, 250, 250), ink=ink), rng, noise=2.0))


def c_thick(d, rng):
    img = Image.fromarray(d).filter(ImageFilter.MaxFilter(3))
    return c_even(np.asarray(img), rng)


def c_thin(d, rng):
    img = Image.fromarray(d).resize((112, 112), Image.BICUBIC).filter(ImageFilter.MinFilter(5)).resize((28, 28), Image.LANCZOS)
    return c_even(np.asarray(img), rng)


def c_specks(d, rng):
    img = on_paper(d, rng, paper=(245, 245, 245))
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(5, 15))):
        y, x, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(1, 4))
        img[max(0, y - r):y + r, max(0, x - r):x + r] = 40
    return to_jpeg(photo(img, rng))


def c_off_centre(d, rng):
    h, w = 600, 800
    px = int(rng.integers(80, 160))
    return to_jpeg(photo(on_paper(d, rng, (h, w), px, where=(int(rng.integers(5, h - px - 5)), int(rng.integers(5, w // 4)))), rng))


def c_small_in_photo(d, rng):
    return to_jpeg(photo(on_paper(d, rng, (900, 1200), int(rng.integers(40, 70))), rng))


def c_thumbnail(d, rng):
    side = int(rng.integers(12, 17))
    return encode(Image.fromarray(255 - d).resize((side, side), Image.BOX), "PNG")


def c_tiny8(d, rng):
    return encode(Image.fromarray(255 - d).resize((8, 8), Image.BOX), "PNG")


def c_phone_12mp(d, rng):
    img = on_paper(d, rng, (3024, 4032), int(rng.integers(500, 900)))
    return to_jpeg(photo(img, rng, gradient_light(3024, 4032, rng, 0.3)), quality=85)


# Conditions with several digits take three consecutive test digits.
def c_two_digits(ds, rng):
    return _row(ds[:2], rng)


def c_three_digits(ds, rng):
    return _row(ds[:3], rng)


def _row(ds, rng):
    h, w = 400, 900
    img = np.ones((h, w, 3), np.float32) * 245
    px = 140
    x = int(rng.integers(40, 120))
    for d in ds:
        m = ink_mask(d, rng, px)[..., None]
        y = int(rng.integers(100, 150))
        img[y:y + px, x:x + px] = img[y:y + px, x:x + px] * (1 - m) + 30 * m
        x += int(px * rng.uniform(0.75, 0.95))
    return to_jpeg(photo(img, rng))


# Forms: printed structure around the digits, signs, pictures turned without EXIF. A digit is written
# at 90-150 px in a dark pen of random width over printed structure of random size and weight.
def _form(h: int, w: int, rng):
    """A blank form page: (paper RGB (h, w, 3) float, a draw surface "L" for the printed structure)."""
    paper = np.ones((h, w, 3), np.float32) * np.array((246, 246, 243), np.float32)
    return paper, Image.new("L", (w, h), 0)


def _print(paper, printed: Image.Image, colour=None):
    """Printed structure (ink strength in `printed`, 0..255) laid on the paper in a printing colour."""
    m = np.asarray(printed, np.float32)[..., None] / 255.0
    colour = np.array(colour if colour is not None else (40, 40, 45), np.float32)
    return paper * (1 - m) + colour * m


def _write(paper, d, rng, px: int, y: int, x: int, pen=None):
    """The digit d (28, 28) written at px x px with its box's corner at (y, x); the pen's width varies."""
    img = Image.fromarray(d)
    grow = int(rng.integers(-1, 2))  # a finer or a broader pen
    if grow:
        img = img.resize((112, 112), Image.BICUBIC).filter(ImageFilter.MaxFilter(5) if grow > 0 else ImageFilter.MinFilter(3)) \
            .resize((28, 28), Image.LANCZOS)
    m = ink_mask(np.asarray(img), rng, px)[..., None]
    pen = np.array(pen if pen is not None else tuple(rng.choice([(25, 25, 30), (20, 30, 120), (30, 30, 90)])), np.float32)
    paper[y:y + px, x:x + px] = paper[y:y + px, x:x + px] * (1 - m) + pen * m
    return paper


def _ink_box(d, px: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the digit's ink in its px x px square."""
    rows, cols = np.nonzero(d.any(1))[0], np.nonzero(d.any(0))[0]
    k = px / 28
    return int(rows[0] * k), int((rows[-1] + 1) * k), int(cols[0] * k), int((cols[-1] + 1) * k)


def c_box(d, rng):
    """A digit in a printed box: tight to loose (a margin of 4-35% of the digit), lines 1-4 px."""
    h, w = 500, 500
    paper, printed = _form(h, w, rng)
    px = int(rng.integers(90, 150))
    y, x = (h - px) // 2, (w - px) // 2
    t, b, l, r = _ink_box(d, px)
    margin = int(rng.uniform(0.04, 0.35) * px)
    ImageDraw.Draw(printed).rectangle([x + l - margin, y + t - margin, x + r + margin, y + b + margin], outline=255,
                                      width=int(rng.integers(1, 5)))
    paper = _print(paper, printed, rng.choice([(40, 40, 45), (120, 120, 125), (70, 90, 160)]))
    return to_jpeg(photo(_write(paper, d, rng, px, y, x), rng, noise=2.0))


def c_comb(d, rng):
    """A comb field: a baseline with a tick at each end, the digit standing in it."""
    h, w = 500, 500
    paper, printed = _form(h, w, rng)
    px = int(rng.integers(90, 150))
    y, x = (h - px) // 2, (w - px) // 2
    t, b, l, r = _ink_box(d, px)
    gap, lw = int(rng.uniform(0.03, 0.15) * px), int(rng.integers(1, 4))
    base, tick = y + b + gap, int(rng.uniform(0.2, 0.5) * px)
    x0, x1 = x + l - int(rng.uniform(0.05, 0.3) * px), x + r + int(rng.uniform(0.05, 0.3) * px)
    draw = ImageDraw.Draw(printed)
    draw.line([x0, base, x1, base], fill=255, width=lw)
    for xt in (x0, x1):
        draw.line([xt, base - tick, xt, base], fill=255, width=lw)
    return to_jpeg(photo(_write(_print(paper, printed), d, rng, px, y, x), rng, noise=2.0))


def c_circle(d, rng):
    """A circle or ellipse drawn around the digit, clear of it, 2-8 px wide."""
    h, w = 500, 500
    paper, printed = _form(h, w, rng)
    px = int(rng.integers(90, 140))
    y, x = (h - px) // 2, (w - px) // 2
    t, b, l, r = _ink_box(d, px)
    cy, cx = y + (t + b) / 2, x + (l + r) / 2
    ry = (b - t) / 2 * rng.uniform(1.3, 1.7)
    rx = max((r - l) / 2 * rng.uniform(1.5, 2.2), 0.75 * ry)
    ImageDraw.Draw(printed).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], outline=255, width=int(rng.integers(2, 9)))
    pen = tuple(rng.choice([(25, 25, 30), (20, 30, 120), (160, 30, 30)]))
    return to_jpeg(photo(_write(_print(paper, printed, pen), d, rng, px, y, x), rng, noise=2.0))


def c_underline(d, rng):
    """A line under the digit, with a gap: 2-14 px thick, 0.8-1.6 times its width, up to 4 degrees off level."""
    h, w = 500, 500
    paper, printed = _form(h, w, rng)
    px = int(rng.integers(90, 150))
    y, x = (h - px) // 2, (w - px) // 2
    t, b, l, r = _ink_box(d, px)
    cx, half = x + (l + r) / 2, max(r - l, px / 2) * rng.uniform(0.4, 0.8)
    yl = y + b + rng.uniform(0.05, 0.2) * px
    tilt = np.tan(np.radians(rng.uniform(-4, 4))) * half
    ImageDraw.Draw(printed).line([cx - half, yl - tilt, cx + half, yl + tilt], fill=255, width=int(rng.integers(2, 15)))
    return to_jpeg(photo(_write(_print(paper, printed), d, rng, px, y, x), rng, noise=2.0))


def c_box_row(ds, rng):
    """Three digits in a joined row of printed boxes (a form's ID field): read left to right."""
    px = int(rng.integers(80, 120))
    cell = int(px * rng.uniform(1.1, 1.4))
    h, w = 400, 3 * cell + 200
    paper, printed = _form(h, w, rng)
    x0, y0, lw = 100, (h - cell) // 2, int(rng.integers(1, 4))
    draw = ImageDraw.Draw(printed)
    draw.rectangle([x0, y0, x0 + 3 * cell, y0 + cell], outline=255, width=lw)
    for k in (1, 2):
        draw.line([x0 + k * cell, y0, x0 + k * cell, y0 + cell], fill=255, width=lw)
    paper = _print(paper, printed)
    pen = tuple(rng.choice([(25, 25, 30), (20, 30, 120)]))
    for k, d in enumerate(ds):
        paper = _write(paper, d, rng, px, y0 + (cell - px) // 2, x0 + k * cell + (cell - px) // 2, pen)
    return to_jpeg(photo(paper, rng, noise=2.0))


def _number(ds, rng, sign: str):
    """Digits written in a row with a sign: "." or "," between the first two, "-" before the first."""
    h, w = 360, 900
    paper = np.ones((h, w, 3), np.float32) * 245
    px = int(rng.integers(90, 140))
    y, x = (h - px) // 2, 80
    pen = np.array(tuple(rng.choice([(25, 25, 30), (20, 30, 120)])), np.float32)
    draw_sign = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(draw_sign)
    stroke = int(rng.integers(6, 12)) * px // 120
    if sign == "-":
        t, b, _, _ = _ink_box(ds[0], px)
        length, ym = int(rng.uniform(0.25, 0.45) * px), y + (t + b) // 2 + int(rng.integers(-px // 12, px // 12 + 1))
        d.line([x, ym, x + length, ym], fill=255, width=max(3, stroke))
        x += length + int(rng.uniform(0.05, 0.2) * px) - _ink_box(ds[0], px)[2]
        paper = _write(paper, ds[0], rng, px, y, x, pen)
    else:
        paper = _write(paper, ds[0], rng, px, y, x, pen)
        t, b, l, r = _ink_box(ds[0], px)
        gap = int(rng.uniform(0.08, 0.2) * px)
        dot = max(4, int(stroke * rng.uniform(1.0, 1.6)))
        xs, yb = x + r + gap, y + b
        if sign == ".":
            d.ellipse([xs, yb - dot, xs + dot, yb], fill=255)
        else:
            d.line([xs + dot, yb - dot, xs + dot // 3, yb + dot], fill=255, width=max(3, dot * 2 // 3))
        x2 = xs + dot + gap - _ink_box(ds[1], px)[2]
        paper = _write(paper, ds[1], rng, px, y, x2, pen)
    m = np.asarray(draw_sign, np.float32)[..., None] / 255.0
    paper = paper * (1 - m) + pen * m
    return to_jpeg(photo(paper, rng, noise=2.0))


def c_decimal(ds, rng):
    return _number(ds[:2], rng, ".")


def c_decimal_comma(ds, rng):
    return _number(ds[:2], rng, ",")


def c_negative(ds, rng):
    return _number(ds[:1], rng, "-")


def _turned(d, rng, turns: tuple[int, ...]):
    """A photo of the digit stored turned by a quarter turn of `turns`, with no EXIF tag."""
    img = Image.fromarray(photo(on_paper(d, rng, (400, 300)), rng).astype(np.uint8))
    k = int(rng.choice(turns))
    return to_jpeg(np.asarray(img.rotate(90 * k, expand=True)))


def c_turned_sideways(d, rng):
    return _turned(d, rng, (1, 3))


def c_turned_upside_down(d, rng):
    return _turned(d, rng, (2,))


def n_empty_box(_, rng):
    """An empty printed box (a form field left blank)."""
    paper, printed = _form(400, 400, rng)
    side = int(rng.integers(80, 200))
    o = (400 - side) // 2
    ImageDraw.Draw(printed).rectangle([o, o, o + side, o + int(side * rng.uniform(0.9, 1.3))], outline=255,
                                      width=int(rng.integers(1, 5)))
    return to_jpeg(photo(_print(paper, printed), rng, noise=2.0))


def n_empty_circle(_, rng):
    """An empty printed circle or ellipse (a choice left unmarked)."""
    paper, printed = _form(400, 400, rng)
    rx = int(rng.integers(40, 130))
    ry = int(rx * rng.uniform(0.8, 1.25))
    ImageDraw.Draw(printed).ellipse([200 - rx, 200 - ry, 200 + rx, 200 + ry], outline=255, width=int(rng.integers(1, 7)))
    return to_jpeg(photo(_print(paper, printed), rng, noise=2.0))


# Non-digits (the right answer is a refusal).
def n_blank(_, rng):
    kind = rng.integers(3)
    if kind == 0:
        return to_jpeg(photo(np.full((600, 800, 3), 235, np.float32), rng, gradient_light(600, 800, rng, 0.3)))
    if kind == 1:
        return encode(Image.new("L", (280, 280), 0), "PNG")
    return encode(Image.new("RGBA", (280, 280), (0, 0, 0, 0)), "PNG")


def n_letters(i, rng):
    img = calibrate.non_digits(1, seed=1000 + int(i) * 4, family="Liberation")[0]  # kind 0: a letter or symbol
    return encode(img, "PNG")


def n_shapes_scribbles(i, rng):
    img = calibrate.non_digits(3, seed=5000 + int(i), family="Liberation")[1 + int(i) % 2]
    return encode(img, "PNG")


def n_signs_alone(i, rng):
    """A sign written alone with a pen: a dash, an =, a + or an x (i modulo 4), 80-200 px long with
    6-20 px strokes on a 280 x 280 black canvas, tilted up to 6 degrees; that canvas as a PNG, or
    shrunk onto paper in a photo (on_paper's size)."""
    side, length, pen = 280, int(rng.integers(80, 200)), int(rng.integers(6, 21))
    img = Image.new("L", (side, side), 0)
    draw, c, h = ImageDraw.Draw(img), side / 2, length / 2
    kind = int(i) % 4
    if kind in (0, 1):  # a dash, or an = (two bars a third of their length apart)
        for y in ([c] if kind == 0 else [c - length / 6, c + length / 6]):
            draw.line([(c - h, y), (c + h, y)], fill=255, width=pen)
    else:  # a +, or an x
        k = h if kind == 2 else h / 2 ** 0.5
        ends = [((c - h, c), (c + h, c)), ((c, c - h), (c, c + h))] if kind == 2 else \
               [((c - k, c - k), (c + k, c + k)), ((c - k, c + k), (c + k, c - k))]
        for a, b in ends:
            draw.line([a, b], fill=255, width=pen)
    img = img.rotate(float(rng.uniform(-6, 6)), resample=Image.BILINEAR)
    if rng.random() < 0.5:
        return encode(img, "PNG")
    return to_jpeg(photo(on_paper(np.asarray(img), rng, (400, 400)), rng))


CONDITIONS = {
    # name: (generator, kind, note); kind: "control" (the plain cases), "digit" (a kind of picture people send), "several", "none",
    # "form" (printed structure around one digit), "number" (signs written with digits), "turned" (no EXIF)
    "canvas_black": (c_canvas_black, "control", "white digit on a black 280x280 canvas (PNG)"),
    "even_light": (c_even, "control", "phone photo, even light"),
    "faint_pencil": (c_faint_pencil, "control", "faint pencil on grey paper"),
    "colour_pen": (c_colour_pen, "control", "red, green, blue or purple ink"),
    "thick_marker": (c_thick, "control", "strokes dilated 3x3"),
    "thin_pen": (c_thin, "control", "strokes eroded"),
    "specks": (c_specks, "control", "5-15 dark specks on the page"),
    "off_centre": (c_off_centre, "control", "digit near the edge"),
    "black_on_clear": (c_black_on_clear, "control", "RGBA, black ink, transparent canvas"),
    "gradient_light": (c_gradient, "digit", "light falling 30-60% across the page"),
    "shadow": (c_shadow, "digit", "a soft shadow over part of the page"),
    "ruled_paper": (c_ruled, "digit", "blue ruled lines + red margin"),
    "squared_paper": (c_squared, "digit", "grey grid"),
    "exif_rotated": (c_exif, "digit", "JPEG stored sideways or upside down, EXIF orientation 3/6/8"),
    "bit16": (c_bit16, "digit", "16-bit or 12-bit-in-16 greyscale PNG, either polarity"),
    "white_on_clear": (c_white_on_clear, "digit", "RGBA, ink in the alpha, RGB white"),
    "small_in_photo": (c_small_in_photo, "digit", "a 40-70 px digit in a 1200x900 photo"),
    "thumbnail_12_16": (c_thumbnail, "digit", "12-16 px thumbnail"),
    "tiny8": (c_tiny8, "digit", "8x8 thumbnail"),
    "phone_12mp": (c_phone_12mp, "digit", "4032x3024 JPEG (drafted on decode)"),
    "two_digits": (c_two_digits, "several", "two digits side by side"),
    "three_digits": (c_three_digits, "several", "three digits side by side"),
    "box": (c_box, "form", "a digit in a printed box, margin 4-35%, lines 1-4 px"),
    "comb": (c_comb, "form", "a comb field under the digit"),
    "circle": (c_circle, "form", "a circle or ellipse around the digit, 2-8 px"),
    "underline": (c_underline, "form", "a line under the digit, 2-14 px, tilted up to 4 degrees"),
    "box_row": (c_box_row, "several", "three digits in a joined row of printed boxes"),
    "decimal_point": (c_decimal, "number", "two digits with a decimal point, e.g. 3.5"),
    "decimal_comma": (c_decimal_comma, "number", "two digits with a decimal comma, e.g. 3,5"),
    "negative": (c_negative, "number", "a minus sign and a digit, e.g. -7"),
    "turned_sideways": (c_turned_sideways, "turned", "a photo stored turned 90 or 270 degrees, no EXIF"),
    "turned_upside_down": (c_turned_upside_down, "turned", "a photo stored turned 180 degrees, no EXIF (6 and 9 swap)"),
    "empty_box": (n_empty_box, "none", "an empty printed box"),
    "empty_circle": (n_empty_circle, "none", "an empty printed circle or ellipse"),
    "blank": (n_blank, "none", "blank photo, black canvas, transparent canvas"),
    "letters_symbols": (n_letters, "none", "letters and symbols, Liberation fonts"),
    "shapes_scribbles": (n_shapes_scribbles, "none", "shapes and scribbles"),
    "signs_alone": (n_signs_alone, "none", "a sign written alone: a dash, =, + or x"),
}
HEAVY = {"phone_12mp": 10}  # at most this many images (each is a 12 MP JPEG to encode)
NUMBER_DIGITS = {"two_digits": 2, "decimal_point": 2, "decimal_comma": 2, "negative": 1}  # digits a number takes (else 3)
NUMBER_SIGNS = {"decimal_point": ".", "decimal_comma": ",", "negative": "-"}  # how the number is written


def build(name: str, n: int, x_test: np.ndarray, y_test: np.ndarray, seed: int = 0) -> list[tuple[bytes, str]]:
    """n (file bytes, expected answer) for one condition; the answer is a digit, a number, or "none"."""
    gen, kind, _ = CONDITIONS[name]
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    idx = np.random.default_rng(seed).permutation(len(x_test))
    out = []
    for i in range(n):
        if kind == "none":
            out.append((gen(i, rng), "none"))
        elif kind in ("several", "number"):
            k = NUMBER_DIGITS.get(name, 3)
            j = idx[(k * i) % len(idx):(k * i) % len(idx) + k]
            written = "".join(str(int(y_test[t])) for t in j)
            sign = NUMBER_SIGNS.get(name)
            expected = written if sign is None else "-" + written if sign == "-" else written[0] + sign + written[1:]
            out.append((gen([x_test[t] for t in j], rng), expected))
        else:
            out.append((gen(x_test[idx[i]], rng), str(int(y_test[idx[i]]))))
    return out


def score(answer: dict, expected: str) -> tuple[bool, bool]:
    """(right, refused) for one answer."""
    refused = answer["status"] in ("unsure", "no_digit")
    if expected == "none":
        return refused, refused
    if len(expected) > 1:
        return answer["status"] == "several_digits" and answer["number"] == expected, refused
    return answer["status"] == "ok" and str(answer["digit"]) == expected, refused


def test_digits(data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's test images (10000, 28, 28) uint8 and labels (10000,), from data_dir (or $DATA_DIR)."""
    _, _, x_te, y_te, _ = load_raw("mnist", resolve_data_dir(data_dir), download=False)
    return x_te.numpy(), y_te.numpy()


def prepared(n: int, test: tuple[np.ndarray, np.ndarray], seed: int = 0, heavy: int | None = None,
             kinds: tuple[str, ...] | None = None):
    """Yields (condition, kind, note, files [(bytes, expected)], predict.Marks per file) for every
    condition (of `kinds`, default all): n images each (HEAVY ones fewer) made from `test`
    (test_digits), through read_image -> working_grey -> prepare_marks once."""
    x_te, y_te = test
    for name, (_, kind, note) in CONDITIONS.items():
        if kinds and kind not in kinds:
            continue
        files = build(name, min(n, heavy if heavy is not None and name in HEAVY else HEAVY.get(name, n)), x_te, y_te, seed)
        yield name, kind, note, files, [predict.prepare_marks(predict.working_grey(predict.read_image(b, f"{name}_{i}")))
                                        for i, (b, _) in enumerate(files)]


def run(n: int, models: list[str], seed: int = 0, data_dir=None, heavy: int | None = None) -> dict:
    """Every condition x n images through read_image -> prepare_marks once, then each model's
    answer as predict.py gives it (predict.answer_marks: the signs written in, the quarter turns
    read where needs_turns says so): {condition: {kind, note, n, models: {name: {right, refused}}}}."""
    loaded = {m: load_checkpoint(ROOT / "weights" / f"{m}.pt") for m in models}
    test, out = test_digits(data_dir), {}
    t0 = time.perf_counter()
    for name, kind, note, files, marks in prepared(n, test, seed, heavy):
        row = {"kind": kind, "note": note, "n": len(files), "models": {}}
        for m, (model, ckpt) in loaded.items():
            right = refused = 0
            for mk, (data, expected) in zip(marks, files):
                answer, _ = predict.answer_marks(mk, [(model, ckpt)], grey=lambda: predict.working_grey(predict.read_image(data)))
                r, f = score(answer, expected)
                right += r
                refused += f
            row["models"][m] = {"right": right / len(files), "refused": refused / len(files)}
        row["seconds"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        out[name] = row
        print(f"{name:18s} " + "  ".join(f"{m} {100 * v['right']:5.1f}% (refused {100 * v['refused']:4.1f}%)"
                                         for m, v in row["models"].items()), flush=True)
    return out


# -----------------------------------------------------------------------------
# Per recipe: does a recipe's accuracy travel to users' kinds of images?

RECIPES_FILE = ROOT / "results" / "final_recipes.json"
SUMMARY = ("tiny8", "thumbnail_12_16", "small_in_photo", "white_on_clear", "three_digits")  # the hardest rows first


def top_guess(crops: list[np.ndarray], model: torch.nn.Module, ckpt: dict) -> str:
    """The model's top guess for one image's crops, left to right ("" for no crop): its argmax
    alone, calibration and refusals aside, so files with and without calibration compare."""
    logits, _ = predict.forward(crops, model, ckpt)
    return "".join(str(int(i)) for i in logits.argmax(1))


def recipe_checkpoints(path: Path | None = None) -> dict[str, dict]:
    """The files to score: {label: {"model", "seed" (None for the shipped file), "path", "sha256"}}.
    Every seed of results/final_recipes.json (path; default RECIPES_FILE) whose file is on this
    machine with the sha256 recorded there (a seed trained again with the same settings: its last
    "later" training's file);
    a seed whose file is missing or differs is left out with a printed line (runs/ is not
    committed). Then weights/<model>.pt of those models, for comparison.
    Errors (SystemExit): the record is missing; no file at all to score."""
    path = path or RECIPES_FILE
    if not path.exists():
        raise SystemExit(f"error: {path} is missing; run `python study.py --only recipes` first")
    rec = json.loads(path.read_text())
    out = {}
    for m, e in rec["models"].items():
        for x in e["seeds"]:
            f = (x.get("later") or [x])[-1]
            p = ROOT / f["checkpoint"] if f.get("checkpoint") else None
            if p is None or not p.exists():
                print(f"{m} recipe seed {x['seed']}: its file is not on this machine ({f.get('checkpoint')}); left out")
                continue
            digest = sha256(p)
            if digest != f["sha256"]:
                print(f"{m} recipe seed {x['seed']}: {f['checkpoint']} is not the file recorded (sha256 differs); left out")
                continue
            out[f"{m} recipe seed {x['seed']}"] = {"model": m, "seed": x["seed"], "path": p, "sha256": digest}
    for m in rec["models"]:
        p = ROOT / "weights" / f"{m}.pt"
        if p.exists():
            out[f"{m} shipped"] = {"model": m, "seed": None, "path": p, "sha256": sha256(p)}
    if not out:
        raise SystemExit(f"error: no file of {path} is on this machine; train the recipes (`python study.py --only recipes`)")
    return out


def run_recipes(n: int, files: dict[str, dict], seed: int = 0, data_dir=None) -> dict:
    """Top-guess accuracy (top_guess == the expected digit or number) of every file on every
    digit condition (kinds control, digit, several) x n images: {condition: {kind, n, files:
    {label: accuracy}}}; the none conditions need a rejector, which refits lack, so they are left out."""
    loaded = {k: load_checkpoint(f["path"]) for k, f in files.items()}
    out = {}
    for name, kind, _, images, marks in prepared(n, test_digits(data_dir), seed, kinds=("control", "digit", "several")):
        accs = {k: sum(top_guess(mk.crops, model, ckpt) == want for mk, (_, want) in zip(marks, images)) / len(images)
                for k, (model, ckpt) in loaded.items()}
        out[name] = {"kind": kind, "n": len(images), "files": accs}
        print(f"{name:18s} " + "  ".join(f"{k} {100 * a:5.1f}%" for k, a in accs.items()), flush=True)
    return out


def keep_earlier(prev: dict | None, files: dict[str, dict], results: dict, n: int) -> dict[str, dict]:
    """The files an earlier --recipes record (prev) measured that are not here now (runs/ is not
    committed; matched by sha256): their rows are copied into results (in place) when that run
    used the same conditions and n, each labelled with the day it was measured (a row kept twice
    keeps its label; a taken label gets a number), its record dated. Returns {label: its file record}."""
    if not prev or prev.get("n_per_condition") != n or set(prev.get("conditions", {})) != set(results):
        return {}
    here = {f["sha256"] for f in files.values()}
    kept = {}
    for k, f in prev["files"].items():
        if f["sha256"] in here:
            continue
        measured = f.get("measured", prev["date"])
        label = k if "measured" in f else f"{k}, earlier file ({measured[:10]})"
        while label in files or label in kept:
            label += "'"
        kept[label] = {**f, "measured": measured}
        for c in results:
            results[c]["files"][label] = prev["conditions"][c]["files"][k]
    return kept


def recipes_table(results: dict, files: dict[str, dict]) -> str:
    """Markdown: one row per file, its mean top-guess accuracy over the conditions and on SUMMARY's."""
    cols = [c for c in SUMMARY if c in results]
    lines = ["| file | mean over conditions | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for k in files:
        mean = sum(r["files"][k] for r in results.values()) / len(results)
        lines.append(f"| {k} | {100 * mean:.1f}% | " + " | ".join(f"{100 * results[c]['files'][k]:.0f}%" for c in cols) + " |")
    return "\n".join(lines)


def mnist_check(model_name: str, n: int, data_dir=None) -> dict:
    """The first n MNIST test digits written as 28x28 PNGs, read back by predict.predict:
    {n, top1_accuracy (the top guess of single-digit answers, status aside: the model's
    accuracy through this path), accuracy (right and ok, over all n), accepted (share ok),
    accuracy_accepted}."""
    _, _, x_te, y_te, _ = load_raw("mnist", resolve_data_dir(data_dir), download=False)
    model, ckpt = load_checkpoint(ROOT / "weights" / f"{model_name}.pt")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            p = Path(tmp) / f"{i:05d}.png"
            Image.fromarray(x_te[i].numpy()).save(p)
            paths.append(p)
        res = predict.predict(paths, model, ckpt)
    ok = [r["status"] == "ok" for r in res]
    top1 = [bool(r["topk"]) and r["topk"][0][0] == int(y) for r, y in zip(res, y_te[:n])]  # status aside
    right = [r["status"] == "ok" and r["digit"] == int(y) for r, y in zip(res, y_te[:n])]
    return {"model": model_name, "n": n, "top1_accuracy": sum(top1) / n, "accuracy": sum(right) / n, "accepted": sum(ok) / n,
            "accuracy_accepted": sum(right) / max(sum(ok), 1),
            "test_acc_recorded": ckpt.get("metrics", {}).get("test_acc")}  # train.py's score (its eval precision)


def mnist_line(check: dict) -> str:
    """One line of text for mnist_check's result."""
    return (f"MNIST test through predict.py ({check['n']} PNGs, {check['model']}): top guess {100 * check['top1_accuracy']:.2f}%, "
            f"{100 * check['accuracy']:.2f}% right and ok, "
            f"{100 * check['accepted']:.2f}% accepted ({100 * check['accuracy_accepted']:.2f}% of those right); "
            f"recorded by train.py: {100 * (check['test_acc_recorded'] or 0):.2f}%")


def table(results: dict, models: list[str]) -> str:
    """Markdown: one row per condition, per model "right % (refused %)"."""
    head = "| condition | kind | n | " + " | ".join(models) + " |"
    lines = [head, "|" + "---|" * (3 + len(models))]
    for name, row in results.items():
        cells = [f"{100 * row['models'][m]['right']:.0f}% ({100 * row['models'][m]['refused']:.0f}%)" for m in models]
        lines.append(f"| {name} ({row['note']}) | {row['kind']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Per-condition accuracy and refusal rates on generated user images.")
    p.add_argument("--n", type=int, default=100, help="images per condition")
    p.add_argument("--models", nargs="+", default=None, help=f"shipped models to score (default: {' '.join(SHIPPED)})")
    p.add_argument("--mnist", type=int, default=10_000, help="MNIST test digits for the PNG check (0: skip)")
    p.add_argument("--quick", action="store_true", help="3 images per condition, convnet only, no MNIST check; "
                                                        "writes nothing")
    p.add_argument("--mnist-only", action="store_true", help="only the MNIST PNG check (--mnist digits), printed; "
                                                             "writes nothing")
    p.add_argument("--recipes", action="store_true", help="every seed file of results/final_recipes.json and the "
                   "shipped files: top-guess accuracy per digit condition (no calibration), written to "
                   "benchmarks/results/user_images_recipes.{json,md}")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    if a.recipes:
        return main_recipes(a.n, a.data_dir, argv)
    if a.mnist_only:
        if a.mnist <= 0:
            sys.exit("error: --mnist-only needs --mnist N with N > 0 (the number of test digits to check)")
        print(mnist_line(mnist_check(DEFAULT_MODEL, a.mnist, a.data_dir)))
        return 0
    models = a.models or ([DEFAULT_MODEL] if a.quick else SHIPPED)
    n = 3 if a.quick else a.n
    t0 = time.perf_counter()
    results = run(n, models, data_dir=a.data_dir, heavy=1 if a.quick else None)
    md = table(results, models)
    print("\n" + md)
    check = None
    if not a.quick and a.mnist:
        check = mnist_check(DEFAULT_MODEL, a.mnist, a.data_dir)
        print("\n" + mnist_line(check))
    if a.quick:
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/user_images.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "n_per_condition": n, "models": models, "calibration": {
                  m: {k: v for k, v in (load_checkpoint(ROOT / "weights" / f"{m}.pt")[1].get("calibration") or {}).items()
                      if k in ("temperature", "threshold")} for m in models},
              "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
              "seconds": round(time.perf_counter() - t0, 1), "conditions": results, "mnist_check": check}
    (RESULTS / "user_images.json").write_text(json.dumps(record, indent=2) + "\n")
    mnist_md = ("" if check is None else
                  f"\n\nMNIST test split through predict.py ({check['n']} 28x28 PNGs, {DEFAULT_MODEL}): "
                  f"top guess {100 * check['top1_accuracy']:.2f}% right; {100 * check['accuracy']:.2f}% right and accepted, "
                  f"{100 * check['accepted']:.2f}% accepted; the file's test accuracy as train.py recorded it: "
                  f"{100 * (check['test_acc_recorded'] or 0):.2f}%.")
    (RESULTS / "user_images.md").write_text(
        f"Cells: right % (refused %), {n} images per condition (fewer where the table says), "
        f"generated from MNIST test digits by benchmarks/user_images.py on {record['date']}.\n\n" + md + mnist_md + "\n")
    return 0


def main_recipes(n: int, data_dir, argv) -> int:
    """--recipes: run_recipes on recipe_checkpoints, printed and written (json + md)."""
    files = recipe_checkpoints()
    t0 = time.perf_counter()
    results = run_recipes(n, files, data_dir=data_dir)
    path = RESULTS / "user_images_recipes.json"
    kept = keep_earlier(json.loads(path.read_text()) if path.exists() else None, files, results, n)
    md = recipes_table(results, {**files, **kept})
    print("\n" + md)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"date": date, "command": "python benchmarks/user_images.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "n_per_condition": n, "measure": "top guess (argmax), calibration and refusals aside",
              "files": {k: {"model": f["model"], "seed": f["seed"], "checkpoint": str(f["path"].relative_to(ROOT)),
                            "sha256": f["sha256"]} for k, f in files.items()} | kept,
              "machine": f"{platform.machine()}, {platform.python_version()}, torch {torch.__version__}",
              "seconds": round(time.perf_counter() - t0, 1), "conditions": results}
    path.write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "user_images_recipes.md").write_text(
        f"Top-guess accuracy (the model's argmax, refusals aside), {n} images per condition (fewer where HEAVY says), "
        f"{len(results)} digit conditions, generated from MNIST test digits by benchmarks/user_images.py --recipes on {date}.\n\n"
        + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
