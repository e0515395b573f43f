"""study_report.py: the committed report.md, report-appendix.md and model cards weights/<model>.md,
checked against the committed results they are written from (offline, no training), plus the
writer's pieces on small synthetic inputs."""

import json
import re
from pathlib import Path

import pytest

import study
import study_report as sr
from models import count_params, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CARD_SECTIONS = ("## Model details", "## How to use it", "## Training data", "## Metrics", "## Hardware and time",
                 "## Intended use", "## Limitations")


@pytest.fixture(scope="module")
def facts():
    if not (ROOT / "results" / "evaluation.json").exists():
        pytest.fail("results/evaluation.json is missing: the committed study results are needed (python study.py)")
    return sr.Facts(ROOT)


@pytest.fixture(scope="module")
def report():
    return (ROOT / "report.md").read_text()


def section(text: str, title: str) -> str:
    """The markdown between '## <title>...' and the next '## '."""
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_committed_markdown_is_what_the_writer_writes_now(facts):
    """Regeneration is deterministic and the committed files are up to date (python study.py --report-only)."""
    render = lambda lines: "\n".join(lines).rstrip("\n") + "\n"  # noqa: E731  (as write_text)
    assert (ROOT / "report.md").read_text() == render(sr.report_lines(facts))
    assert (ROOT / sr.APPENDIX).read_text() == render(sr.appendix_lines(facts))
    for m in facts.shipped:
        assert (ROOT / "weights" / f"{m}.md").read_text() == render(sr.card_lines(facts, m)), m
    assert render(sr.report_lines(facts)) == render(sr.report_lines(sr.Facts(ROOT)))  # twice, same bytes


def test_report_fits_ten_minutes(report):
    assert len(report.split()) <= sr.MAX_REPORT_WORDS


def test_summary_table_comes_before_step_1_and_steps_are_in_order(report):
    head = report.split("\n## Step 1")[0]
    assert "| model | parameters | test accuracy %" in head
    positions = [report.index(f"\n## Step {i}") for i in range(1, 7)]
    assert positions == sorted(positions)


def test_step_5_names_the_best_model(facts, report):
    best, _ = facts.best_model()
    assert f"best model is the {sr.NAMES[best]}" in section(report, "Step 5")


def test_no_internal_words_or_run_file_names(facts, report):
    for word in ("cell", "attempt", "shipped"):
        assert not re.search(rf"\b{word}", report, re.IGNORECASE), word
    for r in facts.records:
        assert r["name"] not in report, r["name"]
    assert not re.search(r"\b(dnn|convnet|resnet|fastresnet|quicknet)-[\w.-]*-e\d+-s\d+", report)


def test_hardware_string_at_most_twice(facts, report):
    assert facts.hardware
    for hw in facts.hardware:
        assert report.count(hw) <= 2, hw


def test_parameter_counts_are_those_of_the_weights_files(facts, report):
    rows = {}
    for line in report.split("\n## Step 1")[0].splitlines() + section(report, "Step 2").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        for m in facts.shipped:
            if cells and cells[0] == sr.NAMES[m]:
                number = next(c for c in cells[1:] if re.fullmatch(r"[\d,]+", c))
                rows.setdefault(m, set()).add(int(number.replace(",", "")))
    assert {"dnn", "convnet", "resnet"} <= set(rows)
    for m, counts in rows.items():
        assert counts == {count_params(load_checkpoint(ROOT / "weights" / f"{m}.pt")[0])}, m


def test_every_link_of_the_report_and_appendix_exists():
    for name in ("report.md", sr.APPENDIX):
        links = re.findall(r"\]\(([^)#]+)", (ROOT / name).read_text())
        assert links
        missing = [link for link in links if not (ROOT / link.replace("%20", " ")).exists()]
        assert not missing, (name, missing)


def test_a_card_per_model_file_with_its_sections(facts):
    assert {"dnn", "convnet", "resnet"} <= set(facts.shipped)
    for m in facts.shipped:
        text = (ROOT / "weights" / f"{m}.md").read_text()
        for s in CARD_SECTIONS:
            assert s in text, (m, s)
        assert f"python test_model.py --weights weights/{m}.pt" in text and "predict.py" in text
        met = facts.metrics.get(m)
        if met:
            assert f"{100 * met['accuracy']:.2f}%" in text


