"""serve.py's limits over real sockets on 127.0.0.1: JSON for every error and method, request
timeouts for slow clients, the body limit while reading, the pixel limit before decoding,
503 + Retry-After instead of resets under load, and no tracebacks for clients that hang up."""

import http.client
import io
import json
import re
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

import serve
from conftest import ROOT
from test_serve import WEIGHTS, encode, test_digits  # noqa: F401 (a fixture)

TIMEOUT_S = 1.0  # the servers here time requests out after 1 s (the default is serve.REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def server():
    srv = serve.make_server(WEIGHTS, "127.0.0.1", 0, quiet=True, timeout_s=TIMEOUT_S, workers=2, max_waiting=16).start()
    yield srv.port
    srv.shutdown()


def exchange(port, data: bytes, wait: float = 10.0, shut: bool = False) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes (or `wait` passes): (what came back, seconds)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    t0 = time.perf_counter()
    try:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    finally:
        s.close()
    return out, time.perf_counter() - t0


def parse(raw: bytes) -> tuple[int, dict, dict | None]:
    """(status, headers with lower-case names, the JSON body or None) of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body) if body else None


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 255).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "TRACE", "GET", "DELETE", "PATCH"])
def test_other_methods_on_predict_are_json_405_with_allow(server, method):
    raw, _ = exchange(server, f"{method} /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status, headers, j = parse(raw)
    assert status == 405 and headers["allow"] == "POST" and headers["content-type"] == "application/json"
    if method != "HEAD":  # HEAD answers carry no body
        assert j["status"] == 405 and method in j["error"]


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", 431),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
])
def test_malformed_requests_are_json_too(server, request_bytes, status):
    raw, _ = exchange(server, request_bytes)
    got, headers, j = parse(raw)
    assert got == status and headers["content-type"] == "application/json" and j["status"] == status


@pytest.mark.parametrize("request_bytes, what", [
    (b"", "a connection that sends nothing"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n", "half the headers"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500, "half the body"),
])
def test_slow_clients_get_408_and_are_closed(server, request_bytes, what):
    raw, seconds = exchange(server, request_bytes)
    status, headers, j = parse(raw)
    assert status == 408 and j["status"] == 408, what
    assert TIMEOUT_S * 0.9 < seconds < TIMEOUT_S + 1.5, (what, seconds)


def test_body_limit_is_enforced_while_reading(server):
    too_big = serve.DRAIN_MAX + 1  # over the limit and too big to drain: refused from the header, connection closed at once
    raw, seconds = exchange(server, f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {too_big}\r\n\r\n".encode())
    status, headers, j = parse(raw)
    assert status == 413 and headers["connection"] == "close" and seconds < 1.0
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"  # 1 MiB chunks, no Content-Length: refused once over the limit
    chunked = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * (serve.MAX_BODY // 0x100000 + 1)
    status, _, j = parse(exchange(server, chunked)[0])
    assert status == 413 and "limit" in j["error"]


def test_a_refused_body_sent_with_connection_close_is_answered_not_reset(server):
    """A 20-30 MB upload (over MAX_BODY, under DRAIN_MAX) on a connection the client asked to close:
    the client sends its whole body without a broken pipe and then reads the 413."""
    import threading
    size = serve.MAX_BODY + 8_000_000
    assert size <= serve.DRAIN_MAX
    s = socket.create_connection(("127.0.0.1", server), timeout=10)
    failed = []

    def send():
        try:
            s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n".encode()
                      + b"x" * size)
        except OSError as e:
            failed.append(e)
    sender = threading.Thread(target=send)
    sender.start()
    sender.join(timeout=20)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    finally:
        s.close()
    assert not failed, failed
    status, headers, j = parse(out)
    assert status == 413 and j["status"] == 413 and "limit" in j["error"]


def test_bodies_held_at_once_stay_under_the_budget(test_digits):
    srv = serve.make_server(WEIGHTS, "127.0.0.1", 0, quiet=True, timeout_s=5.0, body_budget=100_000).start()
    try:
        held = socket.create_connection(("127.0.0.1", srv.port), timeout=10)  # announces 80 kB, sends 1 kB: held
        held.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 80000\r\n\r\n" + b"x" * 1000)
        time.sleep(0.3)
        body = encode(test_digits[0][0], "PNG")
        body += b"\0" * (50_000 - len(body))  # a real digit, padded: 80 + 50 kB is over the 100 kB budget
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("POST", "/predict", body)
        r = conn.getresponse()
        j = json.loads(r.read())
        assert r.status == 503 and j["status"] == 503 and r.getheader("Retry-After") == "1", j
        conn.close()
        held.sendall(b"x" * 79_000)  # the held body completes (not an image: 415) and gives its bytes back
        assert parse(held.recv(65536))[0] == 415
        held.close()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("POST", "/predict", body)
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["digit"] == test_digits[1][0]
        conn.close()
    finally:
        srv.shutdown()


def test_huge_images_are_refused_from_their_header(server):
    body = png(10000, 10000)  # ~120 kB of PNG, 100 megapixels
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    t0 = time.perf_counter()
    conn.request("POST", "/predict", body)
    r = conn.getresponse()
    j = json.loads(r.read())
    assert r.status == 413 and "megapixels" in j["error"] and time.perf_counter() - t0 < 2.0
    conn.close()


def post(port, body: bytes) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/predict?model=convnet", body)
        r = conn.getresponse()
        j = json.loads(r.read())
        assert j["status"] == r.status if r.status != 200 else j["model"] == "convnet"
        return r.status, r.getheader("Retry-After")
    finally:
        conn.close()


def test_200_concurrent_requests_are_all_answered(server, test_digits):
    body = encode(test_digits[0][4], "PNG")
    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(lambda _: post(server, body), range(200)))  # a reset would raise here
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 18, statuses
    assert all(retry == "1" for s, retry in results if s == 503)


def test_a_normal_request_is_answered_while_slow_clients_wait(server, test_digits):
    body = encode(test_digits[0][2], "PNG")
    slow = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", server))
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + b"x" * 10000)
        slow.append(s)
    time.sleep(0.3)  # held, not arriving: the server has read what they sent (its timeout is 1 s)
    t0 = time.perf_counter()
    assert post(server, body)[0] == 200
    took = time.perf_counter() - t0
    print(f"a normal request beside 100 slow clients: {1000 * took:.0f} ms")
    assert took < 1.0  # the benchmark records the figure (the bound: 100 ms on a quiet machine)
    closed_at = []
    for s in slow:
        s.settimeout(TIMEOUT_S + 2)
        try:
            while s.recv(65536):
                pass
        except (socket.timeout, ConnectionResetError):
            pass
        closed_at.append(time.perf_counter() - t0)
        s.close()
    assert max(closed_at) < TIMEOUT_S + 2, max(closed_at)


def test_client_disconnects_leave_no_traceback_in_the_log(test_digits):
    """The real command line, logging every request: clients that hang up at every stage."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--weights", *WEIGHTS, "--port", "0", "--timeout", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r":(\d+)/", line).group(1))
        body = encode(test_digits[0][5], "PNG")
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        for data in (b"GET / HT", head, head + body[:100], head + body, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(data)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
            s.close()
        with ThreadPoolExecutor(20) as pool:  # and many at once, mid-answer
            list(pool.map(lambda _: exchange(port, head + body, wait=0.001), range(20)))
        time.sleep(2.5)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/predict", body)
        assert conn.getresponse().status == 200  # still serving
        conn.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and "ERROR" not in err, err[-3000:]


def test_docs_work_offline_and_openapi_describes_predict(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.request("GET", "/openapi.json")
    r = conn.getresponse()
    spec = json.loads(r.read())
    assert r.status == 200 and "post" in spec["paths"]["/predict"] and "/api/models" in spec["paths"]
    conn.request("GET", "/docs")
    r = conn.getresponse()
    page = r.read().decode()
    assert r.status == 200 and "/predict" in page and "/openapi.json" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # nothing from a CDN
    conn.close()


def costly(mode: str, side: int) -> Image.Image:
    """A side x side image of `mode` with a dark 7 on light paper (light 7 on dark for F and I;16),
    drawn as a grey image and converted: every mode the server decodes differently."""
    from PIL import ImageDraw
    import numpy as np
    grey = Image.new("L", (side, side), 235)
    s = side / 280
    ImageDraw.Draw(grey).line([(80 * s, 70 * s), (200 * s, 70 * s), (120 * s, 230 * s)], fill=15, width=int(20 * s))
    a = np.asarray(grey)
    if mode == "RGBA":  # semi-transparent paper, nearly opaque ink
        return Image.merge("RGBA", (*grey.convert("RGB").split(), Image.fromarray(np.where(a < 128, 230, 96).astype(np.uint8))))
    if mode == "LA":
        return Image.merge("LA", (grey, Image.fromarray(np.where(a < 128, 255, 40).astype(np.uint8))))
    if mode == "I;16":
        return Image.fromarray(((255 - a).astype(np.uint16) * 257))
    if mode == "F":
        return Image.fromarray((255 - a).astype(np.float32) / 255 * 7.5 - 2)
    return grey.convert(mode)


MODES = ["RGBA", "LA", "I;16", "F", "P", "CMYK", "RGB", "1"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_is_shrunk_before_it_is_widened_to_floats(mode):
    """images.shrink (the server's decode path) gives what to_grey then ink's box reduction give,
    and the float arrays it builds stay a small fraction of the image (numpy's allocations are
    traced by tracemalloc): 9 MP of RGBA took ~150 MB of floats before."""
    import tracemalloc
    import numpy as np
    import images
    import ink
    img = costly(mode, 3000)
    img.load()
    ref = ink._reduce(images.to_grey(img), images.WORK_SIDE)
    tracemalloc.start()
    try:
        got = images.to_grey(images.shrink(img, images.WORK_SIDE))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.shape == ref.shape and np.abs(got - ref).max() < 0.01, mode
    assert peak < 25_000_000, (mode, peak)  # 3000 x 3000 px: float64 full-size would be 72 MB


def heavy_body(mode: str, side: int) -> bytes:
    buf = io.BytesIO()
    img = costly(mode, side)
    fmt = "TIFF" if mode in ("F", "CMYK") else "PNG"
    img.save(buf, format=fmt, **({"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}))
    return buf.getvalue()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_of_a_large_image_is_read_right(server, mode):
    body = heavy_body(mode, 2100)  # 4.4 MP: over serve.LIGHT_PIXELS, decoded in the heavy lane
    status, _, j = parse(exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                                  % len(body) + body, wait=60)[0])
    assert status == 200 and j["status"] == "ok" and j["digit"] == 7, (mode, j)


def test_a_drawing_is_answered_at_once_while_large_images_decode(test_digits):
    """Three large semi-transparent PNGs in flight (the heavy lane, one at a time): drawings sent
    meanwhile are answered within a second each, and every large one is answered too."""
    srv = serve.make_server(WEIGHTS, "127.0.0.1", 0, quiet=True, timeout_s=10.0).start()
    try:
        heavy = heavy_body("RGBA", 4000)
        drawing = encode(test_digits[0][3], "PNG")

        def post(body):
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            t0 = time.perf_counter()
            conn.request("POST", "/predict", body)
            r = conn.getresponse()
            j = json.loads(r.read())
            conn.close()
            return r.status, j, time.perf_counter() - t0
        with ThreadPoolExecutor(3) as pool:
            big = [pool.submit(post, heavy) for _ in range(3)]
            time.sleep(0.2)
            drawn = []
            while not all(f.done() for f in big) and len(drawn) < 40:
                drawn.append(post(drawing))
            answers = [f.result() for f in big]
        assert drawn and all(s == 200 and j["digit"] == 3 for s, j, _ in drawn)
        assert max(t for _, _, t in drawn) < 1.0, [round(t, 2) for _, _, t in drawn]
        assert all(s == 200 and j["digit"] == 7 for s, j, _ in answers), answers
    finally:
        srv.shutdown()
