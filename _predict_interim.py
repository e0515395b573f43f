"""INTERIM (deleted when branch `images` is merged): predict.py's new API over today's preprocess."""
import base64, binascii, io, warnings
import numpy as np, torch
from predict import preprocess

MAX_PIXELS = 50_000_000


class ImageError(ValueError):
    def __init__(self, message, kind="unreadable"):
        super().__init__(message)
        self.kind = kind


def read_image(data: bytes, name="image", max_pixels=MAX_PIXELS):
    from PIL import Image, UnidentifiedImageError
    if not data:
        raise ImageError(f"{name}: is empty; send the bytes of an image file or a data URL", "empty")
    if data[:5].lower() == b"data:":
        header, _, payload = data.partition(b",")
        if b";base64" not in header.lower():
            raise ImageError(f"{name}: a data URL must be base64-encoded", "data_url")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"{name}: the data URL's payload is not valid base64", "data_url") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        w, h = image.size
        if w * h > max_pixels:
            raise ImageError(f"{name}: {w}x{h} is over the limit of {max_pixels / 1e6:.0f} megapixels", "too_large")
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(f"{name}: not an image Pillow can read; save it as PNG or JPEG") from None
    return image


def prepare(image):
    a = preprocess(image)
    return [a] if a.any() else []


def normalize(a28, ckpt):
    n = ckpt["normalization"]
    return ((torch.as_tensor(a28) - n["mean"]) / n["std"]).reshape(1, 1, 28, 28)


def calibration(ckpt):
    return 1.0, 0.5


def probabilities(logits, ckpt):
    return torch.softmax(torch.as_tensor(logits).float().reshape(-1, 10), dim=1)


def decide_probs(probs, threshold, topk=3):
    probs = torch.as_tensor(probs).reshape(-1, 10)
    if len(probs) == 0:
        return {"status": "no_digit", "digit": None, "probability": None, "topk": [], "number": None, "digits": []}
    q, idx = probs[0].topk(topk)
    ok = float(q[0]) >= threshold
    return {"status": "ok" if ok else "unsure", "digit": int(idx[0]) if ok else None, "probability": float(q[0]),
            "topk": [[int(i), float(v)] for i, v in zip(idx, q)], "number": None, "digits": []}