def test_summary_accuracies_are_test_model_numbers(facts, report):
    head = report.split("\n## Step 1")[0]
    for m in facts.models:
        row = next(line for line in head.splitlines() if line.startswith(f"| {sr.NAMES[m]} | "))
        assert row.split("|")[3].strip() == f"{100 * facts.metrics[m]['accuracy']:.2f}"


def test_test_set_count_includes_the_speed_trials(facts, report):
    u = sr.test_use(facts)
    trials = [json.loads(line) for line in (ROOT / sr.TRIALS).read_text().splitlines() if line.strip()]
    assert u["trial_points"] == sum(len(t["curve"]) for t in trials) > 0
    assert f"used: {u['total']:,} times**" in report


# -----------------------------------------------------------------------------
# The writer's pieces on synthetic inputs


def test_compare_calls_gaps_within_the_seeds_noise_ties():
    one = 1 / 5000
    best, res = sr.compare({"a": [0.9940, 0.9944, 0.9936], "b": [0.9937, 0.9935, 0.9939], "c": [0.9900, 0.9902, 0.9898]}, one)
    assert best == "a" and res["a"][2] and res["b"][2] and not res["c"][2]
    best, res = sr.compare({"x": [0.99], "y": [0.99 - one]}, one)  # one image apart: a tie by the floor
    assert res["y"][2]


def test_run_words_names_a_run_by_its_settings():
    c = {"model": "convnet", "model_config": {"width": 64}, "augment": True, "translate": 2.0, "rotate": 10.0, "scale": 0.1,
         "elastic": 34.0, "elastic_sigma": 6.0, "ema": 0.0, "optimizer": "adamw", "lr": 0.01, "epochs": 30.0, "seed": 2}
    assert sr.run_words(c) == ("ConvNet, width 64, ±2 px shifts + affine warp (±10°, ±10% scale) + elastic warp (α 34, σ 6), "
                               "AdamW lr 0.01, 30 epochs, seed 2")


def test_screenshot_of_a_json_log_keeps_the_ensemble_line():
    scored = [{"weights": "weights/a.pt", "accuracy": 0.99, "f1_macro": 0.99, "auc_ovr_macro": 0.9999, "tta": {"accuracy": 0.991}},
              {"weights": "weights/a.pt+weights/b.pt", "model": "ensemble", "accuracy": 0.995, "f1_macro": 0.995,
               "auc_ovr_macro": 0.99999, "tta": {"accuracy": 0.996}}]
    lines = sr.condense(json.dumps(scored, indent=2) + "\n", 70)
    assert any(line.startswith("ENSEMBLE of the 1 files above | 0.9950") for line in lines)
    assert len(lines) <= 70


def test_screenshot_of_a_long_test_log_drops_per_class_rows_not_epochs():
    per_class = "".join(f"           {d}     0.9959    0.9980    0.9969       980\n" for d in range(10))
    test_log = ("== weights/x.pt (x)\n" + per_class + "\nweighted avg     0.9935    0.9935    0.9935     10000\n"
                "accuracy 0.9935 | F1 macro 0.9935\n") * 5
    lines = sr.condense(test_log, 40)
    assert sum(line.startswith("accuracy 0.9935") for line in lines) == 5
    train_log = "".join(f"  {e:3d}  6.70e-05     1.5816    0.5531   0.5494   0.4867  0.9010 0.8999   3.5s\n" for e in range(1, 31))
    assert len(sr.condense(train_log, 70)) == 30


