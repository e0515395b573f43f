"""Load test of serve.py: a server it starts itself on 127.0.0.1, bounded in requests and time.

    python benchmarks/serve_load.py                  # the full run (~1 min); writes benchmarks/results/serve_load.{json,md}
    python benchmarks/serve_load.py --quick          # small counts and a 2 s request timeout (CI): prints, saves nothing
    python benchmarks/serve_load.py --update-docs    # only rewrite the table in docs/demo.md from serve_load.json
    python benchmarks/serve_load.py --note "while 3 other jobs ran"   # said in the table's header

Phases, each against the same server process (`python serve.py --quiet`, the study's models, the
page's default model): POST /predict of a drawn digit (the 280x280 PGM the page sends) at
concurrency 1, 50 and 200, with latency p50/p99 and errors by kind (HTTP status, reset, timeout);
200 slow clients that send half a body and wait, with the latency of normal requests meanwhile
and the time until the server has closed every slow connection; three 10000x10000 PNGs at once
(refused from their header); three semi-transparent RGBA PNGs, then three float32 TIFFs, at once
(4999x4999 px, just under serve.MAX_PIXELS; 3000x3000 in --quick), small on the wire and costly to
decode, with drawings sent one after another meanwhile (what a person drawing waits while they
decode in the server's heavy lane); in the full run, three grey PNGs of the largest size; and (unless --no-browser; when
Playwright and Chromium are there) the time from pen-up to the final guess in headless Chromium. The server's resident memory (VmRSS, sampled every 20 ms) is recorded per
phase. Linux only (/proc). The client runs on the same cores as the server: on a 2-core machine
the figures are the server's and the client's together.
"""

import argparse
import datetime
import http.client
import io
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLE_BEGIN = "<!-- serve:load (written by benchmarks/serve_load.py --update-docs from benchmarks/results/serve_load.json) -->"
TABLE_END = "<!-- /serve:load -->"
DOCS = ROOT / "docs" / "demo.md"  # the page on the demo, where the table lives
DEADLINE_S = {"quick": 180, "full": 900}  # the whole run stops (server killed) past this


def cpu_name() -> str:
    try:
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        return f"{names[0].strip()} ({os.cpu_count()} cores)" if names else f"{os.cpu_count()} cores"
    except OSError:
        return f"{os.cpu_count()} cores"


def rss_mb(pid: int) -> float:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024


class PeakRSS:
    """The largest VmRSS of `pid` while the with-block runs (sampled every 20 ms), in MB."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, AttributeError):
                return
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def drawn_digit() -> bytes:
    """A 7 drawn as the page draws it (white 20 px strokes on a black 280x280 canvas), as the PGM the page sends."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(img).line([(80, 70), (200, 70), (120, 230)], fill=255, width=20, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PPM")  # mode L -> binary PGM (P5)
    return buf.getvalue()


