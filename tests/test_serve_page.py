"""web/index.html in Debian's headless Chromium (Playwright) against a real serve.py on 127.0.0.1:
the time from pen-up to the final guess, late answers dropped (Clear during a request), a model
switch after an upload, uploads shown in the box (button, drop, paste), errors said once in plain
words, refusals without a confident-looking bar, "reading..." and one retry after a 503, several
digits, tiny drawings, one pointer at a time, and the answer in view on phones (portrait and
landscape) and on a desktop; what a stranger reads (percentages that are no certainty, messages
never cut, the link to the scores on a phone, which model answered, Details in plain words, a
drawing that stays put), and a 1 written with an upstroke. Nothing here writes into the tree (the
screenshots are `python serve.py --screenshots`)."""

import base64
import json

import pytest

import serve
from test_serve import CHROMIUM, SEVEN, THREE, WEIGHTS, browser, draw, encode, test_digits  # noqa: F401 (a fixture)

PEN_UP_LIMIT_MS = 300  # CI's bound on pen-up -> final guess; benchmarks/serve_load.py records the real figure
SCREENS = {"phone 375x667": (375, 667), "phone 390x844": (390, 844), "phone landscape 667x375": (667, 375),
           "phone landscape 844x390": (844, 390), "desktop 1280x800": (1280, 800)}


@pytest.fixture(scope="module")
def server():
    srv = serve.make_server(WEIGHTS, "127.0.0.1", 0, quiet=True).start()
    yield srv.port
    srv.shutdown()


@pytest.fixture(scope="module")
def chromium():
    sync_playwright = browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(chromium, port, width=1100, height=900, phone=False):
    context = chromium.new_context(viewport={"width": width, "height": height}, is_mobile=phone, has_touch=phone,
                                   device_scale_factor=2 if phone else 1)
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_function("document.querySelectorAll('#model option').length === 3")
    return context, page


@pytest.fixture
def page(chromium, server):
    context, page = open_page(chromium, server)
    yield page
    context.close()


def text(page, selector):
    return page.locator(selector).text_content()


def busy(page) -> str:
    """What the answer strip says is in progress ("reading your drawing...", a retry), or ""."""
    return page.locator("#answer").get_attribute("data-busy") or ""


def visible_text(page) -> str:
    return page.evaluate("document.body.innerText")


def predict_requests(page) -> list:
    """A list that fills with the page's POST /predict requests as they are sent."""
    sent = []
    page.on("request", lambda r: sent.append(r) if "/predict" in r.url else None)
    return sent


def final_guess(page, digit: str):
    page.wait_for_function(f"window.__penUp === null && document.querySelector('#digit').textContent === '{digit}'",
                           timeout=15_000)


def test_default_model_is_the_best_on_validation_and_nothing_is_broken_before_the_first_result(page):
    assert page.locator("#model").input_value() == "convnet"  # val_acc 0.9976 in its checkpoint, the DNN's 0.9934
    for hidden in ("#seen", "#conv1", "#conv2", "#layers", "#preview"):  # nothing empty or broken before a result
        assert page.locator(hidden).is_hidden()
    assert text(page, "#confidence") == "draw a digit in the box"
    assert page.locator("#confidence").get_attribute("aria-live") == "polite"
    assert page.evaluate("fetch('/favicon.ico').then(r => r.status)") == 200
    page.keyboard.press("Tab")  # Clear, then Upload: both reachable by keyboard
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "upload-button"


def test_the_page_says_what_it_is_and_keeps_technical_details_behind_a_toggle(page):
    words = visible_text(page)
    assert "MNIST" in words and "70,000 handwritten digits" in words and "not sure" in words and "upload" in words
    assert "% test" not in words and "conv1" not in words and "x14x14" not in words  # no jargon up front
    assert "%" not in page.locator("#model").inner_text()  # the menu names models only
    page.click("#details summary")
    assert "right of MNIST's 10,000 test digits" in visible_text(page)
    assert page.locator("#model-table tbody tr").count() == 3