def test_step_4_reads_the_fair_comparison_when_it_exists(facts, monkeypatch):
    one = 1 / 5000
    rows = [{"optimizer": o, "lr": lr, "tuning": {lr: v[0]}, "val": v, "mean": sum(v) / len(v), "std": 0.0001}
            for o, lr, v in (("sgd", 0.1, [0.9940, 0.9942, 0.9938]), ("adam", 0.001, [0.9941, 0.9939, 0.9940]),
                             ("adamw", 0.001, [0.9930, 0.9931, 0.9929]), ("adadelta", 1.0, [0.9900, 0.9902, 0.9901]))]
    for r in rows:
        r["gap"], r["noise"] = 0.9940 - r["mean"], 2 * one
        r["tie"] = r["gap"] <= r["noise"]
    table = {"model": "convnet", "epochs": 5, "grid": [1.0, 0.1, 0.01, 0.001, 0.0001], "tune_seed": 0, "seeds": [1, 2, 3],
             "one_image": one, "best": "sgd", "rule": "a tie when ...", "rows": rows}
    monkeypatch.setattr(study, "optim_fair_table", lambda s, m: table if m == "convnet" else None, raising=False)
    text = "\n".join(sr.section_optimizers(facts))
    assert "**A fairer comparison**" in text and "#optimizer-comparison-in-full" in text  # its table: the appendix's
    assert "For the ConvNet it agrees with the choice above" in text or "For the ConvNet it disagrees" in text
    from report_cards import appendix_optimizers
    full = "\n".join(appendix_optimizers(facts))
    assert "| 0.001 | 99.40 ± 0.01 | 0.0 | tie |" in full and "| 1 | 99.01 ± 0.01 | 19.5 | behind |" in full
    monkeypatch.setattr(study, "optim_fair_table", lambda s, m: None, raising=False)
    assert re.search(r"has not (run yet|finished)", "\n".join(sr.section_optimizers(facts)))


def test_training_curves_use_the_unsmoothed_training_loss_when_recorded(tmp_path):
    import types
    config = {"model": "convnet", "model_config": {"width": 32}, "augment": True, "translate": 2.0, "optimizer": "sgd", "lr": 0.1,
              "epochs": 3.0, "seed": 0, "label_smoothing": 0.1}
    hist = [{"epoch": str(e), "train_acc": str(0.9 + e / 100), "val_acc": str(0.95 + e / 100), "val_loss": str(0.2 / e),
             "train_loss": str(0.6 / e)} for e in (1, 2, 3)]
    old = {"train_config": config, "metrics": {"epoch": 3.0}, "history": hist}
    assert "validation cross-entropy only" in sr.curves_caption(old) and "ε = 0.1" in sr.curves_caption(old)
    new = {**old, "history": [{**h, "train_ce": str(0.25 / float(h["epoch"]))} for h in hist]}
    assert "the same un-smoothed cross-entropy for both" in sr.curves_caption(new)
    f = types.SimpleNamespace(cards={"convnet": new}, root=tmp_path)
    assert sr.figure_curves(f, "convnet") == "figures/curves_convnet.png"
    assert (tmp_path / "figures" / "curves_convnet.png").stat().st_size > 5000


def test_card_lists_the_user_image_conditions_where_the_model_does_worst(tmp_path):
    """user_image_text reads benchmarks/user_images.py's shape: conditions[c]["models"][m]["right"/"refused"]."""
    import report_cards
    from types import SimpleNamespace

    def cond(kind, n, a, b):
        return {"kind": kind, "note": f"{kind} note", "n": n,
                "models": {"a": {"right": a[0], "refused": a[1]}, "b": {"right": b[0], "refused": b[1]}}}
    d = {"models": ["a", "b"], "conditions": {
        "plain": cond("control", 30, (1.0, 0.0), (0.9, 0.1)), "shadow": cond("digit", 30, (0.8, 0.1), (1.0, 0.0)),
        "tiny": cond("digit", 20, (0.7, 0.05), (1.0, 0.0)), "grid": cond("digit", 30, (0.9, 0.0), (1.0, 0.0)),
        "ruled": cond("digit", 30, (0.9, 0.0), (1.0, 0.0)), "pairs": cond("several", 30, (0.95, 0.0), (1.0, 0.0)),
        "letters": cond("none", 30, (0.5, 0.5), (0.25, 0.25))}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "user_images.json").write_text(json.dumps(d))
    f = SimpleNamespace(root=tmp_path)
    text = "\n".join(report_cards.user_image_text(f, "a"))
    assert "no entry" not in text
    # the three lowest 'right' shares, lowest first; tied 3rd place (grid, ruled) both kept; better ones left out
    assert text.index("tiny") < text.index("shadow") < text.index("grid")
    assert "ruled" in text and "pairs" not in text and "plain" not in text
    assert "70.0% right, 5.0% refused" in text and "letters (none note, 30 images): 50.0%" in text
    text_b = "\n".join(report_cards.user_image_text(f, "b"))
    assert "plain" in text_b and "shadow" not in text_b and "25.0%" in text_b
    assert "no entry" in "\n".join(report_cards.user_image_text(f, "c"))


