"""Draw a digit in the browser and watch the trained models guess it, live.

    python serve.py                                        # the study's models and QuickNet, from weights/
    python serve.py --weights weights/convnet.pt weights/resnet.pt --port 8000
    curl --data-binary @digit.png 'http://127.0.0.1:8000/predict?model=convnet'

One page (web/index.html: a canvas for mouse, pen or touch, file upload, the answer, the 10
probabilities, the 28x28 image the model saw and the first two conv layers' feature maps) and
one JSON API, `POST /predict`, whose body is the raw bytes of an image file or a base64 data URL.

FastAPI on uvicorn, bound to 127.0.0.1 unless --host says otherwise. What the server promises:
  - inference runs off the event loop on WORKERS threads; at most WORKERS + MAX_WAITING requests
    are admitted to it at once, the rest get 503 with Retry-After (so memory stays bounded and no
    connection is reset under load; the listen backlog is 2048);
  - an image over LIGHT_PIXELS (from its header) is decoded in a lane of its own, HEAVY_WORKERS
    thread(s) with at most HEAVY_WAITING queued (else 503 + Retry-After), so a drawing is never
    queued behind a big file; every image is shrunk to the model's working size in strips as it is
    decoded (images.shrink), so one costs its decoded pixels (1 to 4 bytes each), whatever its mode;
  - a body over MAX_BODY is refused from its Content-Length, or as soon as it grows past the
    limit while being read; bodies held at once stay under BODY_BUDGET bytes (else 503 +
    Retry-After); a request whose headers or body take over REQUEST_TIMEOUT_S to
    arrive gets 408 and its connection is closed;
  - the image's pixel count is checked from its header before it is decoded (predict.read_image,
    the one decoder, with this server's MAX_PIXELS);
  - every error, for any method and path, is a one-line JSON body {"error", "status"} with the
    right status (405 carries Allow); client disconnects are not logged as errors;
  - static files come from web/ only; /openapi.json describes the API and /docs renders it as a
    page that needs no network (FastAPI's Swagger UI would load its scripts from a CDN).
The image goes through predict.py (decoding, MNIST framing, boxes and lines set aside, signs,
quarter turns: predict.answer_marks), imported, not copied: the API reads a picture as
`python predict.py --weights` with the same files does, the rejector included (a JPEG is decoded
shrunk here, so its probabilities may differ in the last digits).
"""

import argparse
import asyncio
import base64
import html
import io
import json
import re
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

import h11
import numpy as np
import torch

import images
import predict
from models import STUDY_MODELS, CheckpointError, conv_layers, count_params, load_checkpoint

ROOT = Path(__file__).resolve().parent
WEB = ROOT / "web"
DEFAULT_MODEL = "convnet"  # the page's first choice: the best model on validation (report.md, Step 5)
EXTRA_MODELS = ("quicknet",)  # served beside the study's models when weights/<name>.pt exists; not in the ensemble
LABELS = {"dnn": "DNN", "convnet": "ConvNet", "resnet": "ResNet-18", "fastresnet": "FastResNet", "quicknet": "QuickNet"}
# Bytes per request body: a phone photo as the camera wrote it (a 12-48 MP JPEG is 3-12 MB) fits,
# so `curl --data-binary @IMG_1234.jpg` works; the page shrinks uploads to 1,600 px first anyway.
MAX_BODY = 16 * 1024 * 1024
DRAIN_MAX = 2 * MAX_BODY  # a body over the limit but under this is read and dropped after the 413, so the client sees it
# Bytes of request bodies held at once (being read, queued or being answered): what bounds the
# memory many big uploads take, as WORKERS + MAX_WAITING bounds the work. Beyond it: 503 + Retry-After.
BODY_BUDGET = 64 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0  # headers, and then the body, must each arrive within this (slow clients are closed)
WORKERS = 2  # threads decoding images and running models: peak memory ~ WORKERS x one decoded image
# Pixels the server decodes per image (read from the header first). Lower than predict.MAX_PIXELS
# (50 MP, for the command line) because decoding and framing one 50 MP PNG takes hundreds of MB
# and WORKERS of them at once took the server past the 1.5 GB it must stay under (see
# benchmarks/results/serve_load-50mp.json, phase "largest", run with 50 MP); the page sends
# at most 1,600 px a side (2.6 MP), and predict.read_image drafts big JPEGs before counting.
MAX_PIXELS = 25_000_000
MAX_WAITING = 64  # requests queued for a worker beyond those running (~1 s of ConvNet work); more get 503 + Retry-After
# Images over this many pixels (after a JPEG's draft) are decoded in the heavy lane: the page sends
# at most 1,600 px a side (2.6 MP) and a phone photo drafts to ~1 MP, so only big PNG/TIFF/WebP go there.
LIGHT_PIXELS = 4_000_000
HEAVY_WORKERS = 1  # threads decoding heavy images: peak memory ~ HEAVY_WORKERS x one decoded 25 MP image (~100 MB)
HEAVY_WAITING = 6  # heavy requests queued beyond those running; more get 503 + Retry-After
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css",
                 ".png": "image/png", ".svg": "image/svg+xml", ".ico": "image/x-icon"}


