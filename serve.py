"""Draw a digit in the browser and watch the trained models guess it, live.

    python serve.py                                        # every shipped study model in weights/
    python serve.py --weights weights/convnet.pt weights/resnet.pt --port 8000
    curl --data-binary @digit.png 'http://127.0.0.1:8000/predict?model=convnet'

One page (web/index.html: a canvas for mouse, pen or touch, file upload, the top guess, the
10 probabilities, the 28x28 image the model saw and the first two conv layers' feature maps)
and one JSON API, `POST /predict`, whose body is the raw bytes of an image file or a base64
data URL. Built on the standard library's ThreadingHTTPServer: no dependency beyond the
project's own, works offline, and each request gets its own thread. The image goes through
predict.py's MNIST preprocessing and the model through feature_visualization.py's hooks,
imported, not copied. Bad requests get a 4xx with a one-line JSON error; the server keeps going.
"""

import argparse
import base64
import binascii
import io
import json
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from feature_visualization import feature_maps
from models import STUDY_MODELS, CheckpointError, load_checkpoint
from predict import preprocess

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
MAX_BODY = 2 * 1024 * 1024  # bytes: a phone photo fits, a flood does not
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css",
                 ".png": "image/png", ".svg": "image/svg+xml", ".ico": "image/x-icon"}


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


# -----------------------------------------------------------------------------
# Images in and out


def decode_image(body: bytes):
    """The PIL image in `body`: raw file bytes (PNG, JPEG, ...) or a data URL (data:image/png;base64,...)."""
    from PIL import Image, UnidentifiedImageError

    if not body:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "empty body: send the bytes of an image file or a data URL")
    if body[:5].lower() == b"data:":
        header, _, payload = body.partition(b",")
        if b";base64" not in header.lower():
            raise BadRequest(HTTPStatus.BAD_REQUEST, "data URL must be base64-encoded (data:image/png;base64,...)")
        try:
            body = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "data URL payload is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "not an image Pillow can read (send PNG, JPEG, GIF, BMP, WebP, ...)") from None
    return image


def png_data_url(a: np.ndarray) -> str:
    """(H, W) floats in [0, 1], or (H, W, 3) uint8 -> a PNG data URL."""
    from PIL import Image

    img = Image.fromarray(a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_VIRIDIS = None


def map_grid(maps: torch.Tensor, n: int = 16, cols: int = 8) -> np.ndarray:
    """The first n of maps (C, H, W), each scaled to its own min..max, tiled with 1 px gaps and
    coloured with viridis: (rows*(H+1)-1, cols*(W+1)-1, 3) uint8."""
    global _VIRIDIS
    if _VIRIDIS is None:
        from matplotlib import colormaps
        _VIRIDIS = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)
    m = maps[:n].float()
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    m = ((m - lo) / (hi - lo).clamp(min=1e-6)).numpy()  # (n, H, W) in [0, 1]
    k, h, w = m.shape
    rows = -(-k // cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, 3), 30, np.uint8)
    for i in range(k):
        r, c = divmod(i, cols)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = _VIRIDIS[(m[i] * 255).astype(np.uint8)]
    return grid


# -----------------------------------------------------------------------------
# The models: loaded once, used by every request thread


class Models:
    """The checkpoints named on the command line, by name (the file's stem), plus "ensemble"
    (mean softmax) when there are two or more. One lock around inference: the feature-map
    hooks are per forward pass, and a 28x28 forward takes milliseconds."""

    def __init__(self, weights: list[str]):
        self.models = {}
        for w in weights:
            model, ckpt = load_checkpoint(w)
            self.models[Path(w).stem] = (model.eval(), ckpt)
        self.lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.models) + (["ensemble"] if len(self.models) > 1 else [])

    def describe(self) -> list[dict]:
        out = []
        for name, (model, ckpt) in self.models.items():
            m = ckpt.get("metrics", {})
            out.append({"name": name, "model": ckpt["model"], "params": sum(p.numel() for p in model.parameters()),
                        "test_acc": m.get("test_acc"), "val_acc": m.get("val_acc")})
        if len(self.models) > 1:
            out.append({"name": "ensemble", "model": "mean softmax of " + ", ".join(self.models)})
        return out

    def predict(self, image, name: str | None = None) -> dict:
        name = name or self.names[0]
        if name not in self.names:
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"unknown model {name!r}; this server has {', '.join(self.names)}")
        a = preprocess(image)  # (28, 28) in [0, 1], MNIST-style
        members = list(self.models) if name == "ensemble" else [name]
        t0 = time.perf_counter()
        probas, features = [], None
        with self.lock, torch.no_grad():
            for member in members:
                model, ckpt = self.models[member]
                norm = ckpt["normalization"]
                x = ((torch.from_numpy(a) - norm["mean"]) / norm["std"]).reshape(1, 1, 28, 28)
                maps = feature_maps(model, x)
                probas.append(torch.softmax(maps["logits"][0], dim=0))
                if features is None and "first_conv" in maps:  # the first CNN's maps (for the ensemble too)
                    features = {"from": member,
                                **{label: {"png": png_data_url(map_grid(maps[key][0])), "shape": list(maps[key].shape[1:])}
                                   for key, label in (("first_conv", "conv1"), ("second_conv", "conv2"))}}
        proba = torch.stack(probas).mean(0)  # (10,)
        return {"model": name, "digit": int(proba.argmax()), "probabilities": [round(float(p), 6) for p in proba],
                "image": png_data_url(a), "features": features, "ms": round(1000 * (time.perf_counter() - t0), 2)}


