"""Decoding people's image files for predict.py: one function, read_image, for paths, bytes and
data URLs (PNG, JPEG, HEIC/HEIF through pillow-heif, AVIF, GIF, BMP, WebP, TIFF, PGM, 16-bit and
float images), bounded from the header before decoding; to_grey turns any of them into grey floats.
Imported by predict.py, which re-exports these names (predict.read_image is the contract serve.py,
the benchmarks and the tests use)."""

import base64
import binascii
import functools
import io
import re
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".heic", ".heif", ".avif"}
MAX_PIXELS = 50_000_000  # colour pixels decoded per image: a 48 MP photo fits (JPEGs are drafted first)
# 8-bit grey and bilevel images take a byte a pixel in Pillow, colour ones four, and are box-reduced
# in Pillow before framing (prepare), so four times as many fit: a 200 MP phone scan (16320x12240)
MAX_GREY_PIXELS = 4 * MAX_PIXELS
WORK_SIDE = 640  # px: images are reduced to at most this on the longer side before finding the ink


class ImageError(ValueError):
    """A file or body that cannot be read as an image, in one line naming it and the fix.

    `kind` says why, for callers that map it to an HTTP status: "empty", "data_url",
    "unreadable" or "too_large"."""

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


# -----------------------------------------------------------------------------
# Decoding: one function for files, bytes and data URLs


def _decode_data_url(body: bytes, name: str) -> bytes:
    header, _, payload = body.partition(b",")
    if b";base64" not in header.lower():
        raise ImageError(f"{name}: a data URL must be base64-encoded (data:image/png;base64,...)", "data_url")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{name}: the data URL's payload is not valid base64; send the file's bytes instead", "data_url") from None


def pillow_limit() -> None:
    """Pillow's own decompression-bomb limit, raised (never lowered) for the process: it refuses (at twice
    MAX_IMAGE_PIXELS, from the header) exactly above MAX_GREY_PIXELS, our largest, so that
    read_image's header check decides and the 200 MP files it admits open; it also bounds the
    decoders that read more than their header says (ICO, ICNS) as before. Lower limits
    (serve.py's) are read_image's own."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_GREY_PIXELS // 2:
        Image.MAX_IMAGE_PIXELS = MAX_GREY_PIXELS // 2  # one value, whichever thread writes it


@functools.cache
def heif_opener() -> bool:
    """Let Pillow open HEIC/HEIF, the iPhone camera's default format, through pillow-heif
    (requirements.txt); it applies the file's own rotation and leaves EXIF orientation 1.
    False when pillow-heif is not installed (such files then get an error saying so)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")  # ISO BMFF 'ftyp' brands of HEIF


def check_size(name: str, image, max_pixels: int, max_grey_pixels: int | None) -> None:
    """ImageError "too_large" when the PIL image's size (its header's, until loaded) is over
    max_pixels, or max_grey_pixels for modes 1 and L (None: max_pixels for every mode)."""
    (w, h), grey = image.size, image.mode in ("1", "L") and max_grey_pixels is not None
    if w * h > (max_grey_pixels if grey else max_pixels):
        raise ImageError(f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the limit of "
                         f"{(max_grey_pixels if grey else max_pixels) / 1e6:.0f} megapixels"
                         + ("" if grey or max_grey_pixels in (None, max_pixels) else f" ({max_grey_pixels / 1e6:.0f} for grey)")
                         + "; resize it (e.g. to 4000 px on the longer side)", "too_large")


