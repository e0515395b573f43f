"""serve.py: the JSON API over real HTTP on 127.0.0.1, and the page in a real headless Chromium."""

import base64
import http.client
import io
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

import models
import predict
import serve
from conftest import ROOT, in_ci, skip_or_fail

WEIGHTS = [str(ROOT / "weights" / "convnet.pt"), str(ROOT / "weights" / "dnn.pt")]


@pytest.fixture(scope="module")
def server():
    srv = serve.make_server(WEIGHTS, "127.0.0.1", 0, quiet=True).start()
    yield srv.port
    srv.shutdown()


def request(port, method, path, body=None, headers=None):
    """(status, headers (case-insensitive), parsed JSON or raw bytes); the path is sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        is_json = r.getheader("Content-Type", "").startswith("application/json")
        return r.status, r.headers, json.loads(data) if is_json else data
    finally:
        conn.close()


@pytest.fixture(scope="module")
def test_digits(real_data_dir):
    """The first test image of every class: (28, 28) uint8 arrays and their labels."""
    import data
    _, _, x_te, y_te, _ = data.load_raw(data_dir=real_data_dir, download=False)
    idx = [int((y_te == d).nonzero()[0]) for d in range(10)]
    return [x_te[i].numpy() for i in idx], list(range(10))


def encode(a: np.ndarray, fmt: str, photo: bool = False) -> bytes:
    """A digit as a file: upscaled 5x; `photo`: dark ink on light grey paper, as a scan would be."""
    img = Image.fromarray(a).resize((140, 140), Image.BILINEAR)
    if photo:
        img = Image.fromarray((235 - np.asarray(img, np.float32) * 0.8).astype(np.uint8))
    buf = io.BytesIO()
    img.convert("RGB" if fmt in ("JPEG", "HEIF") else "L").save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt, photo", [("PNG", False), ("JPEG", True), ("HEIF", True)])
def test_png_jpeg_and_iphone_heic_digits_are_recognised(server, test_digits, fmt, photo):
    assert predict.heif_opener()  # to write the HEIC here; the server reads it through predict.read_image
    images, labels = test_digits
    got = []
    for a in images:
        status, _, j = request(server, "POST", "/predict?model=convnet", encode(a, fmt, photo))
        assert status == 200, j
        got.append(j["digit"])
        assert j["model"] == "convnet" and len(j["probabilities"]) == 10
        assert abs(sum(j["probabilities"]) - 1) < 1e-4
        seen = Image.open(io.BytesIO(base64.b64decode(j["image"].split(",", 1)[1])))
        assert seen.size == (28, 28)
        assert j["features"]["conv1"]["shape"][1:] == [14, 14] and j["features"]["conv1"]["png"].startswith("data:image/png;base64,")
    assert sum(g == y for g, y in zip(got, labels)) >= 9, (got, labels)


def form(fields: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> tuple[bytes, dict]:
    """A multipart/form-data body as curl -F writes it: (name, filename or None, bytes) per field."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"'.encode() + (f'; filename="{f}"\r\nContent-Type: '
             f'application/octet-stream'.encode() if f else b"") + b"\r\n\r\n" + data + b"\r\n" for n, f, data in fields]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_form_upload_and_any_case_model_name_are_answered(server, test_digits):
    images, labels = test_digits
    body, headers = form([("note", None, b"hello"), ("file", "digit.png", encode(images[0], "PNG"))])
    status, _, j = request(server, "POST", "/predict?model=ConvNet", body, headers)
    assert status == 200 and j["model"] == "convnet" and j["digit"] == labels[0], j
    body, headers = form([("note", None, b"hello")])
    status, _, j = request(server, "POST", "/predict", body, headers)
    assert status == 400 and j["error"].startswith("the form holds no file (in its first"), j
    body, headers = form([(f"field{i}", None, b"x") for i in range(40)] + [("file", "digit.png", encode(images[0], "PNG"))])
    status, _, j = request(server, "POST", "/predict", body, headers)  # a web form with many fields before its file
    assert status == 200 and j["digit"] == labels[0], j