def test_card_mistakes_say_when_more_pairs_tie_at_the_cut_off():
    import report_cards

    def cm(cells):
        m = [[0] * 10 for _ in range(10)]
        for (i, j), n in cells.items():
            m[i][j] = n
        return {"confusion_matrix": m}
    few = report_cards.mistakes_text(cm({(4, 9): 5, (7, 2): 3, (3, 5): 2, (8, 3): 2, (1, 7): 1}))
    assert "4 → 9 (5), 7 → 2 (3), 3 → 5 (2), 8 → 3 (2)." in few and "1 → 7" not in few
    many = report_cards.mistakes_text(cm({(4, 9): 5, **{(i, (i + 1) % 10): 2 for i in range(8)}}))
    assert "among others" in many and many.count("→") == 1 + 3  # the header has one
    plain = report_cards.mistakes_text(cm({(4, 9): 5, (7, 2): 3, (3, 5): 2, (8, 3): 1}))
    assert "among others" not in plain and "8 → 3" not in plain


def test_fair_verdict_says_whether_the_fairer_comparison_agrees():
    from report_text import fair_verdict

    def table(best, rows):
        return {"best": best, "one_image": 0.0002,
                "rows": [{"optimizer": o, "lr": lr, "gap": gap, "tie": tie} for o, lr, gap, tie in rows]}

    agree = fair_verdict("ConvNet", "adamw", table("adamw", [("adamw", 0.01, 0.0, True), ("adam", 0.01, 0.0004, True)]))
    assert agree.startswith("For the ConvNet it agrees") and "best mean again" in agree
    tied = fair_verdict("ConvNet", "adam", table("adamw", [("adamw", 0.01, 0.0, True), ("adam", 0.01, 0.0004, True)]))
    assert "agrees" in tied and "ties the best mean (AdamW)" in tied
    differ = fair_verdict("DNN", "adam", table("adamw", [("adamw", 0.01, 0.0, True), ("adam", 0.001, 0.0024, False)]))
    assert "disagrees" in differ and "lr 0.01" in differ and "by 12.0 validation images" in differ


def test_readme_user_images_table_is_the_benchmark_file():
    import report_cards
    text = (ROOT / "README.md").read_text()
    block = text.split(report_cards.USER_IMAGES_BEGIN, 1)[1].split(report_cards.USER_IMAGES_END, 1)[0]
    assert block.strip("\n") == (ROOT / "benchmarks" / "results" / "user_images.md").read_text().strip("\n")
    assert report_cards.replace_block("a\n<b>\nold\n<e>\nz", "<b>", "<e>", "new\n") == "a\n<b>\nnew\n<e>\nz"
    assert report_cards.replace_block("no markers", "<b>", "<e>", "x") == "no markers"


