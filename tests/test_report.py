"""The report: report.md, report-appendix.md and the model cards weights/<model>.md, rendered by
study_report.py from the committed results. Offline, no training; nothing here rewrites a committed file."""

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

import report_facts
import study_report
from conftest import markdown_tables as tables

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("report.md", "report-appendix.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "weights").glob("*.md"))))
HISTORY = re.compile(r"#\d+|\bissues?\b|\brerun|\blost\b|\battempts?\b|\bcells?\b|\bhanded\b|\bsessions?\b", re.I)
TRAINING_CODE = {"train", "study", "study_cells", "study_recipes", "runs", "test_model", "feature_visualization", "calibrate"}


@pytest.fixture(scope="module")
def report():
    return (ROOT / "report.md").read_text()


def section(text: str, heading: str) -> str:
    """The markdown from the line starting with heading to the next heading of the same level."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}")
    end = text.find(f"\n{level} ", start + 1)
    return text[start:end if end > 0 else None]


def test_steps_come_in_the_homeworks_order_under_a_short_summary(report):
    positions = [report.index(f"\n## Step {i}:") for i in range(1, 7)]
    assert positions == sorted(positions)
    summary = [line for line in report[:positions[0]].splitlines()[1:] if line.strip()]
    assert 3 <= len(summary) <= 5 and not any(line.startswith("|") for line in summary)


def test_step_2_has_the_homeworks_accuracy_table(report):
    table = next(t for t in tables(section(report, "## Step 2")) if "test accuracy" in t[0][1])
    rows = {r[0]: r for r in table[1:]}
    assert {"DNN", "ConvNet", "ResNet-18"} <= set(rows) and any("(ours)" in name for name in rows)
    for r in rows.values():
        assert re.fullmatch(r"\d{2}\.\d{2}( ± \d\.\d{2})?", r[1]), r


def test_step_5_names_the_best_model_and_has_the_homeworks_lr_table(report):
    step5 = section(report, "## Step 5")
    best = re.search(r"\*\*The best model is the (\S+)\.\*\*", step5)
    assert best and best.group(1) in ("DNN", "ConvNet", "ResNet-18", "FastResNet", "QuickNet")
    lr = next(t for t in tables(step5) if "lr 0.1" in t[0])
    cols = [lr[0].index(h) for h in ("lr 0.1", "lr 0.01", "lr 0.001", "lr 0.0001")]
    assert cols == list(range(cols[0], cols[0] + 4))
    assert {"DNN", "ConvNet", "ResNet-18"} <= {r[0] for r in lr[1:]}
    for r in lr[1:]:
        assert all(re.match(r"\**\d{1,3}\.\d{2}", r[c]) for c in cols), r
    for words in ("other LRs", "One-cycle", "range test", "Over- and underfitting", "figures/study_regularization.png"):
        assert words in step5


def test_step_6_links_curves_roc_and_both_layers_features(report):
    step6 = section(report, "## Step 6")
    for m in ("dnn", "convnet", "resnet", "fastresnet"):
        assert f"(figures/curves_{m}.png)" in step6 and f"(figures/{m}_roc.png)" in step6
    assert re.search(r"\(figures/features_\w+_layer1\.png\)", step6) and re.search(r"\(figures/features_\w+_layer2\.png\)", step6)
    assert "macro F1" in step6


def test_no_validation_curve_comes_from_a_run_that_trained_on_the_validation_images():
    s = report_facts.Study(ROOT)
    for m in s.shipped:
        src = s.curve_source(m)
        if src["kind"] != "train_only":  # the kind drawn with a validation curve
            assert not src["config"].get("refit"), m
            if src["kind"] == "twin":
                assert all(src["config"][k] == s.cards[m]["train_config"][k] for k in report_facts.RECIPE_KEYS), m


def test_report_is_at_most_2000_words(report):
    assert len(report.split()) <= 2000


@pytest.mark.parametrize("name", DOCS)
def test_documents_speak_of_the_study_not_of_its_making(name):
    text = (ROOT / name).read_text()
    text = re.sub(r"\]\([^)]*\)|`[^`]*`", "", text)  # link targets and code: file and run names
    assert not HISTORY.findall(text), (name, sorted(set(HISTORY.findall(text))))


@pytest.mark.parametrize("name", DOCS)
def test_every_link_points_at_a_file_that_exists(name):
    base = (ROOT / name).parent
    links = re.findall(r"\]\(([^)#]+)", (ROOT / name).read_text())
    assert links and all((base / link).exists() for link in links), [x for x in links if not (base / x).exists()]


@pytest.mark.parametrize("template", sorted(p.name for p in (ROOT / "templates").glob("*.j2")))
def test_templates_hold_no_typed_number(template):
    """Numbers come from results: with the placeholders and tags stripped, no figure is left but step numbers
    (digits at the end of names such as F1, ResNet-18 or conv1 are part of the name; 28x28 is a number)."""
    text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", " ", (ROOT / "templates" / template).read_text(), flags=re.S)
    text = re.sub(r"\bSteps? \d+(–\d+)?", "", text)
    assert not re.findall(r"(?<![\w\-.])\d+(?:[.,]\d+)*", text)


def test_report_code_imports_no_training_code():
    for name in ("report_facts.py", "report_figures.py", "study_report.py"):
        tree = ast.parse((ROOT / name).read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & TRAINING_CODE, (name, imported & TRAINING_CODE)


def test_regenerating_writes_the_committed_bytes(tmp_path):
    """The report, appendix, cards and the generated blocks of README and docs/ rendered afresh into a copy
    equal the files here."""
    for d in ("results", "figures", "screenshots", "benchmarks"):
        (tmp_path / d).symlink_to(ROOT / d)  # read only: the writer writes none of these
    (tmp_path / "weights").mkdir()
    for p in (ROOT / "weights").iterdir():
        if p.suffix != ".md":
            (tmp_path / "weights" / p.name).symlink_to(p)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    study_report.write_report(tmp_path)
    study_report.update_readme(tmp_path)
    for name in (*DOCS, "README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")))):
        assert (tmp_path / name).read_text() == (ROOT / name).read_text(), name


def test_tie_rule_and_command_cleaning():
    groups = {"a": report_facts.mean_std([0.990, 0.992]), "b": report_facts.mean_std([0.9900, 0.9910]),
              "c": report_facts.mean_std([0.980, 0.981])}
    verdicts = report_facts.compare(groups, one_image=0.0002, k=2.0)
    assert [verdicts[g]["verdict"] for g in "abc"] == ["best", "tie", "behind"]
    assert verdicts["c"]["images"] == pytest.approx(52.5)
    assert report_facts.clean_command("python train.py --lr 0.1 --out runs/x --run-name y --weights-dir '' --seed 2") \
        == "python train.py --lr 0.1 --seed 2"


def test_readme_blocks_are_replaced_between_their_markers_only():
    text = "intro\n<!-- study:models (generated) -->\nold\n<!-- /study:models -->\noutro\n"
    assert study_report.replace_block(text, "study:models", "new") == \
        "intro\n<!-- study:models (generated) -->\nnew\n<!-- /study:models -->\noutro\n"
    assert study_report.replace_block("no markers\n", "study:models", "new") == "no markers\n"


def test_off_grid_lrs_count_ties_as_doing_as_well():
    """FastResNet with SGD ties its grid best at an off-grid LR (the same images right): counted; ResNet-18 with
    SGD does worse off the grid: not counted."""
    rows = {(r["model"], r["optimizer"]): r for r in report_facts.Study(ROOT).lr_table()}
    tie = rows[("fastresnet", "sgd")]
    assert any(x["acc"] == pytest.approx(tie["best"]) for x in tie["extra"]) and tie["off_grid"]
    worse = rows[("resnet", "sgd")]
    assert all(x["acc"] < worse["best"] for x in worse["extra"]) and not worse["off_grid"]


def test_the_report_says_which_run_each_shipped_file_is_and_states_test_use_once(report):
    s = report_facts.Study(ROOT)
    files = {m: s.shipped_file(m) for m in s.shipped}
    step2 = next(t for t in tables(section(report, "## Step 2")) if "test accuracy" in t[0][1])
    for row in step2[1:]:
        m = next(k for k, n in report_facts.NAMES.items() if n == row[0])
        f = files[m]
        assert row[-1] == f"its seed {f['seed']}" if f["of_recipe"] else (f"seed {f['seed']}" in row[-1] and f"`{f['label']}`" in row[-1])
    assert report.count("#how-the-numbers-were-obtained") == 1
    line = next(x for x in report.splitlines() if "#how-the-numbers-were-obtained" in x)
    assert f"{s.test_use()['total']:,} times" in line and f"{s.after_test()['count']} choices" in line


def test_lr_table_gains_a_row_for_each_optimizer_grid_that_is_recorded(tmp_path):
    """A copy of the results without ResNet-18's Adam grid has no ResNet-18 Adam row in Step 5; with the grid
    (the SGD runs relabelled) it has one."""
    (tmp_path / "results").mkdir()
    for p in (ROOT / "results").iterdir():
        if p.name != "cells":
            (tmp_path / "results" / p.name).symlink_to(p)
    shutil.copytree(ROOT / "results" / "cells", tmp_path / "results" / "cells")
    for p in (tmp_path / "results" / "cells").glob("resnet-adam-lr*.json"):
        p.unlink()
    for d in ("figures", "screenshots", "benchmarks", "weights"):
        (tmp_path / d).symlink_to(ROOT / d)
    before = {(r["model"], r["optimizer"]) for r in report_facts.Study(tmp_path).lr_table()}
    assert ("resnet", "adam") not in before
    for p in (tmp_path / "results" / "cells").glob("resnet-sgd-lr*-e2-s0.json"):
        r = json.loads(p.read_text())
        r["tags"]["optimizer"] = r["config"]["optimizer"] = "adam"
        (p.parent / p.name.replace("-sgd-", "-adam-")).write_text(json.dumps(r))
    s = report_facts.Study(tmp_path)
    text = study_report.environment().get_template("report.md.j2").render(study_report.context(s))
    lr = next(t for t in tables(section(text, "## Step 5")) if "lr 0.1" in t[0])
    assert ["ResNet-18", "Adam"] == next(r[:2] for r in lr[1:] if r[:2] == ["ResNet-18", "Adam"])


def test_every_table_has_a_separator_row_as_wide_as_its_header():
    """A Markdown table whose separator row has another number of cells than its header is shown as text."""
    for doc in DOCS:
        lines = (ROOT / doc).read_text().splitlines()
        for i, line in enumerate(lines[1:], start=1):
            if line.startswith("|") and set(line) <= set("|-: "):
                cells = lambda s: len(s.strip().strip("|").split("|"))  # noqa: E731
                assert cells(line) == cells(lines[i - 1]), f"{doc}:{i + 1}: {cells(line)} separator cells under {cells(lines[i - 1])}"
