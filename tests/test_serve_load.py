"""benchmarks/serve_load.py's table and --update-docs (the load itself runs in CI as `--quick`)."""

import json
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import serve_load  # noqa: E402


def result() -> dict:
    load = [{"concurrency": c, "requests": 10, "by_kind": {"200": 9, "503": 1}, "p50_ms": 1.5, "p99_ms": 2.5,
             "answered_per_s": 3.0, "peak_rss_mb": 700} for c in (1, 50, 200)]
    return {"date": "2026-01-02T03:04:05", "cpu": "Some CPU (2 cores)", "note": "while idle", "quick": False, "model": "convnet",
            "idle_rss_mb": 690, "command": "python benchmarks/serve_load.py", "load": load,
            "slow": {"slow_clients": 200, "normal_during": {"requests": 5, "by_kind": {"200": 5}, "p50_ms": 4.0, "max_ms": 9.0},
                     "slow_answered": {"408": 200}, "all_closed_after_s": 10.2, "server_timeout_s": 10.0, "peak_rss_mb": 710},
            "huge": {"images": 3, "pixels": "10000x10000", "png_bytes": 120368, "by_kind": {"413": 3}, "max_ms": 12.0, "peak_rss_mb": 712},
            "phones": {"images": 40, "jpeg_bytes": 3851497, "by_kind": {"200": 17, "503": 23}, "p50_ms": 900.0, "max_ms": 2000.0,
                       "peak_rss_mb": 900},
            "heavy_rgba": {"kind": "rgba", "pixels": "4999x4999", "images": 3, "bytes": 126448, "by_kind": {"200": 3}, "max_ms": 3400.0,
                           "peak_rss_mb": 860, "drawings": {"requests": 19, "by_kind": {"200": 19}, "p50_ms": 72.2, "max_ms": 95.5}},
            "pen_up": {"drawings": 4, "model": "convnet", "p50_ms": 20.0, "max_ms": 30.0, "browser": "headless Chromium"},
            "server_log_tracebacks": 0}


def test_update_docs_rewrites_only_the_block(tmp_path):
    saved = tmp_path / "serve_load.json"
    saved.write_text(json.dumps(result()))
    readme = tmp_path / "demo.md"
    readme.write_text(f"before\n{serve_load.TABLE_BEGIN}\nold table\n{serve_load.TABLE_END}\nafter\n")
    assert serve_load.update_docs(readme, saved)
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    assert "Measured on Some CPU (2 cores) while idle, 2026-01-02" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3 + 5  # header, three concurrencies, slow clients, huge PNGs, RGBA PNGs, phones, pen-up
    assert ("| 3 semi-transparent RGBA PNGs of 4999x4999 px (126 kB each) at once, with drawings sent one after another meanwhile | "
            "3 + 19 drawings | 200: 3; drawings: 200: 19 | 72.2 ms (drawings) | 95.5 ms (drawings, max); 3400.0 ms (large, max) | | 860 MB |"
            in text)
    assert "| 40 phone photos at once (3.9 MB JPEGs of 12 MP, as the camera wrote them) | 40 | 200: 17, 503: 23 |" in text
    assert "408: 200, all closed 10.2 s after the normal requests began (server timeout 10 s)" in text and "413: 3" in text
    assert serve_load.update_docs(readme, saved) and readme.read_text() == text  # idempotent


def test_the_demo_page_has_the_block():
    text = serve_load.DOCS.read_text()
    assert serve_load.TABLE_BEGIN in text and serve_load.TABLE_END in text


def test_drawn_digit_is_the_pgm_the_page_sends():
    body = serve_load.drawn_digit()
    assert body.startswith(b"P5\n280 280\n255\n") and len(body) == len(b"P5\n280 280\n255\n") + 280 * 280


def test_the_phone_photo_is_bigger_than_the_page_sends_and_fits_the_server():
    import serve
    body = serve_load.phone_jpeg()
    assert 2 * 1024 * 1024 < len(body) < serve.MAX_BODY and body[:2] == b"\xff\xd8"