def test_pen_up_to_final_guess(page):
    latencies = []
    for strokes, digit in ((SEVEN, "7"), (THREE, "3"), (SEVEN, "7")):
        page.click("#clear")
        draw(page, strokes)
        page.wait_for_function(f"document.querySelector('#digit').textContent === '{digit}' && window.__latencies.length > 0"
                               f" && window.__penUp === null", timeout=15_000)
        latencies.append(page.evaluate("window.__latencies[window.__latencies.length - 1]"))
        page.evaluate("window.__latencies = []")
    print(f"pen-up -> final guess: {', '.join(f'{t:.0f}' for t in latencies)} ms")
    assert sorted(latencies)[1] < PEN_UP_LIMIT_MS, latencies  # the median of three


def test_clear_during_a_request_leaves_no_answer(page):
    held = []
    page.route("**/predict*", lambda route: held.append(route))  # every request waits until released
    draw(page, SEVEN)
    page.wait_for_function("true")
    assert held, "drawing sent nothing"
    page.click("#clear")
    page.unroute("**/predict*")
    for route in held:  # the server answers them now, after Clear
        try:
            route.continue_()
        except Exception:  # aborted by the page on purpose
            pass
    page.wait_for_timeout(1500)
    assert text(page, "#digit") == "?" and text(page, "#confidence") == "draw a digit in the box"
    assert page.locator("#seen").is_hidden() and page.locator(".bar.top").count() == 0 and busy(page) == ""


def test_a_slow_answer_shows_reading_once_under_the_last_answer_dimmed(page):
    held = []
    page.route("**/predict*", lambda route: held.append(route))
    draw(page, SEVEN)  # the first drawing: nothing to keep, the strip says it once
    page.wait_for_function("document.querySelector('#answer').dataset.busy === 'reading your drawing...'", timeout=2_000)
    assert text(page, "#confidence") == "reading your drawing..." and visible_text(page).count("reading") == 1
    assert "draw a digit" not in visible_text(page)
    page.unroute("**/predict*")
    for route in held:
        try:
            route.continue_()
        except Exception:
            pass
    final_guess(page, "7")
    answer = text(page, "#confidence")
    held.clear()
    page.route("**/predict*", lambda route: held.append(route))
    shown_after = page.evaluate("""async () => { const t0 = performance.now(); send(canvasPGM(), true);
        while ($("answer").dataset.busy !== "reading your drawing...") await sleep(5); return performance.now() - t0; }""")
    assert 140 <= shown_after < 1000, shown_after  # not at once: a fast answer would only flicker
    # the last answer stays, dimmed, with one line saying what is going on
    assert text(page, "#confidence") == answer and text(page, "#sub") == "reading your drawing..."
    assert page.locator("#answer.stale").count() == 1 and visible_text(page).count("reading") == 1
    assert float(page.evaluate("getComputedStyle(document.querySelector('#confidence')).opacity")) < 0.6
    page.unroute("**/predict*")
    for route in held:
        try:
            route.continue_()
        except Exception:
            pass
    page.wait_for_function("!document.querySelector('#answer').dataset.busy && document.querySelector('#digit').textContent === '7'",
                           timeout=15_000)
    assert page.locator("#answer.stale").count() == 0


def test_a_503_is_retried_once_after_retry_after(page):
    draw(page, SEVEN)
    final_guess(page, "7")
    calls = []

    def busy_once(route):
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(status=503, headers={"Retry-After": "1"}, content_type="application/json",
                          body='{"error": "busy: 66 requests ahead; try again in 1 s", "status": 503}')
        else:
            route.continue_()
    page.route("**/predict*", busy_once)
    page.evaluate("() => { document.querySelector('#digit').textContent = '?'; send(canvasPGM(), false); }")
    page.wait_for_function("document.querySelector('#answer').dataset.busy.includes('trying again in 1 s')", timeout=5_000)
    final_guess(page, "7")
    assert len(calls) == 2 and busy(page) == "" and page.locator("#confidence").get_attribute("class") == ""
    page.unroute("**/predict*")
    calls.clear()
    page.route("**/predict*", lambda route: (calls.append(1), route.fulfill(
        status=503, headers={"Retry-After": "1"}, content_type="application/json", body='{"error": "busy", "status": 503}')))
    page.evaluate("() => { send(canvasPGM(), false); }")
    page.wait_for_function("document.querySelector('#confidence').className === 'error'", timeout=10_000)
    assert len(calls) == 2  # one retry, then the words
    assert text(page, "#confidence") == "The server is busy: try again in a moment"