def test_form_file_is_a_bounded_scan():
    ct = "multipart/form-data; boundary=b0undary"
    body, _ = form([("note", None, b"x"), ("file", "d.png", b"PNG\r\n--b0und\r")])
    assert serve.form_file(body, ct) == b"PNG\r\n--b0und\r"  # bytes as sent, a near-boundary inside them too
    assert serve.form_file(form([("image", None, b"RAW")])[0], ct) == b"RAW"  # curl -F 'image=<digit.png': no filename
    for bad, words in ((b"garbage", "the form holds no file"), (form([("note", None, b"x")])[0], "the form holds no file")):
        with pytest.raises(serve.ApiError, match=words):
            serve.form_file(bad, ct)
    with pytest.raises(serve.ApiError, match="no boundary"):
        serve.form_file(body, "multipart/form-data")
    many = form([("a", None, b"x")] * 200_000)[0] + form([("file", "d.png", b"late")])[0]  # ~10 MB of empty fields
    t0 = time.perf_counter()
    with pytest.raises(serve.ApiError):  # gives up after FORM_PARTS parts, in milliseconds, not seconds
        serve.form_file(many, ct)
    assert time.perf_counter() - t0 < 1.0


def test_data_url_ensemble_and_dnn(server, test_digits):
    images, _ = test_digits
    url = b"data:image/png;base64," + base64.b64encode(encode(images[7], "PNG"))
    status, _, j = request(server, "POST", "/predict?model=ensemble", url)
    assert status == 200 and j["model"] == "ensemble" and j["digit"] == 7
    assert j["features"]["from"] == "convnet"  # the ensemble shows its first CNN's maps
    status, _, j = request(server, "POST", "/predict?model=dnn", url)
    assert status == 200 and j["digit"] == 7 and j["features"] is None  # no convolutions to show
    status, _, models = request(server, "GET", "/api/models")
    assert [m["name"] for m in models] == ["convnet", "dnn", "ensemble"]


def test_models_have_readable_names_quicknet_is_served_and_the_ensemble_is_the_study_models():
    w = {n: str(ROOT / "weights" / f"{n}.pt") for n in ("convnet", "quicknet", "dnn", "convnet-refit")}
    assert w["quicknet"] in serve.default_weights()  # shipped, so offered
    served = serve.Models([w["convnet"], w["quicknet"], w["dnn"]])
    assert served.names == ["convnet", "quicknet", "dnn", "ensemble"] and served.members == ["convnet", "dnn"]
    described = {m["name"]: m for m in served.describe()}
    assert [described[n]["label"] for n in served.names] == ["ConvNet", "QuickNet", "DNN", "ensemble"]
    assert described["ensemble"]["members"] == ["ConvNet", "DNN"] and described["ensemble"]["model"] == "mean softmax of convnet, dnn"
    assert described["dnn"]["convolutions"] is False and described["quicknet"]["convolutions"] is True
    body = letter("7", "DejaVuSans.ttf")
    mean = np.mean([served.predict(body, n)["probabilities"] for n in ("convnet", "dnn")], axis=0)
    assert np.allclose(served.predict(body, "ensemble")["probabilities"], mean, atol=1e-5)  # QuickNet is not in it
    assert serve.Models([w["convnet-refit"]]).label("convnet-refit") == "ConvNet (convnet-refit)"  # the file named too


def test_a_drawn_seven_reaching_the_crops_edge_is_whole(server):
    """A top-heavy 7, framed as MNIST's (centre of mass at the centre), reaches the 28x28's bottom row:
    its 20-px box is shifted down, never cut (the crop the API returns is the one predict.prepare makes)."""
    from PIL import ImageDraw
    img = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(img).line([(80, 70), (200, 70), (120, 230)], fill=255, width=20, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    status, _, j = request(server, "POST", "/predict?model=convnet", buf.getvalue())
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(j["image"].split(",", 1)[1]))), np.float32) / 255
    crop = predict.prepare(predict.read_image(buf.getvalue()))[0]
    assert status == 200 and j["digit"] == 7 and np.abs(seen - crop).max() <= 1 / 255 + 1e-6
    rows = np.nonzero((seen > 0.2).any(1))[0]
    assert rows[-1] >= 26 and rows[-1] - rows[0] + 1 >= 19, rows  # at the bottom edge, and the whole 20-px box


@pytest.mark.parametrize("method, path, body, status", [
    ("POST", "/predict", b"\x00\x01 this is not an image", 415),
    ("POST", "/predict", b"", 400),
    ("POST", "/predict", b"data:image/png;base64,@@@not base64@@@", 400),
    ("POST", "/predict?model=vgg", None, 400),  # body filled in below: a valid image, unknown model
    ("GET", "/predict", None, 405),
    ("PUT", "/predict", b"x", 405),
    ("POST", "/elsewhere", b"x", 404),
    ("GET", "/../serve.py", None, 404),
    ("GET", "/..%2fserve.py", None, 404),
    ("GET", "/%2e%2e/%2e%2e/etc/passwd", None, 404),
    ("GET", "/nothing-here.html", None, 404),
])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(server, test_digits, method, path, body, status):
    if "vgg" in path:
        body = encode(test_digits[0][3], "PNG")
    got, headers, j = request(server, method, path, body)
    assert got == status
    assert isinstance(j, dict) and j["status"] == status and "\n" not in j["error"] and j["error"]
    if status == 405:
        assert "Allow" in headers
    ok, _, j = request(server, "POST", "/predict", encode(test_digits[0][3], "PNG"))  # still answering
    assert ok == 200 and j["digit"] == 3