# -----------------------------------------------------------------------------
# HTTP


class Handler(BaseHTTPRequestHandler):
    server_version = "mnist-serve/1.0"
    models: Models = None  # set by make_server
    quiet = False

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    def send_json(self, status: HTTPStatus, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status: HTTPStatus, message: str, allow: str | None = None) -> None:
        body = json.dumps({"error": message, "status": int(status)}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/predict":
            return self.send_error_json(HTTPStatus.METHOD_NOT_ALLOWED, "use POST /predict with an image as the body", allow="POST")
        if path == "/api/models":
            return self.send_json(HTTPStatus.OK, self.models.describe())
        self.send_static(path)

    def send_static(self, path: str) -> None:
        """Files of web/ only: the resolved path must stay inside it (no ../, no absolute paths, no links out)."""
        name = "index.html" if path in ("", "/") else path.lstrip("/")
        target = (WEB / name).resolve()
        if not target.is_relative_to(WEB.resolve()) or not target.is_file() or target.suffix not in CONTENT_TYPES:
            return self.send_error_json(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        body = target.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPES[target.suffix])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        url = urlsplit(self.path)
        if url.path != "/predict":
            return self.send_error_json(HTTPStatus.NOT_FOUND, f"no such endpoint: POST {url.path} (there is POST /predict)")
        try:
            length = self.headers.get("Content-Length")
            if length is None:
                raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            try:
                n = int(length)
            except ValueError:
                raise BadRequest(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
            if n > MAX_BODY:
                # A body up to a few times the limit is read and dropped, so the client (which may
                # still be sending it) gets the 413 cleanly; a larger one is not read at all, and
                # the connection is closed so its bytes are never taken for the next request.
                if n <= 8 * MAX_BODY:
                    for _ in range(0, n, 1 << 16):
                        self.rfile.read(min(1 << 16, n))
                        n -= 1 << 16
                self.close_connection = True
                raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over the {MAX_BODY:,}-byte limit")
            if n < 0:
                raise BadRequest(HTTPStatus.BAD_REQUEST, "Content-Length is negative")
            body = self.rfile.read(n)
            model = parse_qs(url.query).get("model", [None])[0]
            self.send_json(HTTPStatus.OK, self.models.predict(decode_image(body), model))
        except BadRequest as e:
            self.send_error_json(e.status, str(e))
        except Exception as e:  # a bug must cost one request, never the server
            self.send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}".splitlines()[0])

    def _not_allowed(self):
        self.send_error_json(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here", allow="GET, POST")

    do_PUT = do_DELETE = do_PATCH = _not_allowed


def make_server(weights: list[str], host: str = "127.0.0.1", port: int = 8000, quiet: bool = False) -> ThreadingHTTPServer:
    """The server, bound but not yet serving (call serve_forever); port 0 picks a free one."""
    handler = type("BoundHandler", (Handler,), {"models": Models(weights), "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def default_weights() -> list[str]:
    return [str(p) for m in STUDY_MODELS if (p := ROOT / "weights" / f"{m}.pt").exists()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Serve a page to draw digits on, and POST /predict, from trained checkpoints.")
    p.add_argument("--weights", nargs="+", help="checkpoints to serve (default: every weights/<study model>.pt that exists)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only; 0.0.0.0 for your network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    a = p.parse_args(argv)
    weights = a.weights or default_weights()
    if not weights:
        sys.exit("error: no weights to serve: train one (python train.py --model convnet) or pass --weights FILE.pt")
    try:
        server = make_server(weights, a.host, a.port, a.quiet)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: cannot listen on {a.host}:{a.port} ({e.strerror}); pick another --port")
    host, port = server.server_address[:2]
    print(f"serving {', '.join(server.RequestHandlerClass.models.names)} at http://{host}:{port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