def big_png(side: int = 10000) -> bytes:
    """A side x side PNG of white paper with a dark 7 drawn across it (compresses to ~100 kB)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (side, side), 255)
    s = side / 280
    ImageDraw.Draw(img).line([(80 * s, 70 * s), (200 * s, 70 * s), (120 * s, 230 * s)], fill=0, width=int(20 * s))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def heavy_image(kind: str, side: int) -> bytes:
    """A side x side file that is small on the wire and costly to decode, a 7 drawn across it:
    "rgba": a PNG of semi-transparent paper (alpha 96) with nearly opaque ink (the mode whose
    compositing took full-size float arrays); "float": a float32 TIFF (deflate), ink 1.0 on 0.0."""
    from PIL import Image, ImageDraw

    if kind == "rgba":
        img, paper, ink, fmt = Image.new("RGBA", (side, side), (255, 255, 255, 96)), None, (20, 20, 20, 230), "PNG"
    else:
        img, paper, ink, fmt = Image.new("F", (side, side), 0.0), None, 1.0, "TIFF"
    s = side / 280
    ImageDraw.Draw(img).line([(80 * s, 70 * s), (200 * s, 70 * s), (120 * s, 230 * s)], fill=ink, width=int(20 * s))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}))
    return buf.getvalue()


HEAVY_NAMES = {"rgba": "semi-transparent RGBA PNGs", "float": "float32 TIFFs"}


def heavy_with_drawings(port: int, pid: int, body: bytes, drawing: bytes, n: int = 3, gap_s: float = 0.1) -> dict:
    """n heavy files POSTed at once; meanwhile drawings, one after another (gap_s apart), until
    every heavy one is answered: what a person drawing waits while the heavy uploads decode."""
    drawn = []
    with PeakRSS(pid) as rss, ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        heavy = [pool.submit(post, port, body) for _ in range(n)]
        time.sleep(0.2)  # the heavy ones are in
        while not all(f.done() for f in heavy) and time.perf_counter() - t0 < 120:
            drawn.append(post(port, drawing, DRAWING, timeout=30))
            time.sleep(gap_s)
        results = [f.result() for f in heavy]
        wall = time.perf_counter() - t0
    ok = sorted(t for k, t in drawn if k == "200")
    return {"images": n, "bytes": len(body), "by_kind": {k: sum(1 for r in results if r[0] == k) for k, _ in results},
            "max_ms": round(1000 * max(t for _, t in results), 1), "wall_s": round(wall, 2), "peak_rss_mb": round(rss.peak),
            "drawings": {"requests": len(drawn), "by_kind": {k: sum(1 for r in drawn if r[0] == k) for k, _ in drawn},
                         "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
                         "max_ms": round(1000 * ok[-1], 1) if ok else None}}


def phone_jpeg(width: int = 4032, height: int = 3024) -> bytes:
    """A 12 MP phone photo as the camera writes it: a dark 7 on grey paper with sensor grain
    (sigma 5 per channel), JPEG quality 95 (~3.9 MB: over the page's 2 MB, under serve.MAX_BODY)."""
    import numpy as np
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 200)
    s, cx = height / 280, width / 2
    ImageDraw.Draw(img).line([(cx - 60 * s, 70 * s), (cx + 60 * s, 70 * s), (cx - 20 * s, 230 * s)], fill=40, width=int(20 * s))
    grain = np.random.default_rng(0).normal(0, 5, (height, width, 3))
    rgb = np.clip(np.asarray(img, np.float32)[..., None] + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def phones(port: int, pid: int, n: int) -> dict:
    """n phone photos POSTed at once: what serve.BODY_BUDGET lets in (200) and turns away (503)."""
    body = phone_jpeg()
    with PeakRSS(pid) as rss, ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda _: post(port, body), range(n)))
        wall = time.perf_counter() - t0
    return {"images": n, "jpeg_bytes": len(body), "by_kind": {k: sum(1 for r in results if r[0] == k) for k, _ in results},
            "p50_ms": round(1000 * statistics.median(t for _, t in results), 1), "max_ms": round(1000 * max(t for _, t in results), 1),
            "wall_s": round(wall, 2), "peak_rss_mb": round(rss.peak)}


DRAWING = "/predict?upright=true"  # how the page sends a drawing: upright, no quarter turns read