def test_model_switch_after_an_upload_reruns_it_and_the_dnn_shows_no_empty_panels(page, test_digits, tmp_path):
    path = tmp_path / "seven.png"
    path.write_bytes(encode(test_digits[0][7], "PNG"))
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('ConvNet answered')", timeout=15_000)
    assert text(page, "#digit") == "7" and page.locator("#layers").is_visible()
    sent = predict_requests(page)
    page.select_option("#model", "dnn")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('DNN answered')", timeout=15_000)
    assert len(sent) == 1 and "model=dnn" in sent[0].url and text(page, "#digit") == "7"
    assert text(page, "#confidence").startswith("DNN: a 7 (")  # which model answered
    # where the maps would be, a sentence says why there are none
    assert page.locator("#layers").is_visible() and page.locator("#maps").is_hidden()
    assert text(page, "#layers-note") == "DNN has no convolution layers, so there are no feature maps to show."


def test_an_upload_is_shown_in_the_box_with_its_name(page, test_digits, tmp_path):
    path = tmp_path / "my seven.png"
    path.write_bytes(encode(test_digits[0][7], "PNG"))
    page.set_input_files("#upload", str(path))
    final = "document.querySelector('#status').textContent.startsWith('ConvNet answered')"
    page.wait_for_function(final, timeout=15_000)
    assert page.locator("#preview").is_visible() and text(page, "#upload-name") == "my seven.png"
    assert page.evaluate("document.querySelector('#preview').naturalWidth") == 140
    page.click("#clear")
    assert page.locator("#preview").is_hidden() and page.locator("#upload-name").is_hidden()


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_an_image_can_be_dropped_or_pasted(page, test_digits, how):
    data = base64.b64encode(encode(test_digits[0][4], "PNG")).decode()
    page.evaluate("""([data, how]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "four.png", { type: "image/png" }));
        if (how === "drop") document.querySelector("#pad").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        else document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true }));
    }""", [data, how])
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('ConvNet answered')", timeout=15_000)
    assert text(page, "#digit") == "4" and text(page, "#upload-name") == "four.png" and page.locator("#preview").is_visible()


def test_a_big_photo_is_shrunk_in_the_browser_before_it_is_sent(page, tmp_path):
    from PIL import Image, ImageDraw
    photo = Image.new("RGB", (4000, 3000), (235, 232, 225))  # 12 megapixels, dark ink on light paper
    ImageDraw.Draw(photo).line([(1500, 900), (2500, 900), (1800, 2300)], fill=(30, 30, 40), width=120)
    path = tmp_path / "photo.png"
    photo.save(path)
    page.evaluate("""() => { const f = window.fetch;  // keep what the page sends (Playwright does not show Blob bodies)
                                window.fetch = (url, opts) => { if (opts && opts.body) window.__sent = opts.body; return f(url, opts); }; }""")
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('ConvNet answered')", timeout=30_000)
    size = page.evaluate("createImageBitmap(window.__sent).then(b => [b.width, b.height, window.__sent.size])")
    assert size[:2] == [1600, 1200] and size[2] < 2 * 1024 * 1024 and text(page, "#digit") == "7", size


def boxes(page) -> list:
    return [page.locator(s).bounding_box() for s in ("#answer", "#pad", "#result", "#seen-box", "#bars")]


def test_a_failed_upload_says_so_once_in_plain_words_and_the_layout_holds(page, tmp_path):
    empty = boxes(page)
    draw(page, SEVEN)
    final_guess(page, "7")
    answered = boxes(page)
    path = tmp_path / "notes.png"
    path.write_bytes(b"this is not an image at all")
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.querySelector('#confidence').className === 'error'", timeout=15_000)
    words = text(page, "#confidence")
    assert words == "Not an image: try a JPEG or PNG"
    assert visible_text(page).lower().count("not an image") == 1  # said once (the server's own line is in the details)
    assert "Pillow" not in visible_text(page) and "request body" not in visible_text(page)
    assert page.locator("#seen").is_hidden() and page.locator(".bar.top").count() == 0
    assert empty == answered == boxes(page)  # empty, answered and error states: the same layout