def test_accuracy_by_recipe_sets_users_images_beside_the_test_mean_and_names_a_trade(tmp_path):
    """recipe_robustness reads `benchmarks/user_images.py --recipes` by each file's sha256; recipes_summary
    puts each recipe's mean top-guess accuracy (over its seed files) beside its 3-seed test mean, says when
    a recipe gains on MNIST but loses beyond the noise on users' images against another model's recipe, and
    shows a recipe with a seed not measured by its measured seeds, counted (never in a trade), and "–" for a
    file that changed since it was measured."""
    import hashlib
    import report_facts
    import report_text
    from types import SimpleNamespace

    (tmp_path / "weights").mkdir()
    for m in ("convnet", "dnn", "resnet"):
        (tmp_path / "weights" / f"{m}.pt").write_bytes(m.encode())
    sha = {m: hashlib.sha256(m.encode()).hexdigest() for m in ("convnet", "dnn", "resnet")}
    files = {("convnet", 0): 0.90, ("convnet", 1): 0.92, ("convnet", None): 0.95, ("dnn", 0): 0.80,  # DNN seed 1: never measured
             ("dnn", None): 0.80, ("resnet", 0): 0.95, ("resnet", 1): 0.95, ("resnet", None): 0.9,
             ("resnet", "old0"): 0.99, ("resnet", "old1"): 0.99}  # the seeds of the recipe ResNet-18's replaced
    key = lambda m, k: sha[m] if k is None else f"{m}-{k}"  # noqa: E731  (a seed file's sha256 stand-in)
    label = lambda m, k: f"{m} {'shipped' if k is None else f'recipe seed {k}'}"  # noqa: E731
    rob = {"date": "x", "n_per_condition": 7,
           "files": {label(m, k): {"model": m, "seed": k, "checkpoint": "x.pt", "sha256": key(m, k)} for m, k in files},
           "conditions": {"tiny8": {"kind": "digit", "n": 7, "files": {label(*mk): v - 0.2 for mk, v in files.items()}},
                          "even_light": {"kind": "control", "n": 7, "files": {label(*mk): v + 0.02 for mk, v in files.items()}}}}
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "user_images_recipes.json").write_text(json.dumps(rob))
    r = report_facts.recipe_robustness(tmp_path)
    assert r["by_sha"]["convnet-0"]["mean"] == pytest.approx(0.81) and r["by_sha"][sha["convnet"]]["mean"] == pytest.approx(0.86)
    assert r["by_sha"]["convnet-1"]["tiny8"] == pytest.approx(0.72) and r["conditions"] == 2 and r["shipped"]["dnn"] == sha["dnn"]

    seed = lambda m, k, a: {"seed": k, "cell": f"c{k}", "test_acc": a, "seconds": 60.0, "sha256": f"{m}-{k}",  # noqa: E731
                            "hardware": "AMD EPYC (2 threads, bf16)"}
    evidence = {"val": {"final": [0.9980, 0.9982], "e60": [0.9970, 0.9972]}, "test_seen": {"final": [0.9965, 0.9967], "e60": []},
                "val_last_mean": {"final": 0.9970, "e60": 0.9974}}  # at the last epoch the runner-up leads
    rec = {"seeds": [0, 1], "screen_seeds": [0, 1], "rule": "r", "ensemble": {"test_acc": 0.9980, "members": []},
           "models": {"convnet": {"candidate": "final", "recipe": {"epochs": 30}, "done": True, "test_mean": 0.9972, **evidence,
                                  # seed 1 trained again; its rerun's file not measured, its first file was (same recipe and seed)
                                  "seeds": [seed("convnet", 0, 0.9970), {**seed("convnet", 1, 0.9974), "again": {"sha256": "convnet-9",  # twice
                                            "test_acc": 0.9975}, "reruns": [{"sha256": "convnet-8", "test_acc": 0.9973}]}]},
                      "dnn": {"candidate": "e150", "recipe": {"epochs": 150}, "done": True, "test_mean": 0.9950,
                              "val": {"e150": [0.99]}, "test_seen": {"e150": [0.9940]},
                              "earlier": [{"candidate": "final", "done": True, "seeds": [{"test_acc": 0.9930}, {"test_acc": 0.9932}]}],
                              "seeds": [seed("dnn", 0, 0.9950), {**seed("dnn", 1, 0.9950), "again": {"sha256": "dnn-9", "test_acc": 0.9951}}]},
                      "resnet": {"candidate": "e15", "recipe": {"epochs": 15}, "done": True, "test_mean": 0.9970,
                                 "val": {"e15": [0.99, 0.99]}, "test_seen": {}, "shipped": {"decided_after_test": False},
                                 "earlier": [{"candidate": "e10", "done": True, "seeds": [
                                     {"test_acc": 0.9960, "sha256": "resnet-old0"}, {"test_acc": 0.9962, "sha256": "resnet-old1"}]}],
                                 "seeds": [seed("resnet", 0, 0.9970), seed("resnet", 1, 0.9970)]}}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "final_recipes.json").write_text(json.dumps(rec))
    (tmp_path / "weights" / "resnet.pt").write_bytes(b"trained again since")  # its measurement is stale now
    f = SimpleNamespace(root=tmp_path, s=SimpleNamespace(results=tmp_path / "results"), one_test=1e-4, one_val=2e-4,
                        metrics={"convnet": {"accuracy": 0.9968}, "dnn": {"accuracy": 0.9935}, "resnet": {"accuracy": 0.9960}})
    text = "\n".join(report_text.recipes_summary(f))
    row = {m: next(line for line in text.splitlines() if line.startswith(f"| {sr.NAMES[m]} |")) for m in rec["models"]}
    assert "99.72 ± 0.03" in row["convnet"] and "82.0 / 86.0" in row["convnet"] and "71 / 75" in row["convnet"]
    # seed 1's file is its rerun (again); neither it nor its first file was measured: the measured seed, counted, and no trade from it
    assert row["dnn"].endswith("| 71.0 (1/2 seeds) / 71.0 | 60 (1/2 seeds) / 60 |")
    assert "| 86.0 / – |" in row["resnet"]  # the shipped file changed since: no stale number beside the recipe
    f.cards = {"resnet": {"made_from": {"sha256": "resnet-0"}}}  # recalibrated since: its seed checkpoint's weights were measured
    assert "| 86.0 / 86.0 |" in next(line for line in "\n".join(report_text.recipes_summary(f)).splitlines()
                                     if line.startswith("| ResNet-18 |"))
    # ConvNet 99.72 vs ResNet-18 99.70 on MNIST (2 test images), 82.0 vs 86.0 on users' images (beyond 2 std = 2.8)
    assert "the ConvNet recipe beats the ResNet-18's by 0.02 points on MNIST but reads users' images 4.0 points worse" in text
    assert "DNN recipe" not in text and "ResNet-18 recipe" not in text
    assert "| scored 1 times, in order | 99.80 | 99.82 |" in text and "Missed: ConvNet and the ensemble" in text
    assert "| 1.0 (AMD EPYC) |" in row["convnet"]  # minutes a seed (one decimal under 10), and where
    # what validation said, in validation images (0.02 points each), and the test means already seen
    assert ("- ConvNet: `final` led `e60` by 5.0 images (2 vs 2 seeds: beyond the noise); already on test: `final` 99.66 "
            "(the chosen one's the best); at the last epoch, which a refit keeps, `e60` leads by 2.0 images.") in text
    assert "- DNN: `e150`, the only candidate; already on test: `e150` 99.40 (the chosen one's the best)." in text
    # each recipe against the one it replaced (its refits scored before this choice): test, users' images, 8x8 thumbnails
    assert ("DNN `e150` 99.50 / 71.0 (1/2 seeds) / 60 vs `final` 99.31 / – / –; "
            "ResNet-18 `e15` 99.70 / 86.0 / 75 vs `e10` 99.61 / 90.0 / 79.") in text
    # within a model: 0.09 points better on MNIST, 4.0 points worse on users' images (beyond 1 point; both seeds alike)
    assert "ResNet-18 `e15` beats `e10` by 0.09 points on MNIST but reads users' images 4.0 points worse" in text
    assert "Kept out" not in text  # no file kept out after its test scores
    assert ("Missed: ConvNet and the ensemble. 2 seeds were trained again (3 runs), their files lost and needed by the ensemble (the means "
            "keep the first scores) ([appendix](report-appendix.md#accuracy-by-recipe)).") in text
    assert "at each run's best epoch (one image" in text  # leaders differ at the last epoch: said per model, not above