def post(port: int, body: bytes, path: str = "/predict", timeout: float = 60.0) -> tuple[str, float]:
    """One POST on a fresh connection: (its kind: "200", "503", ..., "reset", "timeout", "refused", "<Exception>"), seconds)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body)
        r = conn.getresponse()
        r.read()
        kind = str(r.status)
    except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
        kind = "reset"
    except socket.timeout:
        kind = "timeout"
    except ConnectionRefusedError:
        kind = "refused"
    except OSError as e:
        kind = type(e).__name__
    finally:
        conn.close()
    return kind, time.perf_counter() - t0


def summary(results: list[tuple[str, float]], wall_s: float) -> dict:
    ok = sorted(t for k, t in results if k == "200")
    kinds = {}
    for k, _ in results:
        kinds[k] = kinds.get(k, 0) + 1

    def pct(q):
        return None if not ok else round(1000 * ok[min(len(ok) - 1, int(q * len(ok)))], 1)
    return {"requests": len(results), "by_kind": kinds, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "max_ms": round(1000 * ok[-1], 1) if ok else None, "answered_per_s": round(len(ok) / wall_s, 1), "wall_s": round(wall_s, 2)}


def concurrency(port: int, pid: int, body: bytes, workers: int, total: int) -> dict:
    """`total` POSTs from `workers` threads, each starting its next as soon as its last is answered."""
    with PeakRSS(pid) as rss, ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda _: post(port, body, DRAWING), range(total)))
        wall = time.perf_counter() - t0
    return {"concurrency": workers, **summary(results, wall), "peak_rss_mb": round(rss.peak)}


def slow_clients(port: int, pid: int, body: bytes, n: int, timeout_s: float, normal: int) -> dict:
    """n connections that send their headers and half their body, then wait; meanwhile `normal`
    ordinary requests one after another; then the time until the server has closed every slow one."""
    with PeakRSS(pid) as rss:
        socks = []
        half = b"x" * 5000
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout_s + 10)
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000\r\n\r\n" + half)
            socks.append(s)
        time.sleep(min(1.0, timeout_s / 4))  # held, not arriving: the server has read what they sent
        t0 = time.perf_counter()
        during = [post(port, body, DRAWING) for _ in range(normal)]
        closed, answers = [], {}
        for s in socks:
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except (socket.timeout, ConnectionResetError):
                data += b" <no close>"
            closed.append(time.perf_counter() - t0)
            status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed without answer"
            answers[status] = answers.get(status, 0) + 1
            s.close()
    alive = threading.active_count()
    return {"slow_clients": n, "normal_during": summary(during, sum(t for _, t in during)),
            "all_closed_after_s": round(max(closed), 2), "slow_answered": answers, "server_timeout_s": timeout_s,
            "peak_rss_mb": round(rss.peak), "client_threads_left": alive}


def huge_pngs(port: int, pid: int, side: int = 10000, n: int = 3) -> dict:
    body = big_png(side)
    with PeakRSS(pid) as rss, ThreadPoolExecutor(n) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda _: post(port, body), range(n)))
        wall = time.perf_counter() - t0
    return {"images": n, "png_bytes": len(body), "pixels": f"{side}x{side}", "by_kind": {k: sum(1 for r in results if r[0] == k) for k, _ in results},
            "max_ms": round(1000 * max(t for _, t in results), 1), "wall_s": round(wall, 2), "peak_rss_mb": round(rss.peak)}


def pen_up(port: int, drawings: int) -> dict | None:
    """The page's own record (window.__latencies) of pen-up -> final guess shown, in headless Chromium."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not os.path.exists(chromium):
        return None
    strokes = {"7": [[(80, 70), (200, 70)], [(200, 70), (120, 230)]],
               "1": [[(140, 50), (140, 240)]]}
    times = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = b.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0")
            box = page.locator("#canvas").bounding_box()
            for i in range(drawings):
                digit = "71"[i % 2]
                page.click("#clear")
                page.evaluate("window.__latencies = []")
                for points in strokes[digit]:
                    page.mouse.move(box["x"] + points[0][0] * box["width"] / 280, box["y"] + points[0][1] * box["height"] / 280)
                    page.mouse.down()
                    for x, y in points[1:]:
                        page.mouse.move(box["x"] + x * box["width"] / 280, box["y"] + y * box["height"] / 280, steps=12)
                    page.mouse.up()
                # the last stroke's final guess; an earlier stroke's may have been superseded, never recorded
                page.wait_for_function("window.__penUp === null && window.__latencies.length > 0", timeout=20_000)
                times.append(page.evaluate("window.__latencies[window.__latencies.length - 1]"))
            model = page.locator("#model").input_value()
        finally:
            b.close()
    times.sort()
    return {"drawings": drawings, "model": model, "p50_ms": round(statistics.median(times), 1), "max_ms": round(times[-1], 1),
            "browser": "headless Chromium (Debian's), Playwright"}


