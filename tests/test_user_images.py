"""The acceptance on ../shared/user-images (335 files, labels.csv) and ../shared/forms (digits on
forms, numbers with signs, sideways photos): each folder through `predict.py --json` with the
shipped weights/convnet.pt, in one call. The folders are required: missing, it is a failure,
never a skip (as the real-MNIST tests)."""

import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT

FOLDER = Path(os.environ.get("USER_IMAGES", ROOT.parent / "shared" / "user-images"))
CONTROLS = {"photo_even", "pencil_faint", "squared_grey", "exif1", "la_black_on_clear", "rgba_black_on_clear",
            "p_black_on_clear"}
LOW_RES = {"tiny8"}


@pytest.fixture(scope="module")
def answers():
    labels = FOLDER / "labels.csv"
    if not labels.is_file():
        pytest.fail(f"the user-images test needs {labels} (335 files); set USER_IMAGES to the folder", pytrace=False)
    rows = list(csv.DictReader(labels.open()))
    out = subprocess.run([sys.executable, str(ROOT / "predict.py"), *[str(FOLDER / r["file"]) for r in rows],
                          "--weights", str(ROOT / "weights" / "convnet.pt"), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "Traceback" not in out.stderr
    got = json.loads(out.stdout)
    assert [g["file"] for g in got] == [str(FOLDER / r["file"]) for r in rows]  # every file answered, in order
    return rows, got, out.returncode


def right(row, answer) -> bool:
    if row["label"] == "none":
        return answer["digit"] is None and answer["status"] in ("no_digit", "unsure")
    return answer["status"] == "ok" and str(answer["digit"]) == row["label"]


def test_every_file_gets_a_status_and_unreadable_ones_one_line(answers):
    rows, got, rc = answers
    assert all(g["status"] in ("ok", "no_digit", "unsure", "several_digits", "error") for g in got)
    errors = [g for g in got if g["status"] == "error"]
    assert all("\n" not in g["error"] and g["file"] in g["error"] for g in errors)
    assert rc == (1 if errors else 0)


def test_blanks_and_letters_are_refused(answers):
    rows, got, _ = answers
    blanks = [right(r, g) for r, g in zip(rows, got) if r["condition"].startswith("blank")]
    assert blanks and all(blanks)
    letters = [right(r, g) for r, g in zip(rows, got) if r["condition"] == "letter"]
    assert all(letters), f"letters refused: {sum(letters)}/{len(letters)}"


def test_phone_photos_are_read(answers):
    rows, got, _ = answers
    for r, g in zip(rows, got):
        if r["condition"].startswith("phone_12mp"):
            assert right(r, g), (r["file"], g)
        if r["condition"] == "phone_200mp_bilevel":  # the right digit, or a one-line error naming the file
            assert right(r, g) or (g["status"] == "error" and "megapixels" in g["error"])


def test_phone_photos_as_the_camera_wrote_them_through_the_server(answers):
    """The 3-4 MB phone JPEGs POSTed as they are (as `curl --data-binary @photo.jpg` does): the
    server answers as predict.py does, with the right digit."""
    import http.client

    import serve
    rows, got, _ = answers
    phones = [(r, g) for r, g in zip(rows, got) if r["condition"].startswith("phone_12mp")]
    assert phones and max((FOLDER / r["file"]).stat().st_size for r, _ in phones) > 3_000_000
    srv = serve.make_server([str(ROOT / "weights" / "convnet.pt")], "127.0.0.1", 0, quiet=True).start()
    try:
        for r, g in phones:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            conn.request("POST", "/predict", (FOLDER / r["file"]).read_bytes())
            resp = conn.getresponse()
            j = json.loads(resp.read())
            conn.close()
            assert resp.status == 200 and j["status"] == "ok" and str(j["digit"]) == r["label"], (r["file"], j.get("error"))
            assert j["probability"] == pytest.approx(g["probability"], abs=1e-6)  # the same answer as predict.py's
    finally:
        srv.shutdown()


def shortfalls(answers, conditions) -> dict:
    rows, got, _ = answers
    by = defaultdict(list)
    for r, g in zip(rows, got):
        if r["label"] != "none" and not r["condition"].startswith("phone_") and conditions(r["condition"]):
            by[r["condition"]].append(right(r, g))
    assert by
    return {c: f"{sum(v)}/{len(v)}" for c, v in by.items()
            if sum(v) / len(v) < (1.0 if c in CONTROLS else 0.90 if c in LOW_RES else 0.95)}


def test_per_condition_accuracy(answers):
    # digit conditions >= 95% (low resolution >= 90%), controls 100%
    short = shortfalls(answers, lambda c: True)
    assert not short, f"conditions under their bar: {short}"


# ../shared/forms: digits on forms (boxes, comb fields, circles, underlines), numbers written with
# signs, photos turned sideways without EXIF. A number counts only when `number` is the label as written.

FORMS = Path(os.environ.get("FORMS", ROOT.parent / "shared" / "forms"))
TURNED = {"rot90"}  # right, or unsure: never a confident wrong digit


@pytest.fixture(scope="module")
def form_answers():
    labels = FORMS / "labels.csv"
    if not labels.is_file():
        pytest.fail(f"the forms test needs {labels}; set FORMS to the folder", pytrace=False)
    rows = list(csv.DictReader(labels.open()))
    out = subprocess.run([sys.executable, str(ROOT / "predict.py"), *[str(FORMS / r["file"]) for r in rows],
                          "--weights", str(ROOT / "weights" / "convnet.pt"), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "Traceback" not in out.stderr and out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert [g["file"] for g in got] == [str(FORMS / r["file"]) for r in rows]
    return rows, got


def form_right(row, answer) -> bool:
    label = row["label"]
    if label == "none":
        return answer["status"] in ("no_digit", "unsure") and answer["digit"] is None and answer["number"] is None
    if not label.isdigit() or len(label) > 1:  # a number as written: "3.5", "-7", "120"
        return answer["status"] == "several_digits" and answer["number"] == label
    if row["condition"] in TURNED and answer["status"] == "unsure":
        return True
    return answer["status"] == "ok" and str(answer["digit"]) == label and answer["number"] is None


def test_form_conditions_are_read_or_refused(form_answers):
    rows, got = form_answers
    by = defaultdict(list)
    for r, g in zip(rows, got):
        by[r["condition"]].append(form_right(r, g))
    assert set(by) >= {"box_tight", "comb", "circle_clear", "under_gap", "decimal", "negative", "rot90"}
    short = {c: f"{sum(v)}/{len(v)}" for c, v in by.items() if sum(v) < 0.95 * len(v)}
    assert not short, f"form conditions under 95%: {short}"


def test_form_numbers_keep_their_digits_left_to_right(form_answers):
    rows, got = form_answers
    for r, g in zip(rows, got):
        if g["status"] == "several_digits":
            assert g["number"].replace(".", "").replace(",", "").lstrip("-") == "".join(str(d["digit"]) for d in g["digits"])
            assert all(0 <= d["probability"] <= 1 for d in g["digits"])
        if g.get("turned") is not None:  # a turned answer says by how much
            assert g["turned"] in (90, 180, 270) and g["status"] == "ok"


# benchmarks/user_images.py: its generators and scoring (cheap, on synthetic digits)

sys.path.insert(0, str(ROOT / "benchmarks"))


def test_every_benchmark_condition_builds_readable_files():
    import numpy as np

    import predict
    import user_images
    from conftest import synthetic_digits

    x, y = synthetic_digits(6, seed=0)
    for name, (_, kind, _) in user_images.CONDITIONS.items():
        files = user_images.build(name, 1, x, y)
        assert len(files) == 1
        data, expected = files[0]
        img = predict.read_image(data, name)
        if kind == "number":  # written with its sign
            assert expected == {"decimal_point": f"{expected[0]}.{expected[2:]}", "decimal_comma": f"{expected[0]},{expected[2:]}",
                                "negative": f"-{expected[1:]}"}[name] and expected.replace(".", "").replace(",", "").lstrip("-").isdigit()
        else:
            assert expected == "none" if kind == "none" else expected.isdigit()
            assert len(expected) == {"two_digits": 2, "three_digits": 3, "box_row": 3}.get(name, 1) or kind == "none"
        if name == "bit16":
            assert img.mode.startswith("I")
        if name == "exif_rotated":
            from PIL import Image
            import io
            assert Image.open(io.BytesIO(data)).getexif().get(0x0112) in (3, 6, 8)
        assert isinstance(predict.prepare(img), list)
        if kind == "turned":  # stored turned, with no EXIF tag to undo it
            from PIL import Image
            import io
            assert 0x0112 not in Image.open(io.BytesIO(data)).getexif()
    assert np.array_equal(user_images.build("shadow", 1, x, y)[0][0], user_images.build("shadow", 1, x, y)[0][0])


def test_benchmark_scoring():
    import user_images

    ok7 = {"status": "ok", "digit": 7, "number": None}
    assert user_images.score(ok7, "7") == (True, False)
    assert user_images.score(ok7, "1") == (False, False)
    assert user_images.score({"status": "unsure", "digit": None, "number": None}, "7") == (False, True)
    assert user_images.score({"status": "unsure", "digit": None, "number": None}, "none") == (True, True)
    assert user_images.score({"status": "several_digits", "digit": None, "number": "37"}, "37") == (True, False)
    assert user_images.score({"status": "several_digits", "digit": None, "number": "3.5"}, "3.5") == (True, False)
    assert user_images.score({"status": "several_digits", "digit": None, "number": "35"}, "3.5") == (False, False)
    assert user_images.score({"status": "several_digits", "digit": None, "number": "-7"}, "-7") == (True, False)
    assert user_images.score(ok7, "-7") == (False, False)
    assert user_images.score(ok7, "none") == (False, False)


def test_benchmark_mnist_only_prints_the_check_and_writes_nothing(real_data_dir, capsys, monkeypatch, tmp_path):
    import user_images
    monkeypatch.setattr(user_images, "RESULTS", tmp_path / "results")
    assert user_images.main(["--mnist-only", "--mnist", "20", "--data-dir", str(real_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "MNIST test through predict.py (20 PNGs, convnet)" in out and not (tmp_path / "results").exists()
    with pytest.raises(SystemExit, match="--mnist N"):
        user_images.main(["--mnist-only", "--mnist", "0"])


def test_benchmark_per_recipe_reads_every_recorded_seed_file_and_writes_its_table(real_data_dir, monkeypatch, tmp_path, capsys):
    """--recipes: the seed files final_recipes.json names (the last "later" training's where a seed has one), only
    when the file here has the recorded sha256, then the shipped file; top guess per digit condition
    (never the none kinds: a refit has no rejector)."""
    import hashlib
    import user_images
    from conftest import ROOT
    sha = lambda p: hashlib.sha256((ROOT / p).read_bytes()).hexdigest()  # noqa: E731
    rec = {"models": {"convnet": {"seeds": [
        {"seed": 0, "checkpoint": "weights/dnn.pt", "sha256": sha("weights/dnn.pt"),  # trained again twice, the last here
         "later": [{"checkpoint": "runs/not-on-this-machine.pt", "sha256": "0" * 64},
                   {"checkpoint": "weights/quicknet.pt", "sha256": sha("weights/quicknet.pt")}]},
        {"seed": 1, "checkpoint": "weights/convnet.pt", "sha256": sha("weights/convnet.pt")},
        {"seed": 2, "checkpoint": "runs/not-on-this-machine.pt", "sha256": "0" * 64},
        {"seed": 3, "checkpoint": "weights/dnn.pt", "sha256": "f" * 64}]}}}  # another file than recorded
    (tmp_path / "final_recipes.json").write_text(json.dumps(rec))
    monkeypatch.setattr(user_images, "RECIPES_FILE", tmp_path / "final_recipes.json")
    monkeypatch.setattr(user_images, "RESULTS", tmp_path / "results")
    files = user_images.recipe_checkpoints()
    assert {k: f["path"] for k, f in files.items()} == {"convnet recipe seed 0": ROOT / "weights" / "quicknet.pt",
                                                        "convnet recipe seed 1": ROOT / "weights" / "convnet.pt",
                                                        "convnet shipped": ROOT / "weights" / "convnet.pt"}
    said = capsys.readouterr().out
    assert "seed 2: its file is not on this machine" in said and "seed 3: weights/dnn.pt is not the file recorded" in said
    assert user_images.main(["--recipes", "--n", "2", "--data-dir", str(real_data_dir)]) == 0
    d = json.loads((tmp_path / "results" / "user_images_recipes.json").read_text())
    assert {c["kind"] for c in d["conditions"].values()} == {"control", "digit", "several"} and "tiny8" in d["conditions"]
    assert d["files"]["convnet recipe seed 0"] == {"model": "convnet", "seed": 0, "checkpoint": "weights/quicknet.pt",
                                                   "sha256": sha("weights/quicknet.pt")}
    for c in d["conditions"].values():  # one file under two labels scores the same; every share is of n images
        assert c["files"]["convnet recipe seed 1"] == c["files"]["convnet shipped"]
        assert all(round(a * c["n"]) == a * c["n"] for a in c["files"].values())
    assert "| convnet recipe seed 0 |" in (tmp_path / "results" / "user_images_recipes.md").read_text()
    with pytest.raises(SystemExit, match="study.py --only recipes"):
        user_images.recipe_checkpoints(tmp_path / "missing.json")


def test_benchmark_per_recipe_keeps_the_rows_of_earlier_files_that_are_not_here():
    """--recipes after a recipe changed: the files an earlier record measured and that are gone
    (runs/ is not committed) keep their rows, dated, under a label of their own where the new files
    took theirs; a file still here is measured again, not copied; another n or other conditions: none kept."""
    import user_images
    prev = {"date": "2026-11-29T10:00:00+00:00", "n_per_condition": 30,
            "files": {"resnet recipe seed 0": {"model": "resnet", "seed": 0, "checkpoint": "runs/a.pt", "sha256": "a"},
                      "convnet shipped": {"model": "convnet", "seed": None, "checkpoint": "weights/convnet.pt", "sha256": "c"}},
            "conditions": {"plain": {"files": {"resnet recipe seed 0": 0.9, "convnet shipped": 1.0}},
                           "tiny8": {"files": {"resnet recipe seed 0": 0.8, "convnet shipped": 0.7}}}}
    files = {"resnet recipe seed 0": {"model": "resnet", "seed": 0, "sha256": "b"},
             "convnet shipped": {"model": "convnet", "seed": None, "sha256": "c"}}
    results = {"plain": {"files": {"resnet recipe seed 0": 0.95, "convnet shipped": 1.0}},
               "tiny8": {"files": {"resnet recipe seed 0": 0.85, "convnet shipped": 0.7}}}
    kept = user_images.keep_earlier(prev, files, results, 30)
    old = "resnet recipe seed 0, earlier file (2026-11-29)"
    assert list(kept) == [old] and kept[old]["sha256"] == "a" and kept[old]["measured"] == prev["date"]
    assert results["plain"]["files"] == {"resnet recipe seed 0": 0.95, "convnet shipped": 1.0, old: 0.9}
    assert results["tiny8"]["files"][old] == 0.8
    # measured again later, with its file still gone: the row keeps its label and date; a clash gets a mark
    again = {"date": "2026-11-30T10:00:00+00:00", "n_per_condition": 30, "files": {**files, **kept}, "conditions": results}
    files2 = {"resnet recipe seed 0": {"model": "resnet", "seed": 0, "sha256": "d"}}
    results2 = {c: {"files": {"resnet recipe seed 0": 0.5}} for c in ("plain", "tiny8")}
    kept2 = user_images.keep_earlier(again, files2, results2, 30)
    assert set(kept2) == {old, "resnet recipe seed 0, earlier file (2026-11-30)", "convnet shipped, earlier file (2026-11-30)"}
    assert kept2[old]["measured"] == prev["date"] and results2["tiny8"]["files"][old] == 0.8
    assert results2["tiny8"]["files"]["resnet recipe seed 0, earlier file (2026-11-30)"] == 0.85
    assert user_images.keep_earlier(prev, files, {"plain": {"files": {}}}, 30) == {}
    assert user_images.keep_earlier(prev, files, results, 20) == {} and user_images.keep_earlier(None, files, results, 30) == {}


def test_the_server_reads_every_form_as_predict_py_does(form_answers):
    """The demo's API reads a picture as `predict.py` does (predict.answer_marks): signs written
    into the number, boxes and lines set aside, sideways photos read turned, the same status."""
    import serve
    rows, got = form_answers
    models = serve.Models([str(ROOT / "weights" / "convnet.pt")])
    differ = []
    for r, g in zip(rows, got):
        j = models.predict((FORMS / r["file"]).read_bytes(), "convnet")
        said = {k: j.get(k) for k in ("status", "digit", "number", "reason", "turned")}
        if said != {k: g.get(k) for k in said}:
            differ.append((r["file"], said, g))
        # the server decodes a JPEG shrunk as it reads it (images.shrink): its pixels, and so its
        # probabilities, differ a little from predict.py's full decode; a PNG's are the same
        if not r["file"].endswith(".jpg"):
            assert j["probability"] == pytest.approx(g["probability"], abs=1e-5), r["file"]
        assert len(j["probabilities"] or []) == (10 if j["status"] != "no_digit" else 0)
    assert not differ, differ[:3]