def test_a_scored_ensemble_keeps_its_recipes_after_a_member_seed_is_trained_again():
    """member_seeds matches a seed by its first file or its rerun's, so an ensemble scored before a
    seed was trained again still names the recipes it held (scored_ensembles), and each member's
    own test score is the one of the file that was in it."""
    import report_facts
    conv = {"candidate": "e60", "seeds": [{"sha256": "c0", "test_acc": 0.9968, "again": {"sha256": "c0b", "test_acc": 0.9972}},
                                          {"sha256": "c1", "test_acc": 0.9970}],
            "earlier": [{"candidate": "final", "seeds": [{"sha256": "f0", "test_acc": 0.9966}]}]}
    res = {"candidate": "e30", "seeds": [{"sha256": "r0", "test_acc": 0.9969}],
           "earlier": [{"candidate": "e15", "seeds": [{"sha256": "q0", "test_acc": 0.9963}]}]}
    scored = [{"members": [{"sha256": "f0"}, {"sha256": "q0"}], "test_acc": 0.9972},
              {"members": [{"sha256": "c0"}, {"sha256": "c1"}, {"sha256": "q0"}], "test_acc": 0.9968},
              {"members": [{"sha256": "c0b"}, {"sha256": "c1"}, {"sha256": "r0"}], "test_acc": 0.9975},
              {"members": [{"sha256": "x"}], "test_acc": 0.99}]  # none of the recipes: no names
    d = {"models": {"convnet": conv, "dnn": {"candidate": "e300", "seeds": [{"sha256": "d0"}]}, "resnet": res},
         "ensembles_scored": scored}
    assert [held for _, held in report_facts.scored_ensembles(d)] == [
        "ConvNet `final` + ResNet-18 `e15`", "ConvNet `e60` + ResNet-18 `e15`", "ConvNet `e60` + ResNet-18 `e30`", ""]
    assert [x["test_acc"] for x in report_facts.member_seeds(conv, scored[1])] == [0.9968, 0.9970]
    assert [x["test_acc"] for x in report_facts.member_seeds(conv, scored[2])] == [0.9972, 0.9970]
    rob = {"by_sha": {"c0": {"mean": 0.9}, "c1": {"mean": 0.8}}}
    assert report_facts.seed_robustness(rob, conv["seeds"][0]) == {"mean": 0.9}  # the rerun unmeasured: its first file's
    assert report_facts.seed_robustness({"by_sha": {"c0b": {"mean": 0.7}, **rob["by_sha"]}}, conv["seeds"][0]) == {"mean": 0.7}
    assert report_facts.seed_robustness(rob, {"sha256": "zz"}) is None
    # a seed trained twice more: an ensemble that held its first rerun still names the recipe
    conv["seeds"][0]["reruns"], conv["seeds"][0]["again"] = [conv["seeds"][0]["again"]], {"sha256": "c0c", "test_acc": 0.9971}
    assert [x["test_acc"] for x in report_facts.member_seeds(conv, scored[2])] == [0.9972, 0.9970]


def test_a_recipes_users_images_numbers_are_over_its_measured_seeds():
    """measured_seeds and seeds_tiny8, shared by Step 5's table and its recipe comparison: the seeds
    whose files were measured with a "(k/n seeds)" label, and 8x8 thumbnails only when all of those have it."""
    import report_text
    rob = {"by_sha": {"a": {"mean": 0.9, "tiny8": 0.8}, "b": {"mean": 0.7, "tiny8": None}}}
    part, of = report_text.measured_seeds(rob, [{"sha256": "a"}, {"sha256": "b"}, {"sha256": "c"}])
    assert [g["mean"] for g in part] == [0.9, 0.7] and of == " (2/3 seeds)"
    assert report_text.seeds_tiny8(part) == [] and report_text.seeds_tiny8(part[:1]) == [0.8]
    assert report_text.measured_seeds(rob, [{"sha256": "a"}]) == ([rob["by_sha"]["a"]], "")
    assert report_text.measured_seeds(None, [{"sha256": "a"}]) == ([], "")