class ApiError(Exception):
    """An answer other than 200: status, a one-line message, extra headers (Allow, Retry-After, Connection)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def error_body(status: int, message: str) -> bytes:
    """{"error": the message's first line, at most 300 characters, "status": status} as JSON bytes."""
    line = message.splitlines()[0] if message else HTTPStatus(status).phrase
    return json.dumps({"error": line if len(line) <= 300 else line[:297] + "...", "status": status}).encode()


# -----------------------------------------------------------------------------
# The seam with predict.py: decoding, framing and answers live there; serve.py only calls them.


IMAGE_ERROR_STATUS = {"empty": 400, "data_url": 400, "too_large": 413, "unreadable": 415}  # predict.ImageError.kind -> HTTP


FORM_PARTS = 1000  # parts read of a multipart form before giving up on finding its file (the scan is linear in the body)


def form_file(body: bytes, content_type: str) -> bytes:
    """The file in a multipart/form-data body (RFC 7578: `curl -F file=@digit.png`, an HTML form):
    the first part with a filename, else a part named file or image. A bytes-level scan for the
    boundary (linear in the body, at most FORM_PARTS parts, no nesting); ApiError 400 when the form
    has no boundary or no file."""
    found = re.search(r'boundary="?([^";\s]+)"?', content_type, re.IGNORECASE)
    if found is None:
        raise ApiError(400, "the multipart form has no boundary; send the raw bytes (curl --data-binary @digit.png)")
    delimiter = b"\r\n--" + found.group(1).encode("latin-1")
    data, at, named = b"\r\n" + body, 0, None  # the leading CRLF lets the first delimiter match like the others
    for _ in range(FORM_PARTS):
        start = data.find(delimiter, at)
        if start < 0 or data[start + len(delimiter):start + len(delimiter) + 2] == b"--":
            break
        head = data.find(b"\r\n\r\n", start + len(delimiter))
        end = data.find(delimiter, head + 4) if head >= 0 else -1
        if end < 0:
            break
        headers = data[start + len(delimiter):head].decode("latin-1")
        if re.search(r"\bfilename\*?=", headers, re.IGNORECASE):
            return data[head + 4:end]
        if named is None and re.search(r'\bname="?(file|image)"?(;|\s|$)', headers, re.IGNORECASE):
            named = data[head + 4:end]
        at = end
    if named is not None:
        return named
    raise ApiError(400, f"the form holds no file (in its first {FORM_PARTS} parts); send one as file=@digit.png (curl -F), "
                        "or the raw bytes (curl --data-binary @digit.png)")


def open_image(body: bytes):
    """The PIL image in `body` (file bytes or a data URL), its header read and size checked, not yet
    decoded; ApiError 400/413/415 when it is not one to decode (over MAX_PIXELS is a 413)."""
    try:
        return images.open_image(body, "the file", max_pixels=MAX_PIXELS, max_grey_pixels=None)[0]  # one limit: see MAX_PIXELS
    except images.ImageError as e:
        raise ApiError(IMAGE_ERROR_STATUS.get(e.kind, 415), str(e)) from None


def load_image(image):
    """An image from open_image, decoded and shrunk to predict.WORK_SIDE as it is (images.shrink)."""
    try:
        return images.load_image(image, "the file", max_pixels=MAX_PIXELS, max_grey_pixels=None, side=predict.WORK_SIDE)
    except images.ImageError as e:
        raise ApiError(IMAGE_ERROR_STATUS.get(e.kind, 415), str(e)) from None


def read_image(body: bytes):
    """The PIL image in `body`, decoded and shrunk (open_image, then load_image)."""
    return load_image(open_image(body))


def is_heavy(image) -> bool:
    """Whether an opened image is decoded in the heavy lane (over LIGHT_PIXELS)."""
    return image.size[0] * image.size[1] > LIGHT_PIXELS


# -----------------------------------------------------------------------------
# Images out


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
# The models: loaded once, used by every worker thread


class Models:
    """The checkpoints named on the command line, by name (the file's stem), plus "ensemble"
    (mean softmax) when there are two or more. Decoding and framing run in parallel on the
    worker threads; one lock is held around the forward passes only (the feature-map hooks
    belong to one forward pass, and a 28x28 forward takes milliseconds)."""

    def __init__(self, weights: list[str]):
        self.models = {}
        for w in weights:
            model, ckpt = load_checkpoint(w)
            self.models[Path(w).stem] = (model.eval(), ckpt)
        self.lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.models) + (["ensemble"] if len(self.models) > 1 else [])

    @property
    def members(self) -> list[str]:
        """The ensemble's models: the study's models among those served (the report's ensemble),
        or every served model when fewer than two of them are."""
        study = [n for n, (_, ckpt) in self.models.items() if ckpt["model"] in STUDY_MODELS]
        return study if len(study) > 1 else list(self.models)

    def label(self, name: str) -> str:
        """A served model's readable name ("ResNet-18"): its kind's, with the file's stem when that differs."""
        if name == "ensemble":
            return "ensemble"
        kind = self.models[name][1]["model"]
        readable = LABELS.get(kind, kind)
        return readable if name == kind else f"{readable} ({name})"

    @property
    def default(self) -> str:
        """The ConvNet when it is served (the study's best model on validation: report.md, Step 5),
        else the model with the best validation accuracy in its checkpoint (a refit's is in-sample,
        so refits are left out), else the first model with convolutions. Not the ensemble: its
        four forward passes (ResNet-18's the most) take several times the ConvNet's, on every
        stroke the page sends; it stays one click away in the page's menu."""
        if DEFAULT_MODEL in self.models:
            return DEFAULT_MODEL
        scored = [(ckpt.get("metrics", {}).get("val_acc"), n) for n, (_, ckpt) in self.models.items()
                  if not ckpt.get("train_config", {}).get("refit")]
        scored = [(v, n) for v, n in scored if v is not None]
        if scored:
            return max(scored, key=lambda vn: vn[0])[1]
        convs = [n for n, (m, _) in self.models.items() if any(isinstance(x, torch.nn.Conv2d) for x in m.modules())]
        return (convs or self.names)[0]

    def describe(self) -> list[dict]:
        out = []
        for name, (model, ckpt) in self.models.items():
            m = ckpt.get("metrics", {})
            out.append({"name": name, "label": self.label(name), "model": ckpt["model"], "params": count_params(model),
                        "test_acc": m.get("test_acc"), "val_acc": m.get("val_acc"), "default": name == self.default,
                        "convolutions": bool(conv_layers(model))})
        if len(self.models) > 1:
            out.append({"name": "ensemble", "label": "ensemble", "model": "mean softmax of " + ", ".join(self.members),
                        "members": [self.label(n) for n in self.members], "default": False,
                        "convolutions": any(o["convolutions"] for o in out if o["name"] in self.members)})
        return out

    def check(self, name: str | None) -> str:
        """The served model's name for ?model= (any case; absent: the default); ApiError 400 otherwise."""
        found = {n.lower(): n for n in self.names}.get((name or self.default).lower())
        if found is None:
            raise ApiError(400, f"unknown model {name!r}; this server has {', '.join(self.names)}")
        return found

    def warm_up(self) -> None:
        """One answer for a drawn stroke, so the first user does not wait for lazy imports (~1 s)."""
        from PIL import Image, ImageDraw

        img = Image.new("L", (280, 280), 0)
        ImageDraw.Draw(img).line([(80, 70), (200, 70), (120, 230)], fill=255, width=20)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        self.predict(buf.getvalue(), self.default)

    def predict(self, body: bytes, name: str) -> dict:
        """The JSON answer for one request body, in the calling thread (see answer)."""
        return self.answer(open_image(body), name)

    def answer(self, image, name: str, upright: bool = False) -> dict:
        """The JSON answer for an image from open_image (runs on a worker thread): predict.py's answer
        {status, digit, probability, topk, number, digits, and `turned` for a sideways photo read
        turned} plus the model, the 10 calibrated probabilities of the first digit (null when there
        is none), the crops the model read side by side as a PNG data URL (28 x 28n), the first
        CNN's feature maps of the first digit, ms. The reading is predict.answer_marks's, as
        `python predict.py` reads a file: signs written into the number, boxes and lines set aside,
        the quarter turns read when the picture may be sideways, unless `upright` says it is not (a
        drawing on the page's canvas)."""
        t0 = time.perf_counter()
        grey = predict.working_grey(load_image(image))
        names = self.members if name == "ensemble" else [name]
        members = [self.models[m] for m in names]
        shown = next((m for m in names if conv_layers(self.models[m][0])), None)  # whose feature maps are shown
        marks = predict.prepare_marks(grey)
        passes, maps = self.passes(marks.crops, names, shown)
        answer, crops = predict.answer_marks(marks, members, topk=3, grey=None if upright else lambda: grey,
                                             passes=passes, run=self.forward)
        if crops is not marks.crops:  # read turned: the bars and maps show what was read
            passes, maps = self.passes(crops, names, shown)
        p = predict.ensemble_probabilities(passes) if crops else torch.zeros(0, 10)  # (n, 10)
        seen = np.concatenate(crops, axis=1) if crops else np.zeros((28, 28), np.float32)  # (28, 28n)
        features = {"from": shown, "label": self.label(shown),
                    **{label: {"png": png_data_url(map_grid(maps[key][0])), "shape": list(maps[key].shape[1:])}
                       for key, label in (("first_conv", "conv1"), ("second_conv", "conv2")) if key in maps}} if maps else None
        return {"model": name, **answer, "probabilities": [round(float(q), 6) for q in p[0]] if len(p) else None,
                "image": png_data_url(seen), "features": features, "ms": round(1000 * (time.perf_counter() - t0), 2)}

    def passes(self, crops: list[np.ndarray], names: list[str], shown: str | None) -> tuple[list, dict]:
        """One forward pass per model of `names` on the crops: ([(logits, features, ckpt)], the conv
        layers' outputs {"first_conv", "second_conv"} of model `shown`, caught in its same pass)."""
        out, maps = [], {}
        for n in names:
            model, ckpt = self.models[n]
            layers = conv_layers(model) if n == shown else None
            out.append((*self.forward(crops, model, ckpt, layers, maps), ckpt))
        return out, maps

    def forward(self, crops: list[np.ndarray], model: torch.nn.Module, ckpt: dict, layers: dict | None = None,
                outputs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """predict.forward under the lock: one forward pass at a time (its hooks belong to that pass);
        decoding, framing and encoding run outside it, in parallel."""
        with self.lock:
            return predict.forward(crops, model, ckpt, layers, outputs)


# -----------------------------------------------------------------------------
# HTTP: uvicorn's h11 protocol with a request timeout and JSON for its own errors


def make_protocol(timeout_s: float):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        """uvicorn's HTTP/1.1 protocol, plus: a connection whose request headers do not arrive within
        timeout_s (or that still sends a refused body that long after its answer) gets a JSON 408 or
        is closed; a malformed request gets a JSON 400 (431 when its headers are too long)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._deadline = None
            self._hint = 400
            next_event = self.conn.next_event

            def next_event_noting_the_status():
                try:
                    return next_event()
                except h11.RemoteProtocolError as e:
                    self._hint = e.error_status_hint
                    raise
            self.conn.next_event = next_event_noting_the_status

        def _arm(self):
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(timeout_s, self._timed_out)

        def connection_made(self, transport):
            self.drained = None  # bytes read and dropped after our side was shut (see Lingering); None: not lingering
            super().connection_made(Lingering(transport, self, timeout_s))
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.drained is None:
                return super().data_received(data)
            self.drained += len(data)
            if self.drained > DRAIN_MAX:
                self.transport.close()

        def eof_received(self):
            if self.drained is not None:  # the client has sent all it meant to and read our answer
                self.transport.close()
                return None
            return super().eof_received()

        def connection_lost(self, exc):
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

        def on_response_complete(self):
            super().on_response_complete()
            self._arm()

        def _timed_out(self):
            if self.transport.is_closing():
                return
            theirs, ours = self.conn.their_state, self.conn.our_state
            if theirs is h11.IDLE and ours is h11.IDLE:  # nothing, or half a request line/headers
                self._send_json_and_close(408, f"the request did not arrive within {timeout_s:g} s")
            elif theirs is h11.SEND_BODY and ours in (h11.DONE, h11.MUST_CLOSE):  # still sending a refused body
                self.transport.close()
            # otherwise the app is reading the body (it has its own deadline) or answering

        def send_400_response(self, msg: str) -> None:
            status = self._hint if self._hint in (400, 413, 414, 431) else 400
            why = {431: "request line or headers over the size limit"}.get(status, "malformed HTTP request")
            self._send_json_and_close(status, why)

        def _send_json_and_close(self, status: int, message: str) -> None:
            body = error_body(status, message)
            try:  # written by hand: h11's state machine may already be in ERROR
                out = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
                self.transport.write(out)
            finally:
                self.transport.close()

    return Protocol


class Lingering:
    """A connection's transport, except that close() while the client is still sending its body
    (a refused upload on a connection that must close: the client said Connection: close) shuts
    our side only (FIN after the answer) and reads and drops what still comes, up to DRAIN_MAX
    bytes or timeout_s, then closes: the client reads the answer instead of a reset."""

    def __init__(self, transport, protocol, timeout_s: float):
        self._transport, self._protocol, self._timeout_s = transport, protocol, timeout_s

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def close(self) -> None:
        p, t = self._protocol, self._transport
        if p.drained is None and not t.is_closing() and p.conn.their_state is h11.SEND_BODY and t.can_write_eof():
            p.drained = 0
            t.write_eof()
            t.resume_reading()
            p.loop.call_later(self._timeout_s, t.close)
            return
        t.close()


def json_error(status: int, message: str, headers: dict | None = None):
    """A JSON error Response: {"error": message, "status": status} with that status and headers."""
    from fastapi.responses import Response

    return Response(error_body(status, message), status_code=status, headers=headers, media_type="application/json")


def add_error_handlers(app) -> None:
    """Every error as JSON: ApiError, HTTP errors (405 names the method), bad query parameters (400), bugs (500)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return json_error(e.status, str(e), e.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        message = e.detail if e.status_code != 405 else f"{request.method} is not supported on {request.url.path}"
        return json_error(e.status_code, str(message), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _bad_query(request, e: RequestValidationError):
        return json_error(400, "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):  # a bug costs one request, never the server (uvicorn logs the traceback)
        return json_error(500, f"{type(e).__name__}: {e}")


class BodyBudget:
    """The bytes of request bodies the server holds at once, touched only on the event loop:
    `take` reserves n more or raises a 503 (with Retry-After) when that would pass `limit`."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def take(self, n: int, headers: dict | None = None) -> None:
        if self.held + n > self.limit:
            raise ApiError(503, f"busy: {self.held:,} bytes of uploads in memory; try again in 1 s",
                           {"Retry-After": "1", **(headers or {})})
        self.held += n


def unread_body_headers(request, length: int) -> dict:
    """Headers for an answer given before a body of `length` bytes is read: none when uvicorn will
    read and drop it (up to DRAIN_MAX, so the client, still sending, sees the answer), else
    Connection: close (a larger body, or one waiting for 100 Continue, is cut off)."""
    drain = length <= DRAIN_MAX and "100-continue" not in request.headers.get("expect", "").lower()
    return {} if drain else {"Connection": "close"}


async def read_body(request, timeout_s: float, budget: BodyBudget) -> tuple[bytes, int]:
    """(the whole body, the bytes reserved for it in `budget`: the caller gives them back), refused
    as soon as it is over MAX_BODY, over the budget, or late by more than timeout_s."""
    length = request.headers.get("content-length")
    reserved = 0
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "Content-Length is not a number", {"Connection": "close"})
        if int(length) > MAX_BODY:
            raise ApiError(413, f"body of {int(length):,} bytes is over the {MAX_BODY:,}-byte limit "
                                "(shrink the image: 1,600 px on the long side is plenty)",
                           unread_body_headers(request, int(length)))
        budget.take(int(length), unread_body_headers(request, int(length)))  # not read yet: 503 at once
        reserved = int(length)
    chunks, size = [], 0
    deadline = asyncio.get_running_loop().time() + timeout_s
    stream = request.stream()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), max(0.0, deadline - asyncio.get_running_loop().time()))
            except StopAsyncIteration:
                break
            except (asyncio.TimeoutError, TimeoutError):
                raise ApiError(408, f"the body did not arrive within {timeout_s:g} s", {"Connection": "close"}) from None
            size += len(chunk)
            if size > MAX_BODY:
                raise ApiError(413, f"body over the {MAX_BODY:,}-byte limit", {"Connection": "close"})
            if size > reserved:  # a body without Content-Length: reserved as it arrives
                budget.take(size - reserved, {"Connection": "close"})
                reserved = size
            chunks.append(chunk)
    except BaseException:
        budget.held -= reserved
        raise
    return b"".join(chunks), reserved


class Lane:
    """A thread pool with an admission bound, touched only on the event loop: `run` answers 503
    with Retry-After when `workers + waiting` calls are already running or queued."""

    def __init__(self, workers: int, waiting: int, name: str):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.limit, self.admitted, self.name = workers + waiting, 0, name

    async def run(self, fn, *args):
        if self.admitted >= self.limit:
            what = "large images" if self.name == "heavy" else "requests"
            raise ApiError(503, f"busy: {self.admitted} {what} ahead; try again in 1 s", {"Retry-After": "1"})
        self.admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.admitted -= 1


def add_api_routes(app, models: Models, light: Lane, heavy: Lane, timeout_s: float, body_budget: int = BODY_BUDGET) -> None:
    """POST /predict (opened on the `light` lane, answered there or, over LIGHT_PIXELS, on the
    `heavy` one; body_budget bytes of bodies held at most, else 503) and GET /api/models."""
    from fastapi import Request
    from fastapi.responses import Response
    from starlette.requests import ClientDisconnect

    budget = BodyBudget(body_budget)

    def light_answer(body: bytes, form: str, name: str, upright: bool):
        """On the light lane: the answer, or the opened image when it belongs to the heavy lane."""
        image = open_image(form_file(body, form) if form.lower().startswith("multipart/form-data") else body)
        return image if is_heavy(image) else models.answer(image, name, upright)

    @app.post("/predict", summary="The digit(s) in an image",
              description="Body: the raw bytes of an image file (PNG, JPEG, GIF, BMP, WebP, HEIC, ...), a data URL "
                          "(data:image/png;base64,...), or a multipart form with a file (curl -F file=@digit.png); "
                          "?model= in any case; ?upright=true for a picture known to be upright (a drawing: "
                          "no quarter turns are read). Answer: model, status (ok | no_digit | unsure | several_digits), "
                          "digit, probability, topk, number, digits, turned (degrees, when read turned), probabilities (10), image (the 28x28 the model saw, "
                          "a PNG data URL), features (first two conv layers' maps, or null), ms. "
                          "400/408/413/415 for bad input, 503 + Retry-After when busy.")
    async def predict_route(request: Request, model: str | None = None, upright: bool = False):
        name = models.check(model)
        try:
            body, reserved = await read_body(request, timeout_s, budget)
        except ClientDisconnect:  # the client left: nobody to answer, nothing to log
            return Response(status_code=499)
        try:  # a form is parsed on the worker, after admission
            answer = await light.run(light_answer, body, request.headers.get("content-type", ""), name, upright)
            if not isinstance(answer, dict):  # an opened image over LIGHT_PIXELS: decoded where it delays no drawing
                answer = await heavy.run(models.answer, answer, name, upright)
        finally:
            budget.held -= reserved
        return Response(json.dumps(answer).encode(), media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.get("/api/models", summary="The models this server has (the one marked default answers when ?model= is absent)")
    async def api_models():
        return models.describe()


def add_docs_route(app) -> None:
    """GET /docs: a plain HTML page listing the API's routes from the app's OpenAPI description."""
    from fastapi.responses import HTMLResponse

    @app.get("/docs", include_in_schema=False)
    async def docs():
        spec = app.openapi()
        rows = "".join(f"<h2>{html.escape(method.upper())} {html.escape(path)}</h2><p>{html.escape(op.get('summary', ''))}</p>"
                       f"<p>{html.escape(op.get('description', ''))}</p>"
                       for path, ops in spec["paths"].items() for method, op in ops.items())
        return HTMLResponse(f"<!doctype html><meta charset=utf-8><title>API</title><body style='font:15px system-ui;max-width:760px;"
                            f"margin:2em auto'><h1>{html.escape(spec['info']['title'])}</h1><p>{html.escape(spec['info']['description'])}"
                            f"</p>{rows}<p>The machine-readable description: <a href=/openapi.json>/openapi.json</a> "
                            "(load it into any OpenAPI viewer).</p>")


def add_static_route(app) -> None:
    """The catch-all: files of web/ for GET/HEAD, 405 with Allow on the routes registered before it, 404 otherwise.
    Register it last (it answers every path the routes before it do not)."""
    from fastapi import Request
    from fastapi.responses import Response

    fixed = {}  # path -> methods, for a 405 with Allow when the catch-all below sees a known path
    for route in app.routes:
        if getattr(route, "methods", None) and "{" not in route.path:
            fixed.setdefault(route.path, set()).update(route.methods | ({"HEAD"} if "GET" in route.methods else set()))

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"],
                   include_in_schema=False)
    async def static(request: Request, path: str):
        """Files of web/ only: the resolved path must stay inside it (no ../, no absolute paths, no links out)."""
        url_path = request.url.path
        if url_path in fixed:
            raise ApiError(405, f"{request.method} is not supported on {url_path}", {"Allow": ", ".join(sorted(fixed[url_path]))})
        try:
            target = (WEB / (path or "index.html")).resolve()
            found = target.is_relative_to(WEB.resolve()) and target.is_file() and target.suffix in CONTENT_TYPES
        except (OSError, ValueError):  # a name too long, a NUL byte, ...
            found = False
        if not found:
            raise ApiError(404, f"no such page or endpoint: {request.method} {url_path} (the API is POST /predict, GET /api/models)")
        if request.method not in ("GET", "HEAD"):
            raise ApiError(405, f"{request.method} is not supported on {url_path}", {"Allow": "GET, HEAD"})
        return Response(target.read_bytes(), media_type=CONTENT_TYPES[target.suffix],
                        headers={"Cache-Control": "no-cache"})


def create_app(models: Models, timeout_s: float = REQUEST_TIMEOUT_S, workers: int = WORKERS, max_waiting: int = MAX_WAITING,
               body_budget: int = BODY_BUDGET, heavy_workers: int = HEAVY_WORKERS, heavy_waiting: int = HEAVY_WAITING):
    """The FastAPI app over loaded `models`: JSON error handlers, POST /predict and GET /api/models,
    GET /docs, then the catch-all for web/ (last, so it sees only what the others do not answer)."""
    from fastapi import FastAPI

    app = FastAPI(title="MNIST study: draw a digit", version="2", docs_url=None, redoc_url=None,
                  description="POST an image (file bytes or a base64 data URL) to /predict; the answer is JSON. "
                              "Errors are JSON too: {\"error\": one line, \"status\": the HTTP status}.")
    light, heavy = Lane(workers, max_waiting, "light"), Lane(heavy_workers, heavy_waiting, "heavy")
    add_error_handlers(app)
    add_api_routes(app, models, light, heavy, timeout_s, body_budget)
    add_docs_route(app)
    add_static_route(app)
    app.state.models, app.state.lanes = models, (light, heavy)
    return app


class Server:
    """uvicorn serving create_app(models) on a socket bound at construction (port 0 picks a free
    one: see .port). serve_forever() blocks; start() serves on a thread; shutdown() stops it."""

    def __init__(self, weights: list[str], host: str = "127.0.0.1", port: int = 8000, quiet: bool = False,
                 timeout_s: float = REQUEST_TIMEOUT_S, workers: int = WORKERS, max_waiting: int = MAX_WAITING,
                 body_budget: int = BODY_BUDGET):
        import uvicorn

        self.models = Models(weights)
        self.models.warm_up()
        self.app = create_app(self.models, timeout_s, workers, max_waiting, body_budget)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(2048)  # connections wait in the backlog from now on, even before uvicorn starts
        except OSError:
            self.sock.close()
            raise
        self.server_address = self.sock.getsockname()[:2]
        self.port = self.server_address[1]
        config = uvicorn.Config(self.app, http=make_protocol(timeout_s), lifespan="off", backlog=2048,
                                timeout_keep_alive=5, log_level="warning" if quiet else "info", access_log=not quiet)
        self.uvicorn = uvicorn.Server(config)
        self._thread = None

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            for lane in self.app.state.lanes:
                lane.pool.shutdown(wait=False, cancel_futures=True)

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="uvicorn")
        self._thread.start()
        while not self.uvicorn.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server stopped while starting")
            time.sleep(0.01)
        return self

    def shutdown(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()


def make_server(weights: list[str], host: str = "127.0.0.1", port: int = 8000, quiet: bool = False, **limits) -> Server:
    """The server, bound but not yet serving (call serve_forever or start); port 0 picks a free one."""
    return Server(weights, host, port, quiet, **limits)


SCREENSHOTS = {"web_demo.png": (1280, 800), "web_demo-phone.png": (375, 667), "web_demo-landscape.png": (844, 390)}
THREE = [[(90, 75), (125, 52), (170, 55), (195, 85), (180, 120), (140, 138)],  # a 3, in canvas px (280x280)
         [(140, 138), (185, 150), (200, 190), (180, 228), (135, 240), (90, 222)]]


def screenshots(weights: list[str], out_dir: Path = ROOT / "screenshots") -> list[Path]:
    """The page with a 3 drawn and answered, at each size of SCREENSHOTS, in Debian's headless
    Chromium through Playwright (the browser tests' setup), served on a free port of 127.0.0.1.
    Returns the files written; RuntimeError when Playwright or chromium is missing."""
    import shutil

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise RuntimeError("screenshots need Playwright (pip install -r requirements.txt)") from None
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("screenshots need chromium (apt-get install chromium)")
    server = make_server(weights, "127.0.0.1", 0, quiet=True).start()
    written = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
            for name, (width, height) in SCREENSHOTS.items():
                context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1 if width > 1000 else 2)
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{server.port}/")
                page.wait_for_function("document.querySelectorAll('#model option').length > 0")
                box = page.locator("#canvas").bounding_box()
                s = box["width"] / 280
                for points in THREE:
                    page.mouse.move(box["x"] + points[0][0] * s, box["y"] + points[0][1] * s)
                    page.mouse.down()
                    for x, y in points[1:]:
                        page.mouse.move(box["x"] + x * s, box["y"] + y * s, steps=8)
                    page.mouse.up()
                page.wait_for_function("window.__penUp === null && document.querySelector('#digit').textContent === '3'", timeout=30_000)
                out_dir.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out_dir / name))  # the viewport: what a person sees right after drawing
                written.append(out_dir / name)
                context.close()
            browser.close()
    finally:
        server.shutdown()
    return written


def default_weights() -> list[str]:
    return [str(p) for m in (*STUDY_MODELS, *EXTRA_MODELS) if (p := ROOT / "weights" / f"{m}.pt").exists()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Serve a page to draw digits on, and POST /predict, from trained checkpoints.")
    p.add_argument("--weights", nargs="+", help="checkpoints to serve (default: weights/<model>.pt of each study model and QuickNet that exists)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only; 0.0.0.0 for your network)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.add_argument("--timeout", type=float, default=REQUEST_TIMEOUT_S, help="seconds a request's headers, then its body, may take to arrive")
    p.add_argument("--workers", type=int, default=WORKERS, help="inference threads (memory grows with each)")
    p.add_argument("--max-waiting", type=int, default=MAX_WAITING, help="requests queued beyond the running ones before 503")
    p.add_argument("--screenshots", action="store_true", help="write screenshots/web_demo*.png (the page after drawing a 3, "
                                                                  "desktop and phone sizes, headless Chromium) and exit")
    a = p.parse_args(argv)
    weights = a.weights or default_weights()
    if not weights:
        sys.exit("error: no weights to serve: train one (python train.py --model convnet) or pass --weights FILE.pt")
    if a.screenshots:
        try:
            for path in screenshots(weights):
                print(f"wrote {path.relative_to(ROOT)}")
        except RuntimeError as e:
            sys.exit(f"error: {e}")
        return 0
    try:
        server = make_server(weights, a.host, a.port, a.quiet, timeout_s=a.timeout, workers=a.workers, max_waiting=a.max_waiting)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: cannot listen on {a.host}:{a.port} ({e.strerror}); pick another --port")
    host, port = server.server_address
    print(f"serving {', '.join(server.models.names)} at http://{host}:{port}/  (API: /docs; Ctrl-C stops)", flush=True)
    server.serve_forever()  # uvicorn handles Ctrl-C: finishes the requests in flight, then returns
    return 0


if __name__ == "__main__":
    sys.exit(main())