def test_oversized_body_is_413_without_reading_it(server, test_digits):
    status, _, j = request(server, "POST", "/predict", b"0" * (serve.MAX_BODY + 1))
    assert status == 413 and "limit" in j["error"]
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.putrequest("POST", "/predict")  # announces 50 MB, sends none of it: answered at once
    conn.putheader("Content-Length", str(50 * 1024 * 1024))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413
    conn.close()
    assert request(server, "POST", "/predict", encode(test_digits[0][1], "PNG"))[0] == 200


def test_twenty_concurrent_requests_each_get_their_own_answer(server, test_digits):
    images, _ = test_digits
    bodies = [encode(images[i % 10], "PNG") for i in range(20)]
    expected = [request(server, "POST", "/predict?model=ensemble", b)[2]["probabilities"] for b in bodies[:10]] * 2
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda b: request(server, "POST", "/predict?model=ensemble", b), bodies))
    assert all(status == 200 for status, _, _ in results)
    assert [j["probabilities"] for _, _, j in results] == expected


def letter(ch: str, font_file: str) -> bytes:
    """A letter or symbol drawn as calibrate.non_digits draws them: black on white, 280x280, as PNG."""
    from PIL import ImageDraw, ImageFont

    import calibrate
    path = [f for d in calibrate.FONT_DIRS for f in d.glob(font_file)]
    assert path, f"{font_file} is not installed (Debian: fonts-dejavu-core, fonts-liberation)"
    img = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(img).text((140, 140), ch, fill=0, font=ImageFont.truetype(str(path[0]), 180), anchor="mm")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("ch, font_file", [("A", "DejaVuSans.ttf"), ("W", "DejaVuSans.ttf"), ("+", "DejaVuSans.ttf"),
                                           ("A", "LiberationSans-Regular.ttf"), ("%", "LiberationSerif-Regular.ttf"),
                                           ("=", "DejaVuSans.ttf")])
def test_api_answers_exactly_as_predict_py_for_one_model_and_the_ensemble(server, ch, font_file):
    body = letter(ch, font_file)
    grey = predict.working_grey(predict.read_image(body))
    members = [(model.eval(), ckpt) for model, ckpt in map(models.load_checkpoint, WEIGHTS)]

    def expected(members):  # what `predict.py` prints: predict.answer_marks, signs and quarter turns included
        return predict.answer_marks(predict.prepare_marks(grey), members, 3, lambda: grey)[0]

    def same(j, expected):
        assert [j[k] for k in ("status", "digit", "number")] == [expected[k] for k in ("status", "digit", "number")]
        assert [d for d, _ in j["topk"]] == [d for d, _ in expected["topk"]]
        assert j["probability"] == pytest.approx(expected["probability"], abs=1e-6)

    status, _, j = request(server, "POST", "/predict?model=convnet", body)
    assert status == 200
    same(j, expected(members[:1]))
    status, _, j = request(server, "POST", "/predict?model=ensemble", body)
    assert status == 200
    same(j, expected(members))