def open_image(source, name: str | None = None, max_pixels: int = MAX_PIXELS, max_grey_pixels: int | None = MAX_GREY_PIXELS):
    """The PIL image in `source` with its header read and its size checked, not yet decoded:
    (image, name). A JPEG is drafted first (see read_image), so image.size is what decoding
    will cost. Arguments and errors as read_image's."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (str, Path)):
        name = name or str(source)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{name}: no such file; check the path", "unreadable") from None
        except IsADirectoryError:
            raise ImageError(f"{name}: is a folder; pass image files (or the folder to predict.py)", "unreadable") from None
        except OSError as e:
            raise ImageError(f"{name}: cannot be read ({e.strerror}); check its permissions", "unreadable") from None
    else:
        name = name or "image"
        data = bytes(source)
    if not data:
        raise ImageError(f"{name}: is empty (0 bytes); it holds no image", "empty")
    if data[:5].lower() == b"data:":
        data = _decode_data_url(data, name)
        if not data:
            raise ImageError(f"{name}: the data URL holds no bytes; send an image", "empty")
    heif_opener()  # once: HEIC/HEIF files open like any other
    pillow_limit()
    try:
        # (no warnings.catch_warnings here: it is not thread-safe, and serve.py decodes in threads;
        # Pillow warns between its limit and twice it, and the check below refuses those files)
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # Pillow's own limit (2 x MAX_IMAGE_PIXELS), checked from the header
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise ImageError(f"{name}: {size}, over the limit of {max_pixels / 1e6:.0f} megapixels; "
                         f"resize it (e.g. to 4000 px on the longer side)", "too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS and not heif_opener():
            raise ImageError(f"{name}: a HEIC/HEIF photo, which needs pillow-heif (pip install pillow-heif); "
                             "or export it as JPEG", "unreadable") from None
        if data[:5] == b"%PDF-":  # a scanner's usual output: a document, not an image
            raise ImageError(f"{name}: a PDF, not an image; export the page as PNG or JPEG (e.g. pdftoppm -png)",
                             "unreadable") from None
        raise ImageError(f"{name}: not an image file we can read (PNG, JPEG, HEIC, WebP, GIF, BMP or TIFF); "
                         "save it as PNG or JPEG", "unreadable") from None
    w, h = image.size
    if image.format == "JPEG" and image.info.get("progressive"):
        check_size(name, image, max_pixels, max_grey_pixels)  # libjpeg holds a progressive file's whole coefficient buffer, drafted or not
    if image.format == "JPEG" and max(w, h) >= 2 * WORK_SIDE:
        scale = max(1, min(8, max(w, h) // WORK_SIDE))
        image.draft(image.mode if image.mode in ("L", "RGB") else "RGB", (w // scale, h // scale))
    check_size(name, image, max_pixels, max_grey_pixels)
    return image, name


# EXIF orientation (tag 0x0112) -> the transpose that makes the image upright (as ImageOps.exif_transpose)
ORIENTATIONS = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
                7: "TRANSVERSE", 8: "ROTATE_90"}


def load_image(image, name: str, max_pixels: int = MAX_PIXELS, max_grey_pixels: int | None = MAX_GREY_PIXELS,
               side: int | None = None):
    """An image from open_image, decoded and upright; with `side`, also shrunk (see shrink) so
    its longer side is at most `side` before anything wider than the decoded pixels is built.
    Errors as read_image's."""
    from PIL import Image, ImageOps

    try:
        image.load()
        check_size(name, image, max_pixels, max_grey_pixels)  # a decoder that did not keep to its header (ICO, ICNS: the embedded image's)
        if side is None or max(image.size) <= side:
            return ImageOps.exif_transpose(image)
        turn = ORIENTATIONS.get(image.getexif().get(0x0112))
        small = shrink(image, side)
        return small.transpose(getattr(Image.Transpose, turn)) if turn else small
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: over the limit of {max(max_pixels, max_grey_pixels or 0) / 1e6:.0f} megapixels once decoded; "
                         "resize it (e.g. to 4000 px on the longer side)", "too_large") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: the file is broken or cut short ({type(e).__name__}); save it again as PNG or JPEG",
                         "unreadable") from None


def read_image(source, name: str | None = None, max_pixels: int = MAX_PIXELS, max_grey_pixels: int | None = MAX_GREY_PIXELS,
               side: int | None = None):
    """The PIL image in `source`, upright and ready for `prepare`.

    source: a path (str or Path), the raw bytes of an image file (PNG, JPEG, GIF, BMP, WebP,
    TIFF, PGM, ...), or the bytes of a base64 data URL (b"data:image/png;base64,...").
    name: what error messages call it (default: the path, or "image").
    max_pixels: images with more pixels (width x height, read from the header before
    decoding) are refused; a JPEG is first decoded at a reduced scale (Pillow's draft, 1/2
    to 1/8) when that alone brings it to WORK_SIDE or more, so big phone photos are cheap.
    max_grey_pixels: the limit instead for 8-bit grey and bilevel images (modes L and 1);
    None: max_pixels.
    side: None keeps the decoded size; WORK_SIDE shrinks a bigger image at once, in strips
    (shrink), to what `prepare` would reduce it to, so decoding costs the decoded pixels
    (1 to 4 bytes each) and no full-size float copies, whatever the mode.

    The EXIF orientation is applied (a portrait photo stored sideways comes out upright).
    Pixel depth is kept as decoded (16-bit and float modes are scaled by `prepare`, never
    clipped here). Raises ImageError (a ValueError) with a one-line message naming the file.
    """
    image, name = open_image(source, name, max_pixels, max_grey_pixels)
    return load_image(image, name, max_pixels, max_grey_pixels, side)


STRIP_PIXELS = 500_000  # source pixels converted at a time by shrink: its working memory beyond the decoded image