def test_an_empty_canvas_or_a_tap_sends_nothing(page):
    sent = predict_requests(page)
    page.select_option("#model", "convnet")  # a model switch with nothing drawn
    page.click("#clear")
    page.evaluate("predictCanvas(true)")  # what pen-up does
    page.wait_for_timeout(300)
    assert sent == [] and text(page, "#confidence") == "draw a digit in the box"
    box = page.locator("#canvas").bounding_box()
    page.mouse.click(box["x"] + 100, box["y"] + 100)  # a tap: a dot, not a digit (it would read as a "0")
    page.wait_for_timeout(300)
    assert sent == [] and text(page, "#confidence").startswith("draw a digit")


def test_a_tiny_drawing_is_asked_to_be_drawn_bigger(page):
    sent = predict_requests(page)
    box = page.locator("#canvas").bounding_box()
    tiny = [[(120 + x * 0.25, 120 + y * 0.3) for x, y in points] for points in SEVEN]  # ~30 x 50 px of 280
    draw(page, tiny)
    page.wait_for_timeout(400)
    assert box and sent == [] and text(page, "#digit") == "?"
    assert text(page, "#confidence") == "Draw it bigger: fill most of the box"


def test_refusals_are_shown_in_words_without_a_confident_bar(page):
    """The page's words for each status, fed the server's answers for real drawings."""
    page.click("#clear")
    draw(page, SEVEN)
    final_guess(page, "7")
    j = page.evaluate("fetch('/predict', {method: 'POST', body: canvasPGM()}).then(r => r.json())")
    # two refusals, told apart in plain words: between two digits, or like no digit at all
    for status, reason, words, why in (("unsure", "digit_score", "ConvNet: not sure", "it does not look like a handwritten digit"),
                                       ("unsure", "probability", "ConvNet: not sure", "it could be a 4 or a 9"),
                                       ("no_digit", None, "ConvNet: no digit found", "draw one, large, in the box"),
                                       ("several_digits", None, "ConvNet: the number 37", "2 digits, read one at a time")):
        answer = {**j, "status": status, "digit": None, "reason": reason, "topk": [[4, 0.55], [9, 0.44], [7, 0.01]],
                  "number": "37" if status == "several_digits" else None,
                  "digits": [{**j, "digit": 3}, {**j, "digit": 7}] if status == "several_digits" else []}
        page.evaluate(f"show({json.dumps(answer)})")
        assert (text(page, "#confidence"), text(page, "#sub")) == (words, why), status
        if status == "unsure":  # the closest digit's score is no confidence: no highlighted bar, no numbers, and it says so
            assert page.locator(".bar.top").count() == 0 and page.locator("#bars.refused").count() == 1
            assert "not a confidence" in text(page, "#bars-note") and "%" not in text(page, "#answer")
            assert "%" not in text(page, "#bars") and text(page, "#bars-title") == "Each digit's score (no answer)"
    for number, digits, turned, why in (("-7", [7], None, "one digit and the sign as written"),
                                        ("3.5", [3, 5], None, "2 digits, read one at a time and the sign as written"),
                                        ("4", None, 90, "“sure”: how often such answers are right; the picture was read turned 90°")):
        answer = {**j, "status": "several_digits" if digits else "ok", "digit": None if digits else int(number), "turned": turned,
                  "number": number if digits else None, "digits": [{**j, "digit": d} for d in digits or []], "reason": None}
        page.evaluate(f"show({json.dumps(answer)})")
        assert text(page, "#sub") == why and text(page, "#digit") == number, number
    for digit, words in ((8, "ConvNet: an 8 ("), (7, "ConvNet: a 7 (")):
        page.evaluate(f"show({json.dumps({**j, 'digit': digit})})")
        assert text(page, "#confidence").startswith(words)