def test_a_rendered_letter_a_is_refused_by_the_api_as_by_predict_py(server, tmp_path, capsys):
    """DejaVu Sans "A": the ConvNet's probability alone reads it as a confident 4; its rejector refuses it."""
    body = letter("A", "DejaVuSans.ttf")
    (tmp_path / "A.png").write_bytes(body)
    assert predict.main([str(tmp_path / "A.png"), "--weights", WEIGHTS[0], "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)[0]
    status, _, j = request(server, "POST", "/predict?model=convnet", body)
    assert status == 200 and cli["status"] == j["status"] == "unsure" and cli["digit"] is j["digit"] is None
    assert cli["probability"] == pytest.approx(j["probability"], abs=1e-6)


def test_page_is_served_and_needs_no_network(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    html = body.decode()
    assert "<canvas" in html and "/predict" in html
    assert "http://" not in html and "https://" not in html  # no CDN, no web fonts from elsewhere


def test_the_default_model_is_the_convnet_else_the_best_non_refit_on_validation(tmp_path):
    """A refit's validation accuracy is in-sample (it trained on those images): it never decides the default."""
    def ckpt(name: str, val_acc: float, refit: bool) -> str:
        model = models.build_model("dnn", hidden=[8])
        raw = {"model": "dnn", "model_config": {"hidden": [8]}, "state_dict": model.state_dict(),
               "train_config": {"refit": refit}, "metrics": {"val_acc": val_acc}, "normalization": {"mean": 0.13, "std": 0.31}}
        models.save_atomic(raw, tmp_path / f"{name}.pt")
        return str(tmp_path / f"{name}.pt")
    assert serve.Models([ckpt("resnet", 1.0, True), ckpt("fastresnet", 0.99, False), ckpt("dnn", 0.98, False)]).default == "fastresnet"
    assert serve.Models([ckpt("resnet", 1.0, True), ckpt("convnet", 0.9, True)]).default == "convnet"


def test_cli_bad_weights_is_one_line_and_nonzero(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(ROOT / "serve.py"), "--weights", str(tmp_path / "none.pt"), "--port", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "none.pt" in r.stderr


# -----------------------------------------------------------------------------
# A real browser: Debian's chromium, driven by Playwright, drawing with real mouse events.

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not os.path.exists(CHROMIUM):
        skip_or_fail("the browser tests need Playwright (pip install -r requirements.txt) and chromium "
                     f"(apt-get install chromium; looked for {CHROMIUM})", ".ci/run installs both")
    return sync_playwright


def test_a_missing_browser_fails_under_ci_and_skips_outside(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    for value, outcome in (("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                           ("false", pytest.skip.Exception), ("", pytest.skip.Exception)):
        monkeypatch.setenv("CI", value)
        assert in_ci() == (outcome is pytest.fail.Exception)
        with pytest.raises(outcome, match="chromium"):
            browser()


# Strokes in canvas pixels (the canvas is 280x280), drawn as a person would.
SEVEN = [[(80, 70), (200, 70)], [(200, 70), (120, 230)]]
THREE = [[(90, 75), (125, 52), (170, 55), (195, 85), (180, 120), (140, 138)],
         [(140, 138), (185, 150), (200, 190), (180, 228), (135, 240), (90, 222)]]


def draw(page, strokes):
    box = page.locator("#canvas").bounding_box()
    sx, sy = box["width"] / 280, box["height"] / 280
    for points in strokes:
        x0, y0 = points[0]
        page.mouse.move(box["x"] + x0 * sx, box["y"] + y0 * sy)
        page.mouse.down()
        for x, y in points[1:]:
            page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=12)
        page.mouse.up()


def test_drawing_in_a_real_browser_shows_the_digit(server):
    sync_playwright = browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = b.new_page(viewport={"width": 1100, "height": 900})
            page.goto(f"http://127.0.0.1:{server}/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 3")
            page.select_option("#model", "convnet")
            for strokes, digit in ((SEVEN, "7"), (THREE, "3")):
                page.click("#clear")
                draw(page, strokes)
                page.wait_for_function(f"window.__penUp === null && document.querySelector('#digit').textContent === '{digit}'",
                                       timeout=15_000)
                assert page.locator("#seen").get_attribute("src").startswith("data:image/png")
                assert page.locator("#conv1").get_attribute("src").startswith("data:image/png")
        finally:
            b.close()


def test_a_sideways_photo_is_read_turned_unless_the_caller_says_it_is_upright(server):
    """?upright=true (the page's canvas drawings) reads no quarter turns; without it a picture with no
    EXIF tag may be a photo turned sideways, read as predict.py reads it."""
    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Oblique.ttf", 150)
    img = Image.new("L", (300, 400), 240)
    ImageDraw.Draw(img).text((150, 200), "5", fill=25, font=font, anchor="mm")
    buf = io.BytesIO()
    img.rotate(90, expand=True).save(buf, format="PNG")
    status, _, j = request(server, "POST", "/predict?model=convnet", buf.getvalue())
    assert status == 200 and j["status"] == "ok" and j["digit"] == 5 and j["turned"] == 270, j
    status, _, j = request(server, "POST", "/predict?model=convnet&upright=true", buf.getvalue())
    assert status == 200 and "turned" not in j and j["digit"] != 5, j
    status, _, j = request(server, "POST", "/predict?model=convnet&upright=maybe", buf.getvalue())
    assert status == 400 and "upright" in j["error"], j