def shrink(image, side: int):
    """A decoded PIL image (W, H) -> to_grey(image) box-averaged by f = ceil(max(W, H) / side)
    over whole f x f boxes (as ink._reduce: (H // f, W // f)), computed STRIP_PIXELS at a time so
    that nothing wider than the decoded pixels is ever held full-size:
      - 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: mode L, converted and reduced by Pillow;
      - 16-bit, 32-bit int, float and modes with alpha: mode F in [0, 1] (which to_grey returns
        as is), scaled, or composed over its background, from statistics of the whole image
        exactly as to_grey decides them (bits from the maximum; float by its min..max after
        NaN -> 0; alpha: opaque, ink in the alpha alone, or composed over a contrasting ground).
    Returns the image itself when f is 1. Memory: the decoded image plus ~30 bytes x STRIP_PIXELS."""
    from PIL import Image

    w, h = image.size
    f = -(-max(w, h) // side)
    if f <= 1:
        return image
    h2, w2 = h // f * f, w // f * f
    rows = f * max(1, STRIP_PIXELS // max(1, w2 * f))  # source rows per strip, whole boxes
    strips = [(y, min(y + rows, h2)) for y in range(0, h2, rows)]
    mode = image.mode

    def box_mean(a):  # (rows, w2) -> (rows / f, w2 / f)
        return a.reshape(a.shape[0] // f, f, w2 // f, f).mean(axis=(1, 3), dtype=np.float64)

    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        out, lo, hi = [], np.inf, -np.inf
        for y0, y1 in strips:
            a = np.array(image.crop((0, y0, w2, y1)), dtype=np.float64 if mode == "I" else np.float32)
            a = np.nan_to_num(a, copy=False) if mode == "F" else np.clip(a, 0, None, out=a)
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
            out.append(box_mean(a))
        a = np.concatenate(out)
        if mode != "F":  # as to_grey: 8- to 32-bit content by the smallest 2^bits - 1 that holds the maximum
            bits = next((b for b in (8, 10, 12, 14, 16, 24, 32) if hi <= 2 ** b - 1), 32)
            lo, hi = 0.0, 2.0 ** bits - 1
        elif lo >= 0 and hi <= 1:
            lo, hi = 0.0, 1.0
        return Image.fromarray(np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32), mode="F")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        lum_m, alpha_m, both_m = [], [], []  # box means of lum, alpha, lum x alpha
        amin, n_seen, sum_seen, lo, hi = 1.0, 0, 0.0, np.inf, -np.inf  # to_grey's statistics, over the whole image
        for y0, y1 in strips:
            rgba = np.asarray(image.crop((0, y0, w2, y1)).convert("RGBA"))
            alpha = rgba[..., 3].astype(np.float32) / 255.0
            lum = rgba[..., 0] * np.float32(0.299 / 255)  # to_grey's luma, a channel at a time (no (H, W, 3) floats)
            lum += rgba[..., 1] * np.float32(0.587 / 255)
            lum += rgba[..., 2] * np.float32(0.114 / 255)
            seen = alpha > 0.5
            amin = min(amin, float(alpha.min()))
            if seen.any():
                n_seen, sum_seen = n_seen + int(seen.sum()), sum_seen + float(lum[seen].sum(dtype=np.float64))
                lo, hi = min(lo, float(lum[seen].min())), max(hi, float(lum[seen].max()))
            lum_m.append(box_mean(lum))
            alpha_m.append(box_mean(alpha))
            both_m.append(box_mean(lum * alpha))
        lum, alpha, both = np.concatenate(lum_m), np.concatenate(alpha_m), np.concatenate(both_m)
        if amin > 0.98:
            a = lum
        elif n_seen == 0 or hi - lo < 0.1:
            a = 1.0 - alpha
        else:
            under = 0.0 if sum_seen / n_seen > 0.5 else 1.0
            a = both + under * (1.0 - alpha)
        return Image.fromarray(np.clip(a, 0, 1).astype(np.float32), mode="F")
    small = Image.new("L", (w2 // f, h2 // f))
    for y0, y1 in strips:
        strip = image.crop((0, y0, w2, y1))
        small.paste((strip if strip.mode == "L" else strip.convert("L")).reduce(f), (0, y0 // f))
    return small


def to_grey(image) -> np.ndarray:
    """Any PIL image -> (H, W) float32 in [0, 1], ink dark or light as drawn.

    16-bit (I;16*), 32-bit (I) and float (F) images are scaled by their range: 8-, 12- and
    16-bit content by 2^bits - 1 (the smallest that holds the maximum), float by its min..max.
    With an alpha channel: when the colour under the opaque pixels is (nearly) uniform, the
    ink is in the alpha alone (a canvas export) and the result is alpha as dark ink on light;
    otherwise the image is composed over a background that contrasts with its colour."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(image, dtype=np.float64)
        top = a.max()
        bits = next((b for b in (8, 10, 12, 14, 16, 24, 32) if top <= 2 ** b - 1), 32)
        return (np.clip(a, 0, None) / (2 ** bits - 1)).astype(np.float32)
    if mode == "F":
        a = np.asarray(image, dtype=np.float64)
        a = np.nan_to_num(a)
        lo, hi = (0.0, 1.0) if a.min() >= 0 and a.max() <= 1 else (a.min(), a.max())
        return ((a - lo) / max(hi - lo, 1e-12)).astype(np.float32)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
    alpha = rgba[..., 3]
    lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    seen = alpha > 0.5
    if alpha.min() > 0.98:  # opaque after all
        return lum
    if not seen.any() or np.ptp(lum[seen]) < 0.1:
        return 1.0 - alpha  # the colour carries nothing: the ink is where the canvas is painted
    under = 0.0 if lum[seen].mean() > 0.5 else 1.0  # light ink: compose over black, dark ink over white
    return lum * alpha + under * (1.0 - alpha)
