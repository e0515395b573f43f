"""study.py and study_report.py: the whole pipeline at smoke budgets on the real MNIST (the one
heavy check, ~2 minutes on 2 cores), plus the runner's rules on small pieces."""

import csv
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

import recipes
import report_facts
import study
import study_cells
import runs
import machine
import study_report
import train
from conftest import markdown_tables


def smoke_settings(root) -> study.Settings:
    """The Settings a smoke study at `root` ran with (its results/study.json)."""
    d = json.loads((root / "results" / "study.json").read_text())
    return study.Settings(root=root, smoke=d["smoke"], models=tuple(d["models"]))


@pytest.fixture(scope="module")
def smoke_root(real_data_dir, tmp_path_factory):
    """`python study.py --smoke` into a temporary root, with its own lock (a real study may be running)."""
    root = tmp_path_factory.mktemp("study-smoke")
    lock = root / "lock"
    saved = study.exclusive
    study.exclusive = lambda name: machine.exclusive(name, lock)
    try:
        assert study.main(["--smoke", "--root", str(root), "--data-dir", str(real_data_dir)]) == 0
    finally:
        study.exclusive = saved
    return root


def test_smoke_study_fills_the_lr_table(smoke_root):
    with open(smoke_root / "results" / "lr_table.csv") as f:
        rows = list(csv.DictReader(f))
    grid = {(r["model"], r["optimizer"], float(r["lr"])) for r in rows if r["kind"] == "grid"}
    assert grid == {(m, "sgd", lr) for m in ("dnn", "convnet", "resnet", "fastresnet") for lr in study.LRS} | \
                   {(m, "adam", lr) for m in study.ADAM_MODELS for lr in study.LRS}
    assert all(r["status"] in ("finished", "diverged") for r in rows)
    finder = json.loads((smoke_root / "results" / "lr_find.json").read_text())
    assert set(finder) == {f"{m}-{o}" for m, o in study.finder_rows(study.Settings(root=smoke_root, smoke=True))}
    assert ("resnet", "adam") in study.lr_rows(study.Settings()) and "resnet-adam" not in finder  # a grid-only row


def test_smoke_study_ships_weights_screenshots_and_a_report_whose_links_exist(smoke_root):
    for m in ("dnn", "convnet", "resnet", "fastresnet"):
        assert (smoke_root / "weights" / f"{m}.pt").exists()
        assert (smoke_root / "figures" / f"{m}_metrics.json").exists()
        assert (smoke_root / "figures" / f"curves_{m}.png").exists()
    shots = json.loads((smoke_root / "screenshots" / "index.json").read_text())
    assert len(shots) >= 8
    assert all((smoke_root / s["png"]).stat().st_size > 5000 for s in shots)
    commands = {s["command"].split(" --")[0] for s in shots}
    assert {"python train.py", "python test_model.py", "python data.py"} <= commands
    report = (smoke_root / "report.md").read_text()
    for section in ("Step 1", "Step 2", "Step 3", "Step 4", "Step 5", "Step 6", "Best model"):
        assert section in report
    for name in ("report.md", "report-appendix.md", *(f"weights/{m}.md" for m in ("dnn", "convnet", "resnet", "fastresnet"))):
        links = re.findall(r"\]\(([^)#]+)", (smoke_root / name).read_text())
        base = (smoke_root / name).parent
        assert links and all((base / link.replace("%20", " ")).exists() for link in links), \
            [link for link in links if not (base / link).exists()]
    # Step 5's LR table, rendered from the design the smoke study recorded (results/study_design.json) and its
    # runs: a row per (model, optimizer) of the plan at the smoke budget, each grid LR's validation accuracy
    # from results/lr_table.csv.
    s = smoke_settings(smoke_root)
    design = json.loads((smoke_root / "results" / "study_design.json").read_text())
    assert design == study.study_design(s) and design["lr_grid"]["epochs"]["convnet"] == study.SMOKE_EPOCHS
    step5 = report.split("## Step 5")[1].split("## Step 6")[0]
    table = next(t for t in markdown_tables(step5) if "lr 0.1" in t[0])
    assert table[0][3:7] == [f"lr {lr:g}" for lr in design["lr_grid"]["lrs"]]
    with open(smoke_root / "results" / "lr_table.csv") as f:
        val = {(r["model"], r["optimizer"], float(r["lr"])): r for r in csv.DictReader(f) if r["kind"] == "grid"}
    names, opts = report_facts.NAMES, report_facts.OPT_NAMES
    assert sorted((r[0], r[1]) for r in table[1:]) == sorted((names[m], opts[o]) for m, o in study.lr_rows(s))
    for row in table[1:]:
        m, o = next((m, o) for m, o in study.lr_rows(s) if (names[m], opts[o]) == (row[0], row[1]))
        assert row[2] == f"{study.SMOKE_EPOCHS:g}"
        for lr, shown in zip(design["lr_grid"]["lrs"], row[3:7]):
            r = val[(m, o, lr)]
            assert shown.split(" ")[0].strip("*") == ("diverged" if r["status"] == "diverged" else study_report.pct(float(r["val_acc"])))