def start_server(weights: list[str] | None, timeout_s: float) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, str(ROOT / "serve.py"), "--port", "0", "--quiet", "--timeout", str(timeout_s)]
    if weights:
        cmd += ["--weights", *weights]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        proc.kill()
        sys.exit(f"error: serve.py did not start: {line.strip() or proc.stderr.read().strip().splitlines()[-1:]}")
    return proc, int(m.group(1))


def run(quick: bool, weights: list[str] | None, browser: bool, note: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import serve  # for its limits; the server itself runs in its own process
    timeout_s = 2.0 if quick else serve.REQUEST_TIMEOUT_S
    proc, port = start_server(weights, timeout_s)
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_name(), "note": note, "quick": quick,
           "command": "python benchmarks/serve_load.py" + (" --quick" if quick else "")}
    try:
        body = drawn_digit()
        models = json.loads(urlget(port, "/api/models"))
        out["model"] = next((m["name"] for m in models if m.get("default")), models[0]["name"])
        out["models"] = [m["name"] for m in models]
        post(port, body, DRAWING)  # warm-up: first-call costs (lazy imports, allocator) are not load
        out["idle_rss_mb"] = round(rss_mb(proc.pid))
        print(f"server pid {proc.pid} on 127.0.0.1:{port}, default model {out['model']}, idle RSS {out['idle_rss_mb']} MB", flush=True)
        out["load"] = []
        for workers, total in ((1, 20), (50, 100), (200, 200)) if quick else ((1, 200), (50, 1000), (200, 1000)):
            r = concurrency(port, proc.pid, body, workers, total)
            out["load"].append(r)
            print(f"concurrency {workers:3d}: {r['requests']} requests, {r['by_kind']}, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                  f"{r['answered_per_s']}/s answered, peak RSS {r['peak_rss_mb']} MB", flush=True)
        out["slow"] = slow_clients(port, proc.pid, body, 200, timeout_s, 10 if quick else 50)
        s = out["slow"]
        print(f"200 slow clients: normal requests meanwhile p50 {s['normal_during']['p50_ms']} ms, max {s['normal_during']['max_ms']} ms "
              f"({s['normal_during']['by_kind']}); all slow ones closed after {s['all_closed_after_s']} s ({s['slow_answered']}), "
              f"peak RSS {s['peak_rss_mb']} MB", flush=True)
        out["huge"] = huge_pngs(port, proc.pid)
        h = out["huge"]
        print(f"three 10000x10000 PNGs at once: {h['by_kind']} in {h['max_ms']} ms, peak RSS {h['peak_rss_mb']} MB", flush=True)
        out["phones"] = phones(port, proc.pid, 8 if quick else 40)
        ph = out["phones"]
        print(f"{ph['images']} phone photos ({ph['jpeg_bytes'] / 1e6:.1f} MB JPEGs) at once: {ph['by_kind']}, p50 {ph['p50_ms']} ms, "
              f"max {ph['max_ms']} ms, peak RSS {ph['peak_rss_mb']} MB", flush=True)
        side = 3000 if quick else int(serve.MAX_PIXELS ** 0.5) - 1  # quick: 9 MP, still over serve.LIGHT_PIXELS
        for kind in ("rgba", "float"):
            r = out[f"heavy_{kind}"] = {"kind": kind, "pixels": f"{side}x{side}",
                                        **heavy_with_drawings(port, proc.pid, heavy_image(kind, side), body)}
            print(f"three {HEAVY_NAMES[kind]} of {side}x{side} at once: {r['by_kind']} in {r['max_ms']} ms, peak RSS "
                  f"{r['peak_rss_mb']} MB; drawings meanwhile: {r['drawings']['by_kind']}, max {r['drawings']['max_ms']} ms", flush=True)
        if not quick:  # the largest the server decodes: what bounds its memory (WORKERS of these at a time)
            out["largest"] = huge_pngs(port, proc.pid, side=int(serve.MAX_PIXELS ** 0.5) - 1)
            h = out["largest"]
            print(f"three {h['pixels']} PNGs (just under serve.MAX_PIXELS) at once: {h['by_kind']} in {h['max_ms']} ms, "
                  f"peak RSS {h['peak_rss_mb']} MB", flush=True)
        if browser:
            out["pen_up"] = pen_up(port, 6 if quick else 20)
            if out["pen_up"]:
                print(f"pen-up -> final guess in the page: p50 {out['pen_up']['p50_ms']} ms, max {out['pen_up']['max_ms']} ms "
                      f"({out['pen_up']['drawings']} drawings)", flush=True)
        out["final_rss_mb"] = round(rss_mb(proc.pid))
        out["server_alive"] = proc.poll() is None
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    out["server_log_tracebacks"] = err.count("Traceback")
    print(f"server log: {out['server_log_tracebacks']} tracebacks", flush=True)
    return out


def urlget(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


# -----------------------------------------------------------------------------
# The table (benchmarks/results/serve_load.md and docs/demo.md)


def table(o: dict) -> list[str]:
    def kinds(d):
        return ", ".join(f"{k}: {v}" for k, v in sorted(d.items()))
    head = f"Measured on {o['cpu']}{' ' + o['note'] if o.get('note') else ''}, {o['date'][:10]}; model `{o['model']}` (the page's default)"
    lines = [head + f"; server idle RSS {o['idle_rss_mb']} MB.", "",
             "| load | requests | answers | p50 | p99 | answered/s | peak server RSS |", "|---|---|---|---|---|---|---|"]
    for r in o["load"]:
        lines.append(f"| concurrency {r['concurrency']} | {r['requests']} | {kinds(r['by_kind'])} | {r['p50_ms']} ms | {r['p99_ms']} ms | "
                     f"{r['answered_per_s']} | {r['peak_rss_mb']} MB |")
    s = o["slow"]
    lines.append(f"| {s['slow_clients']} slow clients (half a body each), plus {s['normal_during']['requests']} normal requests | "
                 f"{s['normal_during']['requests']} | {kinds(s['normal_during']['by_kind'])}; the slow ones: {kinds(s['slow_answered'])}, "
                 f"all closed {s['all_closed_after_s']} s after the normal requests began (server timeout {s['server_timeout_s']:g} s) | "
                 f"{s['normal_during']['p50_ms']} ms | {s['normal_during']['max_ms']} ms (max) | | {s['peak_rss_mb']} MB |")
    for key, what in (("huge", ""), ("largest", ", just under `serve.MAX_PIXELS`")):
        if key in o:
            h = o[key]
            lines.append(f"| {h['images']} PNGs of {h['pixels']} px ({h['png_bytes'] // 1000} kB each{what}) at once | {h['images']} | "
                         f"{kinds(h['by_kind'])} | | {h['max_ms']} ms (max) | | {h['peak_rss_mb']} MB |")
    for kind in ("rgba", "float"):
        if f"heavy_{kind}" in o:
            h = o[f"heavy_{kind}"]
            d = h["drawings"]
            lines.append(f"| {h['images']} {HEAVY_NAMES[kind]} of {h['pixels']} px ({h['bytes'] // 1000} kB each) at once, "
                         f"with drawings sent one after another meanwhile | {h['images']} + {d['requests']} drawings | "
                         f"{kinds(h['by_kind'])}; drawings: {kinds(d['by_kind'])} | {d['p50_ms']} ms (drawings) | "
                         f"{d['max_ms']} ms (drawings, max); {h['max_ms']} ms (large, max) | | {h['peak_rss_mb']} MB |")
    if "phones" in o:
        ph = o["phones"]
        lines.append(f"| {ph['images']} phone photos at once ({ph['jpeg_bytes'] / 1e6:.1f} MB JPEGs of 12 MP, as the camera wrote them) | "
                     f"{ph['images']} | {kinds(ph['by_kind'])} | {ph['p50_ms']} ms | {ph['max_ms']} ms (max) | | {ph['peak_rss_mb']} MB |")
    if o.get("pen_up"):
        p = o["pen_up"]
        lines.append(f"| pen-up to final guess in the page ({p['browser']}, model `{p['model']}`) | {p['drawings']} drawings | | "
                     f"{p['p50_ms']} ms | {p['max_ms']} ms (max) | | |")
    lines += ["", f"Server log: {o['server_log_tracebacks']} tracebacks. Command: `{o['command']}`."]
    return lines


def update_docs(path: Path = DOCS, results: Path = RESULTS / "serve_load.json") -> bool:
    """Rewrite the table between TABLE_BEGIN and TABLE_END in `path` from the recorded results;
    False when the file has no such block or nothing is recorded."""
    if not path.exists():
        return False
    text = path.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text or not results.exists():
        return False
    head, rest = text.split(TABLE_BEGIN, 1)
    path.write_text(head + TABLE_BEGIN + "\n" + "\n".join(table(json.loads(results.read_text()))) + "\n" + TABLE_END
                    + rest.split(TABLE_END, 1)[1])
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts, 2 s request timeout; prints, saves nothing (CI)")
    p.add_argument("--weights", nargs="+", help="checkpoints to serve (default: serve.py's, the study's models)")
    p.add_argument("--no-browser", action="store_true", help="skip the pen-up timing in headless Chromium")
    p.add_argument("--note", default="", help='said after the CPU in the table header, e.g. "while 3 other jobs ran"')
    p.add_argument("--update-docs", action="store_true", help="only rewrite the table in docs/demo.md from serve_load.json")
    a = p.parse_args(argv)
    if a.update_docs:
        print("updated docs/demo.md" if update_docs() else "docs/demo.md has no serve:load block, or no serve_load.json yet")
        return 0
    mode = "quick" if a.quick else "full"
    timer = threading.Timer(DEADLINE_S[mode], lambda: os._exit(3))  # bounded: a hung phase cannot run on
    timer.daemon = True
    timer.start()
    o = run(a.quick, a.weights, not a.no_browser, a.note)
    timer.cancel()
    print("\n" + "\n".join(table(o)))
    if not a.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "serve_load.json").write_text(json.dumps(o, indent=2) + "\n")
        (RESULTS / "serve_load.md").write_text("\n".join(table(o)) + "\n")
        print(f"\nsaved {RESULTS / 'serve_load.json'} and .md" + ("; updated docs/demo.md" if update_docs() else ""))
    problems = [f"concurrency {r['concurrency']}: {k}" for r in o["load"] for k in r["by_kind"] if k not in ("200", "503")]
    problems += [f"huge PNGs: {k}" for k in o["huge"]["by_kind"] if not k.startswith("4")]
    problems += [f"phone photos: {k}" for k in o.get("phones", {}).get("by_kind", {}) if k not in ("200", "503")]
    problems += [f"largest PNGs: {k}" for k in o.get("largest", {}).get("by_kind", {}) if k != "200" and not k.startswith("4")]
    for kind in ("rgba", "float"):
        h = o.get(f"heavy_{kind}", {})
        problems += [f"{HEAVY_NAMES[kind]}: {k}" for k in h.get("by_kind", {}) if k != "200"]
        problems += [f"drawings during {HEAVY_NAMES[kind]}: {k}" for k in h.get("drawings", {}).get("by_kind", {}) if k != "200"]
        problems += [f"{HEAVY_NAMES[kind]}: peak RSS {h['peak_rss_mb']} MB"] * (h.get("peak_rss_mb", 0) >= 1500)
    problems += ["server died"] * (not o["server_alive"]) + ["tracebacks in the server log"] * (o["server_log_tracebacks"] > 0)
    if problems:
        print("FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