def test_an_answer_cut_short_is_an_error_not_a_guess(page):
    """A 200 whose body is not whole JSON (a connection cut mid-body) says so, and ends the pen-up wait."""
    page.route("**/predict*", lambda route: route.fulfill(status=200, content_type="application/json", body='{"digit": 7, "prob'))
    draw(page, SEVEN)
    page.wait_for_function("window.__penUp === null && document.querySelector('#confidence').className === 'error'",
                           timeout=15_000)
    assert text(page, "#digit") == "!" and "cut short" in text(page, "#confidence") and "could not be read (200" in text(page, "#status")
    assert page.evaluate("window.__latencies.length") == 0


def test_two_digits_side_by_side_are_read_as_a_number_and_labelled(page):
    left = [[(x * 0.5 + 5, y) for x, y in points] for points in THREE]
    right = [[(x * 0.5 + 135, y) for x, y in points] for points in SEVEN]
    draw(page, left + right)
    page.wait_for_function("window.__penUp === null && document.querySelector('#digit').textContent === '37'", timeout=15_000)
    assert text(page, "#confidence") == "ConvNet: the number 37" and text(page, "#sub") == "2 digits, read one at a time"
    assert "2 digits" in text(page, "#seen-title") and "first digit (a 3)" in text(page, "#bars-title")
    assert "(the first digit)" in text(page, "#layers-title")
    assert page.evaluate("document.querySelector('#seen').naturalWidth") == 56


def touch(cdp, kind, points):
    cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, x, y in points]})


def touch_draw(page, strokes):
    """Strokes drawn with touch events (Chrome DevTools protocol), as a finger would."""
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#canvas").bounding_box()
    sx, sy = box["width"] / 280, box["height"] / 280
    for points in strokes:
        pts = [(box["x"] + x * sx, box["y"] + y * sy) for x, y in points]
        touch(cdp, "touchStart", [(0, *pts[0])])
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            for k in range(1, 9):
                touch(cdp, "touchMove", [(0, x0 + (x1 - x0) * k / 8, y0 + (y1 - y0) * k / 8)])
        touch(cdp, "touchEnd", [])


def ink_at(page, x, y) -> int:
    return page.evaluate(f"ctx.getImageData({int(x)}, {int(y)}, 1, 1).data[0]")


def test_a_second_finger_neither_draws_nor_joins_strokes(chromium, server):
    context, page = open_page(chromium, server, 390, 844, phone=True)
    try:
        cdp = page.context.new_cdp_session(page)
        box = page.locator("#canvas").bounding_box()
        s = box["width"] / 280
        at = lambda x, y: (box["x"] + x * s, box["y"] + y * s)  # noqa: E731 (canvas px -> page px)
        touch(cdp, "touchStart", [(0, *at(60, 60))])
        touch(cdp, "touchMove", [(0, *at(60, 140))])
        touch(cdp, "touchStart", [(0, *at(60, 140)), (1, *at(220, 220))])  # a second finger lands far away
        for k in range(1, 6):
            touch(cdp, "touchMove", [(0, *at(60, 140 + 16 * k)), (1, *at(220 - 10 * k, 220))])
        touch(cdp, "touchEnd", [(0, *at(60, 220))])
        touch(cdp, "touchEnd", [])
        page.wait_for_timeout(300)
        assert ink_at(page, 60, 100) > 200 and ink_at(page, 60, 200) > 200  # the first finger's stroke
        assert ink_at(page, 220, 220) == 0 and ink_at(page, 190, 220) == 0  # the second finger drew nothing
        assert ink_at(page, 140, 180) == 0 and ink_at(page, 140, 140) == 0  # nor joined the two
    finally:
        context.close()


@pytest.mark.parametrize("screen", list(SCREENS))
def test_the_answer_is_in_view_while_and_after_drawing(chromium, server, screen):
    width, height = SCREENS[screen]
    phone = width < 1000
    context, page = open_page(chromium, server, width, height, phone=phone)
    try:
        pad = page.locator("#pad").bounding_box()
        assert pad["y"] >= 0 and pad["y"] + pad["height"] <= height + 0.5 and pad["x"] + pad["width"] <= width + 0.5, pad
        assert pad["width"] >= 200 and pad["height"] < height  # big enough to draw on, and the page is still reachable
        held = []
        page.route("**/predict*", lambda route: held.append(route))
        (touch_draw if phone else draw)(page, THREE)
        page.wait_for_function("document.querySelector('#answer').dataset.busy === 'reading your drawing...'", timeout=2_000)
        answer = page.locator("#answer").bounding_box()  # while the answer is on its way
        assert 0 <= answer["y"] and answer["y"] + answer["height"] <= height and answer["x"] + answer["width"] <= width + 0.5
        page.unroute("**/predict*")
        for route in held:
            try:
                route.continue_()
            except Exception:
                pass
        final_guess(page, "3")
        answer = page.locator("#answer").bounding_box()
        scroll = page.evaluate("window.scrollY")
        assert 0 <= answer["y"] and answer["y"] + answer["height"] <= height, (screen, answer, scroll)
        assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing runs off the side
    finally:
        context.close()