def test_attempts_run_beside_the_final_recipe_and_the_validation_best_run_ships(smoke_root):
    s = smoke_settings(smoke_root)
    finals = [c for c in study.final_cells(s) if isinstance(c, study.Cell)]
    assert {c.tags["attempt"] for c in finals} == {"", "refit", *[a for m in study.ATTEMPTS for a in study.ATTEMPTS[m]]}
    refit = next(c for c in finals if c.tags["attempt"] == "refit")
    assert study.load_result(s, refit.name)["config"]["refit"] and (smoke_root / "weights" / f"{refit.model}-refit.pt").exists()
    finals = [c for c in finals if c.tags["attempt"] != "refit"]  # a refit never competes on validation
    assert all(study.load_result(s, c.name) for c in finals)
    ema = next(c for c in finals if c.tags["attempt"] == "ema")
    assert study.load_result(s, ema.name)["config"]["ema"] == study.ATTEMPTS["convnet"]["ema"]["ema"]
    for m in s.models:
        assert "seeds" not in study.best_recipe(s, m)
        runs = [study.load_result(s, c.name) for c in finals if c.model == m]
        shipped = study.shipped_final(s, m)
        assert study.load_result(s, shipped.name)["best"]["val_acc"] == max(r["best"]["val_acc"] for r in runs)
        card = json.loads((smoke_root / "weights" / f"{m}.json").read_text())
        if m not in study.RECIPE_MODELS:  # those ship their chosen recipe (the next test)
            assert card["train_config"]["run_name"] == shipped.name and card["calibration"]["in_sample"] is False


def test_a_done_recipe_ships_its_seed_0_calibrated_with_its_twin_with_the_command_that_trains_it(smoke_root):
    s = smoke_settings(smoke_root)
    rec = json.loads((smoke_root / "results" / "final_recipes.json").read_text())
    for m in study.RECIPE_MODELS:
        seed0 = rec["models"][m]["seeds"][0]
        card = json.loads((smoke_root / "weights" / f"{m}.json").read_text())
        name = card["train_config"]["run_name"]
        assert name == study.seed_file(seed0)["cell"] and card["train_config"]["refit"]
        assert card["calibration"]["in_sample"] is True and "in-sample" in card["calibration"]["fitted_on"]
        # its temperature and threshold from its held-out twin: the chosen candidate's own seed-0 run
        twin = study.candidate_cells(s, m)[rec["models"][m]["candidate"]][0]
        assert card["calibration"]["twin"]["run"] == twin.name == study.twin_file(s, m).parent.name
        assert f"--twin {study.twin_file(s, m).relative_to(smoke_root)}" in (smoke_root / "results" / "logs" / f"calibrate-{m}.txt").read_text()
        r = study.load_result(s, name)
        assert r["command"].startswith("python train.py ") and " --refit" in r["command"]
        assert (smoke_root / r["log"]).read_text().startswith(f"$ {r['command']}")
        if "runs/study/cells" in r["command"]:  # trained in the study's process: the command is made from its config
            cfg = train.config_from_args(train.parse_args(shlex.split(r["command"])[2:]))
            same = {k: v for k, v in r["config"].items() if k in train.CONFIG_FIELDS}
            assert cfg == train.TrainConfig(**{**same, "out": "runs/study/cells", "data_dir": None, **study.MACHINE_DEFAULTS})
        assert "Kept**: the last epoch" in (smoke_root / "weights" / f"{m}.md").read_text()
    evaluation = json.loads((smoke_root / "results" / "evaluation.json").read_text())
    assert evaluation["earlier"] == [] and "calibrate.py" in (smoke_root / "results" / "logs" / "calibrate.txt").read_text()


def test_an_attempt_may_run_fewer_seeds_and_its_seed_list_is_no_recipe_field(tmp_path, monkeypatch):
    s = study.Settings(root=tmp_path)  # full budgets, no results: the plan only
    monkeypatch.setattr(study_cells, "final_choice", lambda s, m: {"optimizer": "sgd", "lr": 0.1, "variant": "affine", "overrides": {}})
    cells = [c for c in study.recipe_cells(s) if c.model == "resnet"]
    seeds = {a: sorted(c.tags["seed"] for c in cells if c.tags["attempt"] == a) for a in {c.tags["attempt"] for c in cells}}
    assert seeds == {"": [0, 1, 2], "e15": [0, 1]}
    e15 = next(c for c in cells if c.tags["attempt"] == "e15")
    assert e15.epochs == 15 and "seeds" not in e15.overrides
    assert study.attempt_changes("resnet", "e15") == {"epochs": 15}


def test_the_ensemble_is_chosen_on_validation_and_only_it_is_scored(smoke_root):
    e = json.loads((smoke_root / "results" / "ensembles.json").read_text())
    vals = {n: c["val_acc"] for n, c in e["candidates"].items()}
    assert set(vals) == {"best_per_model", "convnets", "cnns", "all"} and vals[e["chosen"]] == max(vals.values())
    members = e["candidates"][e["chosen"]]["members"]
    evaluation = json.loads((smoke_root / "results" / "evaluation.json").read_text())
    assert 0 <= e["test"]["accuracy"] <= 1 and any(c["models_scored"] == len(members) and "--json" in c["command"]
                                                 for c in evaluation["commands"])
    shipped_runs = {json.loads(p.read_text())["train_config"]["run_name"] for p in (smoke_root / "weights").glob("*.json")}
    assert {p.stem for p in (smoke_root / "weights" / "ensemble").glob("*.pt")} == set(members) - shipped_runs
    appendix = (smoke_root / "report-appendix.md").read_text()
    assert all(f"weights/ensemble/{m}.pt" in appendix for m in set(members) - shipped_runs)  # its command is listed


