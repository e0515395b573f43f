"""Classify your own digit images with a trained model.

    python predict.py my_digit.png --weights weights/convnet.pt
    python predict.py photos/ 'scans/*.jpg' --weights weights/convnet.pt --topk 3 --json
    python predict.py my_digit.png --show seen/      # also save the 28x28 the model saw

Images are prepared the way MNIST's were: grey, light ink on a dark background, the
ink's bounding box scaled so its longer side is 20 px, pasted into 28x28 with its
centre of mass at the centre, then normalized as in training.
"""

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np
import torch

from models import CheckpointError, load_checkpoint

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def preprocess(image) -> np.ndarray:
    """Any PIL image -> (28, 28) float32 in [0, 1], MNIST-style (white digit on black)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)  # transparent pixels become paper
    a = np.asarray(image.convert("L"), dtype=np.float32) / 255.0  # (H, W)
    # Paper is the majority of the border: if it is light, the ink is dark, so invert.
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if np.median(border) > 0.5:
        a, border = 1.0 - a, 1.0 - border
    # Stretch paper -> 0 and the strongest ink -> 1, so grey paper or faint pencil look like MNIST.
    lo, hi = np.median(border), a.max()
    a = np.clip((a - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    ink = a > 0.2
    if not ink.any():
        return np.zeros((28, 28), np.float32)
    rows, cols = np.nonzero(ink.any(1))[0], np.nonzero(ink.any(0))[0]
    a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # crop to the ink's bounding box
    h, w = a.shape
    scale = 20.0 / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray((a * 255).astype(np.uint8)).resize((new_w, new_h), Image.LANCZOS), np.float32) / 255.0
    out = np.zeros((28, 28), np.float32)
    top, left = (28 - new_h) // 2, (28 - new_w) // 2
    out[top:top + new_h, left:left + new_w] = small
    # Move the centre of mass to the centre (as MNIST did), staying inside the frame.
    ys, xs = np.indices(out.shape)
    total = out.sum()
    dy = int(round(13.5 - (ys * out).sum() / total))
    dx = int(round(13.5 - (xs * out).sum() / total))
    dy = int(np.clip(dy, -top, 28 - (top + new_h)))
    dx = int(np.clip(dx, -left, 28 - (left + new_w)))
    return np.roll(out, (dy, dx), axis=(0, 1))


def expand(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and globs, in the order given."""
    paths = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in item for ch in "*?["):
            paths += [Path(q) for q in sorted(glob.glob(item))]
        else:
            paths.append(p)
    return paths


@torch.no_grad()
def predict(paths: list[Path], model: torch.nn.Module, normalization: dict, topk: int = 3, show_dir=None) -> list[dict]:
    """One dict per file: {file, digit, probability, topk: [[digit, p], ...]} or {file, error}."""
    from PIL import Image, UnidentifiedImageError

    results = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                a = preprocess(img)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            results.append({"file": str(path), "error": f"cannot read {path}: {type(e).__name__}: {e}".splitlines()[0]})
            continue
        x = (torch.from_numpy(a) - normalization["mean"]) / normalization["std"]  # (28, 28)
        device = next(model.parameters()).device
        proba = torch.softmax(model(x.reshape(1, 1, 28, 28).to(device)).float(), dim=1)[0].cpu()
        p, idx = proba.topk(min(topk, len(proba)))
        r = {"file": str(path), "digit": int(idx[0]), "probability": float(p[0]),
             "topk": [[int(i), float(q)] for i, q in zip(idx, p)]}
        if show_dir:
            Path(show_dir).mkdir(parents=True, exist_ok=True)
            seen = Path(show_dir) / f"{path.stem}_28x28.png"
            Image.fromarray((a * 255).round().astype(np.uint8)).save(seen)
            r["seen"] = str(seen)
        results.append(r)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Predict the digit in image files (any format Pillow reads).")
    p.add_argument("images", nargs="+", help="image files, folders or globs")
    p.add_argument("--weights", default="weights/convnet.pt", help="checkpoint written by train.py")
    p.add_argument("--topk", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file")
    p.add_argument("--show", metavar="DIR", help="save the 28x28 image the model saw, per file")
    a = p.parse_args(argv)
    try:
        model, ckpt = load_checkpoint(a.weights)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    paths = expand(a.images)
    if not paths:
        sys.exit(f"error: no image files found in {' '.join(a.images)}")
    results = predict(paths, model, ckpt["normalization"], a.topk, a.show)
    for r in results:
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
    if a.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" not in r:
                alts = ", ".join(f"{d}: {q:.3f}" for d, q in r["topk"][1:])
                print(f"{r['file']}: {r['digit']} ({r['probability']:.3f})" + (f"  [{alts}]" if alts else ""))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