# -----------------------------------------------------------------------------
# What a stranger reads, on a phone and on a desktop

TWO_SCREENS = ["phone 375x667", "desktop 1280x800"]


@pytest.fixture(params=TWO_SCREENS)
def screen_page(request, chromium, server):
    width, height = SCREENS[request.param]
    context, page = open_page(chromium, server, width, height, phone=width < 1000)
    yield page, width, height
    context.close()


def drawn(page, strokes, digit):
    """Strokes drawn (touch on a phone, the mouse on a desktop), then the final answer awaited."""
    (touch_draw if page.viewport_size["width"] < 1000 else draw)(page, strokes)
    final_guess(page, digit)


def seen_pixels(page) -> list:
    """The 28 x 28n image the model saw, as the page shows it: rows of grey values 0..255."""
    return page.evaluate("""() => { const img = document.querySelector('#seen'), c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data, rows = [];
        for (let y = 0; y < c.height; y++) { const row = []; for (let x = 0; x < c.width; x++) row.push(d[4 * (y * c.width + x)]); rows.push(row); }
        return rows; }""")


def test_percentages_never_read_as_certainty_and_sure_is_explained_by_the_answer(screen_page):
    page, _, _ = screen_page
    drawn(page, SEVEN, "7")
    words = text(page, "#confidence")
    assert words.startswith("ConvNet: a 7 (") and words.endswith(" sure)") and "100" not in words and "." not in words, words
    assert text(page, "#sub") == "“sure”: how often such answers are right" and page.locator("#sub").is_visible()
    bars = [t for t in page.locator("#bars .p").all_text_contents()]
    assert ">99%" in bars and not any("100" in t or "." in t for t in bars), bars


MESSAGES = [  # every kind of message the strip shows, made by the page's own functions; the longest model name
    *[f"resetResult(plainError({status}, {{error: 'the file is empty'}}), 'error')" for status in (400, 408, 413, 415, 500, 503)],
    "resetResult('The server did not answer: is it still running?', 'error')",
    "resetResult('The answer was cut short: try again', 'error')",
    "resetResult('Could not reach the server: reload the page', 'error')",
    "predictCanvas(true)",  # the tiny drawing the test draws first: "Draw it bigger"
    *[f"show({{...J, model: 'ensemble', status: 'unsure', digit: null, reason: '{r}'}})"
      for r in ("probability", "digit_score", "shape", "mark", "orientation")],
    "show({...J, model: 'ensemble', status: 'unsure', digit: null, reason: 'probability', digits: [{...J, status: 'ok'}, {...J, status: 'unsure'}]})",
    "show({...J, model: 'ensemble', status: 'no_digit', digit: null})",
    "show({...J, model: 'ensemble', status: 'several_digits', number: '2026', digits: [J, J, J, J]})",
    "show({...J, model: 'ensemble', digit: 8, probability: 0.87})",
    "show({...J, model: 'ensemble'}); setBusy('the server is busy; trying again in 5 s...')",
    "resetResult('', ''); setBusy(`reading ${shortName('IMG_20261206_153012_a_very_long_name_indeed.jpeg')}...`)",
]


@pytest.mark.parametrize("screen", ["phone 375x667", "phone landscape 667x375", "desktop 1280x800"])
def test_every_message_fits_the_answer_strip_and_the_canvas_stays_put(chromium, server, screen):
    context, page = open_page(chromium, server, *SCREENS[screen], phone=SCREENS[screen][0] < 1000)
    try:
        every_message_fits(page)
    finally:
        context.close()