def test_report_numbers_are_test_model_numbers(smoke_root):
    step2 = (smoke_root / "report.md").read_text().split("## Step 2")[1].split("## Step 3")[0]
    for m, name in (("convnet", "ConvNet"), ("resnet", "ResNet-18")):
        acc = json.loads((smoke_root / "figures" / f"{m}_metrics.json").read_text())["accuracy"]
        row = [line for line in step2.splitlines() if line.startswith(f"| {name} | ")][-1]  # the accuracy table's row
        assert row.split("|")[2].strip() == f"{100 * acc:.2f}"
        log = (smoke_root / "results" / "logs" / f"test-{m}.txt").read_text()
        assert f"accuracy {acc:.4f}" in log  # what the user saw in the terminal


def test_report_only_rewrites_the_same_report(smoke_root):
    names = ("report.md", "report-appendix.md", "weights/convnet.md")
    before = {n: (smoke_root / n).read_text() for n in names}
    for n in names:
        (smoke_root / n).unlink()
    assert study.main(["--report-only", "--root", str(smoke_root)]) == 0
    assert {n: (smoke_root / n).read_text() for n in names} == before


def test_running_again_trains_nothing_and_plan_shows_everything_done(smoke_root, monkeypatch, capsys):
    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")
    monkeypatch.setattr(study, "train", no_training)
    s = smoke_settings(smoke_root)
    for stage in ("stem", "lr", "optim", "regularization", "final"):
        cells = study.stage_cells(s, stage)
        assert cells and all(isinstance(c, study.Cell) and study.load_result(s, c.name) for c in cells), stage
    monkeypatch.setattr(study, "exclusive", lambda name: None)
    assert study.main(["--smoke", "--root", str(smoke_root), "--only", "stem", "lr", "optim", "regularization"]) == 0
    capsys.readouterr()
    study.plan(s)
    out = capsys.readouterr().out
    assert "to do" not in out.split("[evaluate]")[0] and "waits for" not in out
    assert out.count("done: ") >= 50


def test_stage_waits_for_its_inputs(tmp_path, capsys):
    s = study.Settings(root=tmp_path, smoke=True)
    waiting = [c for c in study.optim_cells(s) if isinstance(c, study.Waiting)]
    assert waiting and all(w.stage == "lr" for w in waiting)
    with pytest.raises(SystemExit, match="needs stage lr's results first"):
        study.run(s, ["optim"])
    assert all(isinstance(c, study.Waiting) for c in study.final_cells(s))


def test_cell_names_are_made_from_settings_and_shared_between_stages(tmp_path):
    s = study.Settings(root=tmp_path)
    a = study.make_cell(s, "convnet", "sgd", 0.1, 5)
    b = study.make_cell(s, "convnet", "sgd", 0.1, 5, seed=0)
    assert a.name == b.name == "convnet-sgd-lr0.1-e5-s0"  # the LR table's cell is the optimizer comparison's seed 0
    assert study.make_cell(s, "convnet", "adadelta", 1.0, 5).overrides["schedule"] == "step"
    smoke = study.Settings(root=tmp_path, smoke=True)
    assert study.make_cell(smoke, "resnet", "sgd", 0.1, 2).overrides["model_config"] == {"width": 8}


def test_a_second_study_is_refused_while_one_runs(tmp_path, monkeypatch):
    lock = tmp_path / "lock"
    held = machine.exclusive("first", lock)
    monkeypatch.setattr(study, "exclusive", lambda name: machine.exclusive(name, lock))
    try:
        with pytest.raises(SystemExit, match="another benchmark or study is running"):
            study.main(["--smoke", "--root", str(tmp_path / "s"), "--only", "data"])
    finally:
        held.close()


def test_screenshot_renders_long_logs_with_the_command_as_title(tmp_path):
    logs = tmp_path / "results" / "logs"
    logs.mkdir(parents=True)
    (logs / "train-x.txt").write_text("$ python train.py --model dnn\n" + "".join(f"line {i}\n" for i in range(200)))
    shots = study_report.render_screenshots(tmp_path)
    assert shots == ["screenshots/train-x.png"]
    index = json.loads((tmp_path / "screenshots" / "index.json").read_text())
    assert index[0]["command"] == "python train.py --model dnn"
    assert (tmp_path / "screenshots" / "train-x.png").stat().st_size > 5000


def test_two_shard_workers_fill_one_grid_without_running_a_cell_twice(real_data_dir, tmp_path):
    """Two `--shard i/2` workers at once on one results folder (each with its own lock file, as
    two machines would have): the LR stage of the DNN ends complete, every cell run exactly once."""
    import os
    import subprocess
    import sys
    from conftest import ROOT
    procs = []
    for i in range(2):
        env = {**os.environ, "MNIST_STUDY_LOCK": str(tmp_path / f"lock{i}"), "OMP_NUM_THREADS": "1", "DATA_DIR": str(real_data_dir)}
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "study.py"), "--smoke", "--root", str(tmp_path / "root"),
                                       "--models", "dnn", "--only", "lr_find", "lr", "--shard", f"{i}/2"],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ran = [line.split()[-1] for out in outs for line in out.splitlines() if line.startswith("=== cell ")]
    with open(tmp_path / "root" / "results" / "lr_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(ran) == len(set(ran)) == len(rows)  # each cell trained once, and all are in the table
    assert {(r["optimizer"], float(r["lr"])) for r in rows if r["kind"] == "grid"} == \
        {(o, lr) for o in ("sgd", "adam") for lr in study.LRS}
    assert all(ran_by for ran_by in (outs[0].count("=== cell "), outs[1].count("=== cell ")))  # both did work
    assert not list((tmp_path / "root" / "results" / "claims").glob("*.json"))  # claims released


def test_claims_are_exclusive_and_a_dead_workers_claim_is_taken_over(tmp_path):
    import json as _json
    s = study.Settings(root=tmp_path)
    cell = study.make_cell(s, "dnn", "sgd", 0.1, 1)
    assert study.claim(s, cell)
    assert study.claim(s, cell)  # the same process may go on with its own claim
    path = tmp_path / "results" / "claims" / f"{cell.name}.json"
    path.write_text(_json.dumps({"host": "elsewhere", "pid": 1}))
    assert not study.claim(s, cell)  # another machine's worker holds it
    import platform
    path.write_text(_json.dumps({"host": platform.node(), "pid": 2 ** 22 + 12345}))  # no such process here
    assert study.claim(s, cell)
    study.release(s, cell)
    assert not path.exists()


@pytest.mark.parametrize("accs, expected", [
    ({0.1: 0.99, 0.01: 0.98, 0.001: 0.95, 0.0001: 0.90}, 0.3),     # best at the top edge: beyond it
    ({0.1: 0.90, 0.01: 0.95, 0.001: 0.98, 0.0001: 0.99}, 3e-05),   # best at the bottom edge
    ({0.1: 0.0, 0.01: 0.99, 0.001: 0.97, 0.0001: 0.9}, 0.003),     # between 0.01 and its better neighbour 0.001
])
def test_the_lr_the_grid_points_to(tmp_path, accs, expected):
    s = study.Settings(root=tmp_path)
    for c in study.lr_grid_cells(s, "convnet", "sgd"):
        diverged = accs[c.tags["lr"]] == 0.0
        study.write_json(study.result_path(s, c.name), {"tags": c.tags, "status": "diverged" if diverged else "finished",
                                                        "best": {} if diverged else {"val_acc": accs[c.tags["lr"]]}})
    assert study.data_lr(s, "convnet", "sgd") == expected
    assert study.data_lr(s, "dnn", "sgd") is None  # no grid yet


def test_best_recipes_are_the_studys_final_choice_from_the_committed_results():
    """train.BEST_RECIPES (python train.py --recipe best) must be what the study's final stage ran."""
    s = study.Settings()
    for m in study.STUDY_MODELS:
        assert train.BEST_RECIPES.get(m) == study.best_recipe(s, m), m


def test_the_registrys_final_recipes_are_the_studys_choices_from_the_committed_results():
    """recipes.FINAL (python train.py --recipe <model>-final) must be what the study's final stage chose on validation."""
    s = study.Settings()
    for m, final in recipes.FINAL.items():
        choice = study.final_choice(s, m)
        assert {"optimizer": choice["optimizer"], "lr": choice["lr"], "epochs": choice["epochs"], **choice["overrides"]} == final, m


def test_the_final_command_carries_every_setting_of_its_cell(tmp_path):
    """A final run trains through `python train.py`: a setting that no stage changes today (label
    smoothing, dropout, momentum) must still reach training, not be dropped by a whitelist."""
    s = study.Settings(root=tmp_path)
    cell = study.make_cell(s, "convnet", "adamw", 0.01, 30, 2, variant="final-x", label_smoothing=0.0, momentum=0.8,
                           model_config={"dropout": 0.3, "width": 64}, rotate=10.0, scale=0.1, ema=0.999)
    argv = study.final_command(s, cell)[2:]
    cfg = train.config_from_args(train.parse_args(argv))
    assert cfg == train.TrainConfig(**cell.overrides, out="runs/study/final", run_name=cell.name)
    assert (cfg.label_smoothing, cfg.momentum, cfg.model_config) == (0.0, 0.8, {"dropout": 0.3, "width": 64})


# -----------------------------------------------------------------------------
# The floors: imports point down only, and the files stay readable

# The floors of ../shared/STYLE.md's map: imports point down (or across one floor), never up, never in a circle.
FLOORS = {"data": 1, "models": 1, "recipes": 1, "images": 1, "ink": 1,
          "runs": 2, "predict": 2, "test_model": 2, "feature_visualization": 2, "calibrate": 2,
          "train": 3, "serve": 3}


def floor(name: str) -> int:
    """A top-level module's floor: the map's, the study's files 4, the report's 5."""
    if name in FLOORS:
        return FLOORS[name]
    return 5 if name.startswith("report") or name == "study_report" else 4 if name.startswith("study") else 0


def product_files() -> list:
    """Every product .py file: the top-level scripts and benchmarks/*.py (not tests/)."""
    from conftest import ROOT
    return sorted([*ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py")])


def our_imports(path) -> set[str]:
    """The top-level modules of this repository that `path` imports, anywhere in the file (ast, not regex)."""
    import ast
    from conftest import ROOT
    ours = {p.stem for p in ROOT.glob("*.py")}
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & ours


def test_imports_point_down_the_floors_and_nothing_imports_the_report_writer():
    from conftest import ROOT
    modules = {p.stem for p in ROOT.glob("*.py")}
    graph = {name: our_imports(ROOT / f"{name}.py") - {name} for name in modules}
    for name in modules:
        for dep in graph[name]:
            assert floor(dep) <= floor(name), f"{name}.py (floor {floor(name)}) imports {dep}.py (floor {floor(dep)})"

    def reaches(a, b, seen=()):  # is there a path of imports a -> ... -> b?
        return any(d == b or (d not in seen and reaches(d, b, (*seen, d))) for d in graph[a])
    circles = [n for n in modules if reaches(n, n)]
    assert not circles, f"import circle through {circles}"
    for path in product_files():
        assert "study_report" not in our_imports(path) - {path.stem}, f"{path.name} imports study_report.py"
    for low in ("data", "models", "recipes", "machine", "plots", "images", "ink", "runs", "predict", "test_model",
                "feature_visualization"):
        assert not our_imports(ROOT / f"{low}.py") & {"train", "study", "study_cells"}, low


def test_a_diverged_final_run_is_recorded_as_diverged(tmp_path, synthetic_root):
    """`python train.py` exits non-zero when a run diverges; the study's final stage records it, and goes on."""
    s = study.Settings(root=tmp_path, data_dir=str(synthetic_root))
    cell = study.make_cell(s, "dnn", "sgd", 1e9, 1, 0, variant="final-x", weight_decay=0.0, batch_size=64,
                           precision="fp32", device="cpu")
    cell.tags.update(kind="final", attempt="")
    record = study.run_final(s, cell)
    assert record["status"] == "diverged" and study.load_result(s, cell.name)["status"] == "diverged"
    assert "diverged at step" in (tmp_path / record["log"]).read_text()


def test_recipes_are_chosen_on_validation_refit_on_all_training_images_and_recorded(smoke_root):
    s = smoke_settings(smoke_root)
    rec = json.loads((smoke_root / "results" / "final_recipes.json").read_text())
    for m in study.RECIPE_MODELS:
        choice = study.recipe_choice(s, m)
        assert choice and rec["models"][m]["candidate"] == choice["candidate"]
        assert choice["mean"][choice["candidate"]] == max(choice["mean"].values())  # the validation-best candidate
        cands = study.candidate_cells(s, m)
        assert set(cands) == {"final", *study.ATTEMPTS.get(m, {}), *study.RECIPE_CANDIDATES.get(m, {})}
        screens = [c for name in study.RECIPE_CANDIDATES.get(m, {}) for c in cands[name]]
        assert all(study.load_result(s, c.name)["test"] is None for c in screens)  # screening never looks at test
        seeds = rec["models"][m]["seeds"]
        assert [x["seed"] for x in seeds] == list(s.seeds(study.RECIPE_SEEDS)) and rec["models"][m]["done"]
        for x in seeds:
            r = study.load_result(s, x["cell"])
            assert r["config"]["refit"] and r["test"]["acc"] == x["test_acc"] == rec["models"][m]["test_mean"]
            assert x["sha256"] == study.sha256(smoke_root / x["checkpoint"])
            assert rec["models"][m]["recipe"]["epochs"] == r["config"]["epochs"] and "seed" not in rec["models"][m]["recipe"]
    ens = rec["ensemble"]
    assert ens["recipes"] == list(study.RECIPE_ENSEMBLE) and len(ens["members"]) == len(study.RECIPE_ENSEMBLE)
    assert 0.0 <= ens["test_acc"] <= 1.0 and rec["ensembles_scored"] == [ens]
    before = (smoke_root / "results" / "final_recipes.json").read_text()
    study.write_final_recipes(s)  # members unchanged: the ensemble is not scored again, the file is the same
    assert (smoke_root / "results" / "final_recipes.json").read_text() == before


def test_a_seed_trained_again_keeps_its_first_score_and_its_last_file_is_the_seeds(smoke_root, real_data_dir, monkeypatch):
    """final_recipes.json's "later" (data: later trainings of a recipe seed with the same settings and seed, in
    order) is carried over by write_final_recipes; the seed keeps its first test score (no second draw for the
    mean); the last later training's file (measured here when it is on this machine, else as recorded) is the
    seed's file: an ensemble member, its softmax recorded once (one counted test-set pass) and its ensemble
    scored once, no longer the shipped seed 0. The appendix's every-run table names each by its seed's run."""
    from models import load_checkpoint
    s = smoke_settings(smoke_root)
    s.data_dir = str(real_data_dir)
    path = smoke_root / "results" / "final_recipes.json"
    first = json.loads(path.read_text())
    x0 = first["models"]["convnet"]["seeds"][0]
    other = study.run_file(s, study.candidate_cells(s, "convnet")[first["models"]["convnet"]["candidate"]][0].name)
    assert other and study.sha256(other) != x0["sha256"]  # another ConvNet file stands in for a later training's
    names = [f"{x0['cell']}-2", f"{x0['cell']}-3"]
    here = s.runs / "cells" / names[1] / "best.pt"
    later = [{"cell": names[0], "test_acc": 0.5, "seconds": 1.0, "hardware": "elsewhere",
              "checkpoint": f"runs/study/cells/{names[0]}/best.pt", "sha256": "0" * 64},  # made on another machine
             {"cell": names[1], "test_acc": 0.25, "seconds": 2.0, "hardware": "here", "checkpoint": None, "sha256": None}]
    calls, predict = [], study.predict_proba
    monkeypatch.setattr(study, "predict_proba", lambda *a, **k: calls.append(1) or predict(*a, **k))
    try:
        here.parent.mkdir(parents=True)
        shutil.copyfile(other, here)
        rec = json.loads(path.read_text())
        rec["models"]["convnet"]["seeds"][0]["later"] = later
        study.write_json(path, rec)
        study.write_final_recipes(s)
        now = json.loads(path.read_text())
        x, e = now["models"]["convnet"]["seeds"][0], now["models"]["convnet"]
        assert x["test_acc"] == x0["test_acc"] and e["test_mean"] == first["models"]["convnet"]["test_mean"]
        assert x["later"] == [later[0], {**later[1], "checkpoint": study.rel(s, here), "sha256": study.sha256(here)}]
        assert study.seed_file(x) == x["later"][1] and not e["shipped"]["seed_0"]  # weights/convnet.pt: the first file
        assert now["ensemble"]["members"][0] == {k: x["later"][1][k] for k in ("checkpoint", "sha256")}
        assert now["ensembles_scored"] == [*first["ensembles_scored"], now["ensemble"]] and "ensemble_waits_for" not in now
        assert len(calls) == len(now["member_passes"]) - len(first["member_passes"]) == 1  # the new file's, once
        assert now["commands"][0]["models_scored"] == len(now["member_passes"])  # every smoke ensemble scored from records
        study.write_final_recipes(s)  # the same members: never scored twice, no pass made
        assert json.loads(path.read_text()) == now and len(calls) == 1
        member = {"cell": names[1], **now["ensemble"]["members"][0]}
        recorded, done = study.member_probs(s, member)
        model, _ = load_checkpoint(here)
        assert np.array_equal(recorded, predict(model, s.mnist().x_test)) and recorded.dtype == np.float32
        assert done == now["member_passes"][-1] and done["source"] == member["checkpoint"]
        assert study.member_probs(s, {**member, "sha256": None}) == (None, None)
        study.write_json(path, {k: v for k, v in now.items() if k != "member_passes"})  # an older writer dropped the list
        study.write_final_recipes(s, score=False)
        assert json.loads(path.read_text()) == now and len(calls) == 1  # read back from the records, no pass made
        assert report_facts.Study(smoke_root).later() == {names[0]: (x0["cell"], 2), names[1]: (x0["cell"], 3)}
    finally:
        shutil.rmtree(here.parent, ignore_errors=True)
        study.write_json(path, first)


def test_the_recorded_softmax_scores_the_ensemble_on_a_machine_without_runs(smoke_root, monkeypatch):
    """member_probs: without runs/ (not committed) the record keeps the sha256 measured where the files were,
    and the ensemble; the members' recorded softmax scores it as the files did, never twice for the same
    members; a record gone is made again from a shipped copy of the file (a pass counted); a record of
    another file is not the member's, and the ensemble then waits for it."""
    read_json = lambda p: json.loads(p.read_text())  # noqa: E731
    s = smoke_settings(smoke_root)
    path = smoke_root / "results" / "final_recipes.json"
    study.write_final_recipes(s)  # as the recorded results are now (a test before may have changed the record)
    rec = json.loads(path.read_text())
    x = rec["models"]["convnet"]["seeds"][0]
    member = {"cell": study.seed_file(x)["cell"], **rec["ensemble"]["members"][0]}
    recorded, _ = study.member_probs(s, member)
    calls, predict = [], study.predict_proba
    monkeypatch.setattr(study, "predict_proba", lambda *a, **k: calls.append(1) or predict(*a, **k))
    file_copy = smoke_root / "runs-file-copy.pt"
    shutil.copyfile(smoke_root / member["checkpoint"], file_copy)
    shipped = smoke_root / "weights" / "zz-member.pt"  # later: a shipped copy whose card names the member's file
    named = [c for c in (smoke_root / "weights").rglob("*.json") if (read_json(c).get("made_from") or {}).get("sha256") == member["sha256"]]
    (smoke_root / "runs").rename(smoke_root / "runs-elsewhere")  # another machine: runs/ is not committed
    try:
        study.write_final_recipes(s)
        assert json.loads(path.read_text()) == rec
        others = [e for e in rec["ensembles_scored"] if e["members"] != rec["ensemble"]["members"]]
        study.write_json(path, {**rec, "ensemble": None, "ensembles_scored": others})
        study.write_final_recipes(s)  # not scored yet: the recorded softmax scores it as the files did
        now = json.loads(path.read_text())
        assert now["ensemble"] == rec["ensemble"] and now["ensembles_scored"] == [*others, rec["ensemble"]]
        by_files = {k: v for k, v in rec["ensemble"].items() if k != "scored_from"}  # as if scored from the files
        study.write_json(path, {**rec, "ensemble": None, "ensembles_scored": [*others, by_files]})
        study.write_final_recipes(s)  # those members were scored: never a second time
        assert json.loads(path.read_text())["ensembles_scored"][-1] == json.loads(path.read_text())["ensemble"] == by_files
        study.write_json(path, rec)
        record = s.results / "member_probs" / f"{member['cell']}.npz"
        record.unlink()
        shutil.copyfile(file_copy, shipped)
        study.write_json(shipped.with_suffix(".json"), {"made_from": {"sha256": member["sha256"]}})
        study.write_final_recipes(s)  # its record gone: from the shipped copy, recorded again, a pass counted
        again_rec = json.loads(path.read_text())
        source = again_rec["member_passes"][-1]["source"]  # this copy, or the smoke study's own shipped seed 0
        assert again_rec["member_passes"][:-1] == rec["member_passes"] and source.startswith("weights/")
        assert read_json(smoke_root / Path(source).with_suffix(".json"))["made_from"]["sha256"] == member["sha256"]
        assert again_rec["ensemble"] == rec["ensemble"] and len(calls) == 1
        assert np.array_equal(study.member_probs(s, member)[0], recorded)
        shipped.unlink()
        for card in named:  # no shipped copy of the file left either
            card.rename(card.with_name(card.name + ".away"))
        with open(record, "wb") as f:  # a record of another file of that name is not this member's
            np.savez_compressed(f, probs=recorded, sha256="another file", source="runs/x.pt")
        assert study.member_probs(s, member) == (None, None)
        study.write_json(path, {**rec, "ensemble": None, "ensembles_scored": others})
        study.write_final_recipes(s)
        waiting = json.loads(path.read_text())
        assert waiting["ensemble"] is None and waiting["ensemble_waits_for"] == [member["cell"]]
    finally:
        (smoke_root / "runs-elsewhere").rename(smoke_root / "runs")
        for card in named:
            if card.with_name(card.name + ".away").exists():
                card.with_name(card.name + ".away").rename(card)
        shipped.unlink(missing_ok=True)
        shipped.with_suffix(".json").unlink(missing_ok=True)
        file_copy.unlink(missing_ok=True)
        study.write_json(path, rec)
        study.member_probs(s, member)  # recorded again from the file, for the tests after this one


def test_an_earlier_chosen_recipe_stays_recorded_when_validation_prefers_another():
    """earlier_recipes: once a recipe's refits were scored on test, a later candidate winning on
    validation does not drop them (they were seen); a choice that comes back is current, not earlier."""
    seeds = [{"seed": 0, "test_acc": 0.997}]
    prev = {"candidate": "final", "recipe": {"epochs": 30}, "seeds": seeds, "done": True, "test_mean": 0.997, "test_std": 0.0}
    assert study.earlier_recipes(prev, "e60") == [{**prev}]
    assert study.earlier_recipes(prev, "final") == []
    later = {"candidate": "e60", "seeds": [], "earlier": study.earlier_recipes(prev, "e60")}
    assert study.earlier_recipes(later, None) == [{**prev}]  # while a new candidate screens
    assert study.earlier_recipes(later, "final") == []
    assert study.earlier_recipes({"candidate": None, "seeds": []}, "final") == []


def test_a_shipped_ensemble_member_is_kept_when_its_file_is_replaced(tmp_path):
    """keep_ensemble_member: the file of a member of the chosen ensemble moves to weights/ensemble/
    before weights/<model>.pt is replaced."""
    s = study.Settings(root=tmp_path)
    (tmp_path / "weights").mkdir()
    (tmp_path / "results").mkdir()
    target = tmp_path / "weights" / "convnet.pt"
    target.write_bytes(b"weights of run a")
    (tmp_path / "weights" / "convnet.json").write_text(json.dumps({"weights": "weights/convnet.pt", "train_config": {"run_name": "a"}}))
    study.write_json(tmp_path / "results" / "ensembles.json", {"candidates": {"x": {"members": ["a", "b"]}}, "chosen": "x"})
    study.keep_ensemble_member(s, target, "z")  # not a member: stays
    assert target.exists()
    study.keep_ensemble_member(s, target, "a")
    kept = tmp_path / "weights" / "ensemble" / "a.pt"
    assert not target.exists() and kept.read_bytes() == b"weights of run a"
    assert json.loads(kept.with_suffix(".json").read_text()) == {"weights": "weights/ensemble/a.pt", "train_config": {"run_name": "a"}}


def test_recipe_source_is_seed_0_once_every_seed_is_done_and_a_file_made_elsewhere_stops_shipping(tmp_path):
    """The recipe stage's rule: weights/<model>.pt is seed 0 of the chosen recipe (its last later training's
    file where the seed was trained again), only once every seed is done; a file not on this machine is an error."""
    s = study.Settings(root=tmp_path)
    path = tmp_path / "results" / "final_recipes.json"
    assert study.recipe_source(s, "convnet") is None  # nothing recorded
    seeds = [{"seed": k, "cell": f"c-s{k}", "checkpoint": f"runs/c-s{k}.pt", "sha256": f"h{k}", "test_acc": 0.99} for k in (0, 1, 2)]
    rec = {"seeds": [0, 1, 2], "models": {"convnet": {"candidate": "c1", "done": False, "seeds": seeds[:2]}}}
    study.write_json(path, rec)
    assert study.recipe_source(s, "convnet") is None  # seed 2 still to do
    rec["models"]["convnet"].update(done=True, seeds=seeds)
    study.write_json(path, rec)
    assert study.recipe_source(s, "convnet") == {"name": "c-s0", "checkpoint": "runs/c-s0.pt", "sha256": "h0", "candidate": "c1"}
    seeds[0]["later"] = [{"cell": "c-s0-2", "checkpoint": "runs/c-s0-2.pt", "sha256": "hb", "test_acc": 0.97},
                         {"cell": "c-s0-3", "checkpoint": None, "sha256": "hc", "test_acc": 0.98}]  # made on another machine
    study.write_json(path, rec)
    assert study.recipe_source(s, "convnet") == {"name": "c-s0-3", "checkpoint": None, "sha256": "hc", "candidate": "c1"}
    for m, candidate in study.RECIPE_NOT_SHIPPED:  # the exception: its final run stays the file
        rec["models"][m] = {**rec["models"]["convnet"], "candidate": candidate}
        study.write_json(path, rec)
        assert study.recipe_source(s, m) is None
    rec["models"]["convnet"]["candidate"] = "e60x"
    study.write_json(path, rec)
    with pytest.raises(SystemExit, match="c-s0-3 .* is not on this machine"):
        study.ship_models(s)
    assert not (tmp_path / "weights" / "convnet.pt").exists()


def test_shipped_record_says_whether_the_file_is_seed_0_and_why_not(tmp_path):
    """final_recipes.json's "shipped": seed_0 by the card's made_from sha256 (the shipped bytes differ:
    calibration is added); a done recipe whose seed 0 is not the file says why, and whether that was
    decided after its test scores (RECIPE_NOT_SHIPPED) or the file is just not shipped yet."""
    s = study.Settings(root=tmp_path)
    (tmp_path / "weights").mkdir()
    m, cand = next(iter(study.RECIPE_NOT_SHIPPED))
    entry = {"candidate": "c1", "done": True, "seeds": [{"seed": 0, "cell": "c-s0", "checkpoint": "runs/c-s0.pt", "sha256": "h0"}]}
    assert study.shipped_record(s, m, entry) is None  # nothing shipped
    (tmp_path / "weights" / f"{m}.pt").write_bytes(b"calibrated weights")
    card = {"train_config": {"run_name": "c-s0"}, "made_from": {"cell": "c-s0", "checkpoint": "runs/c-s0.pt", "sha256": "h0"}}
    (tmp_path / "weights" / f"{m}.json").write_text(json.dumps(card))
    r = study.shipped_record(s, m, entry)
    assert r["seed_0"] is True and "why_not" not in r and r["made_from"]["sha256"] == "h0"
    assert r["sha256"] == runs.sha256(tmp_path / "weights" / f"{m}.pt") and r["file"] == f"weights/{m}.pt"
    (tmp_path / "weights" / f"{m}.json").write_text(json.dumps({"train_config": {"run_name": "final-s2"}}))
    r = study.shipped_record(s, m, entry)
    assert (r["seed_0"], r["decided_after_test"], r["run"]) == (False, False, "final-s2") and "--only evaluate" in r["why_not"]
    r = study.shipped_record(s, m, {**entry, "candidate": cand})
    assert r["decided_after_test"] is True and r["why_not"] == study.RECIPE_NOT_SHIPPED[(m, cand)]
    assert "why_not" not in study.shipped_record(s, m, {**entry, "done": False})  # seeds to do: no verdict yet


def test_twin_file_is_the_chosen_candidates_finished_seed_0_run(tmp_path, monkeypatch):
    """study.twin_file: the held-out twin of a shipped recipe file is its chosen candidate's
    seed-0 run, only once that run has finished (a run in progress already has a best.pt)."""
    s = study.Settings(root=tmp_path)
    cells = [study.Cell(f"cand-s{k}", "dnn", 3, {}, {"seed": k}) for k in (1, 0)]
    monkeypatch.setattr(study, "recipe_source", lambda s, m: {"candidate": "c1"})
    monkeypatch.setattr(study, "candidate_cells", lambda s, m: {"c1": cells, "c2": []})
    assert study.twin_file(s, "dnn") is None  # its file is not on this machine
    run = tmp_path / "runs" / "study" / "final" / "cand-s0"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"epoch 1 of 15")
    assert study.twin_file(s, "dnn") is None  # still training
    (run / "result.json").write_text("{}")
    assert study.twin_file(s, "dnn") == run / "best.pt"
    assert study.twin_file(s, "fastresnet") is None  # no recipe stage
    monkeypatch.setattr(study, "recipe_source", lambda s, m: None)  # no recipe file shipped
    assert study.twin_file(s, "dnn") is None