def every_message_fits(page):
    draw(page, [[(120 + x * 0.25, 120 + y * 0.3) for x, y in points] for points in SEVEN])  # too small to read
    pad = page.locator("#pad").bounding_box()
    j = page.evaluate("fetch('/predict', {method: 'POST', body: canvasPGM()}).then(r => r.json())")
    page.evaluate(f"window.J = {json.dumps({**j, 'topk': [[4, 0.55], [9, 0.44], [7, 0.01]]})}")
    for snippet in MESSAGES:
        page.evaluate(snippet)
        cut = page.evaluate("""() => { const r = document.querySelector('#answer').getBoundingClientRect();
            return [...document.querySelectorAll('#answer > *, #words > *')].filter(e => e.getClientRects().length)
                .filter(e => { const b = e.getBoundingClientRect(); return b.top < r.top || b.bottom > r.bottom + 0.5 || b.right > r.right + 0.5; })
                .map(e => e.id + ': ' + e.textContent); }""")
        assert cut == [], (snippet, cut, text(page, "#answer"))
        assert page.locator("#pad").bounding_box() == pad, snippet


def test_on_a_phone_a_link_in_the_strip_leads_to_the_scores(screen_page):
    page, width, height = screen_page
    drawn(page, SEVEN, "7")
    more = page.locator("#more")
    if width >= 1000:  # the scores are beside the drawing
        assert more.is_hidden() and page.locator("#bars").bounding_box()["y"] < height
        return
    assert more.is_visible() and text(page, "#more") == "scores and details ↓"
    strip, link = page.locator("#answer").bounding_box(), more.bounding_box()
    assert strip["y"] <= link["y"] and link["y"] + link["height"] <= strip["y"] + strip["height"]
    assert page.locator("#bars").bounding_box()["y"] > height  # below the fold until asked for
    more.click()
    page.wait_for_function(f"(() => {{ const b = document.querySelector('#bars').getBoundingClientRect(); "
                           f"return b.top >= 0 && b.top < {height} / 2; }})()", timeout=5_000)


def test_model_names_are_readable_and_the_strip_says_which_model_answered(screen_page):
    page, _, _ = screen_page
    assert page.locator("#model option").all_text_contents() == ["ConvNet", "DNN", "ensemble of the two"]
    drawn(page, SEVEN, "7")
    assert text(page, "#confidence").startswith("ConvNet: a 7 (")
    page.select_option("#model", "ensemble")
    page.wait_for_function("document.querySelector('#confidence').textContent.startsWith('Ensemble: a 7 (')", timeout=15_000)
    assert text(page, "#layers-title") == "What the first layers of ConvNet see (one of the two models in the ensemble)"
    page.select_option("#model", "dnn")
    page.wait_for_function("document.querySelector('#confidence').textContent.startsWith('DNN: a 7 (')", timeout=15_000)
    assert text(page, "#layers-note") == "DNN has no convolution layers, so there are no feature maps to show."


def test_details_are_in_plain_words_and_the_phone_header_is_short(screen_page):
    page, width, _ = screen_page
    head = page.locator("#head p")
    assert head.bounding_box()["height"] <= 3.2 * float(page.evaluate("parseFloat(getComputedStyle(document.querySelector('#head p')).lineHeight)"))
    drawn(page, SEVEN, "7")
    page.click("#details summary")
    details = text(page, "#details")
    for jargon in ("kind", "calibrated", "threshold", "second check", "conv1", "x14x14", "mean softmax"):
        assert jargon not in details, jargon
    assert page.locator("#model-table th").all_text_contents() == ["model", "parameters", "right of MNIST's 10,000 test digits"]
    import re
    assert re.fullmatch(r"ConvNet answered in \d+ ms on the server\.", text(page, "#status")), text(page, "#status")
    rows = [r.split("\t") for r in page.locator("#model-table tbody").inner_text().splitlines()]
    assert rows[0][0] == "ConvNet (the default)" and re.fullmatch(r"\d,\d{3}", rows[0][2].strip()), rows
    assert "first convolution layer makes 64 maps of 14x14 pixels" in text(page, "#layer-shapes")


def test_opening_details_does_not_move_the_drawing(chromium, server):
    context, page = open_page(chromium, server, *SCREENS["desktop 1280x800"])
    try:
        drawn(page, SEVEN, "7")
        before = [page.locator(s).bounding_box() for s in ("#answer", "#pad", "#controls")]
        page.click("#details summary")
        assert page.locator("#model-table").is_visible()
        assert [page.locator(s).bounding_box() for s in ("#answer", "#pad", "#controls")] == before
    finally:
        context.close()


def test_an_upload_says_reading_its_name_once(screen_page, test_digits, tmp_path):
    page, _, _ = screen_page
    held = []
    page.route("**/predict*", lambda route: held.append(route))
    path = tmp_path / "photo.png"
    path.write_bytes(encode(test_digits[0][7], "PNG"))
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.querySelector('#answer').dataset.busy === 'reading photo.png...'", timeout=5_000)
    page.wait_for_timeout(400)  # past the 150 ms after which a request says "reading"
    assert held and text(page, "#confidence") == "reading photo.png..." and visible_text(page).count("reading") == 1
    page.unroute("**/predict*")
    for route in held:
        try:
            route.continue_()
        except Exception:
            pass
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('ConvNet answered')", timeout=15_000)
    assert busy(page) == "" and "reading" not in visible_text(page)


def test_what_the_model_saw_is_shown_whole_in_a_frame(screen_page):
    page, _, _ = screen_page
    drawn(page, SEVEN, "7")
    rows = seen_pixels(page)
    inked = [y for y, row in enumerate(rows) if max(row) > 60]
    assert len(rows) == 28 and inked[-1] - inked[0] + 1 >= 19, inked  # the framed 20-px box, nothing lost at the edge
    shown = page.evaluate("""() => { const img = document.querySelector('#seen'), s = getComputedStyle(img);
        return [img.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight),
                img.clientHeight - parseFloat(s.paddingTop) - parseFloat(s.paddingBottom), parseFloat(s.paddingBottom)]; }""")
    assert shown[:2] == [84, 84] and shown[2] >= 4, shown  # all 28 rows at 3 px each, on a mat: an edge is seen as the edge


def test_the_model_label_and_its_menu_share_a_line(screen_page):
    page, _, _ = screen_page
    label, menu = page.locator("label[for=model]").bounding_box(), page.locator("#model").bounding_box()
    assert abs((label["y"] + label["height"] / 2) - (menu["y"] + menu["height"] / 2)) < 4 and label["x"] < menu["x"]
    page.select_option("#model", "ensemble")  # the longest name
    label, menu = page.locator("label[for=model]").bounding_box(), page.locator("#model").bounding_box()
    assert abs((label["y"] + label["height"] / 2) - (menu["y"] + menu["height"] / 2)) < 4


# A "1" drawn as many people write it: a short upstroke into the top of the stem, no base (canvas px of 280)
FLAG_ONE = [[(122, 61), (154, 37), (154, 240)]]


def test_a_one_with_an_upstroke_is_never_a_confident_other_digit(screen_page):
    page, _, _ = screen_page
    draw(page, FLAG_ONE) if page.viewport_size["width"] >= 1000 else touch_draw(page, FLAG_ONE)
    page.wait_for_function("window.__penUp === null && document.querySelector('#status').textContent !== ''", timeout=15_000)
    assert text(page, "#digit") in ("1", "?"), text(page, "#confidence")


@pytest.mark.parametrize("model", ["convnet", "dnn"])
def test_a_one_with_an_upstroke_is_seen_and_read_as_a_one(page, model):
    page.select_option("#model", model)
    draw(page, FLAG_ONE)
    page.wait_for_function("window.__penUp === null && document.querySelector('#status').textContent !== ''", timeout=15_000)
    rows = seen_pixels(page)
    tall = [y for y, row in enumerate(rows) if max(row) > 60]
    wide = [x for x in range(len(rows[0])) if max(row[x] for row in rows) > 60]
    # what the model saw is the stem, 20 px tall and a few wide (the upstroke alone framed is ~17 x 20)
    assert tall[-1] - tall[0] + 1 >= 19 and wide[-1] - wide[0] + 1 <= 10, (tall, wide)
    assert text(page, "#digit") == "1", text(page, "#confidence")
