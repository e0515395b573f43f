"""study.py's fair optimizer comparison (stage optim_fair): the cells it defines and the
table it returns, on fake results in a temporary root (no training)."""

import math
import statistics

import pytest

import study


def fake_result(s: study.Settings, cell: study.Cell, val_acc: float | None) -> None:
    """A cell's results file as run_cell writes it, reduced to what the comparison reads (None: diverged)."""
    study.write_json(study.result_path(s, cell.name), {
        "name": cell.name, "tags": cell.tags, "status": "diverged" if val_acc is None else "finished",
        "best": {} if val_acc is None else {"val_acc": val_acc}, "hardware": "test"})


def tune(s: study.Settings, model: str, accs: dict) -> None:
    """Fake tuning results: accs[optimizer][lr] -> val_acc (None: diverged)."""
    for opt in study.FAIR_OPTIMIZERS:
        for c in study.fair_tuning_cells(s, model, opt):
            fake_result(s, c, accs[opt][c.tags["lr"]])


def grid(best_lr: float, peak: float = 0.99) -> dict:
    """Validation accuracies over FAIR_LRS peaking at best_lr, lower by 1 point per decade away."""
    return {lr: peak - 0.01 * abs(math.log10(lr / best_lr)) for lr in study.FAIR_LRS}


@pytest.mark.parametrize("smoke", [False, True])
def test_every_optimizer_gets_the_same_grid_budget_and_seeds(tmp_path, smoke):
    s = study.Settings(root=tmp_path, smoke=smoke)
    cells = study.optim_fair_cells(s)
    assert study.FAIR_LRS == (1.0, *study.LRS)
    for m in study.OPTIM_MODELS:
        tuning = [c for c in cells if isinstance(c, study.Cell) and c.model == m]
        per_opt = {o: sorted((c.tags["lr"], c.tags["seed"], c.epochs) for c in tuning if c.tags["optimizer"] == o)
                   for o in study.FAIR_OPTIMIZERS}
        expected = sorted((lr, study.FAIR_TUNE_SEED, s.epochs(study.LR_EPOCHS[m])) for lr in study.FAIR_LRS)
        assert all(v == expected for v in per_opt.values()), per_opt
        waiting = [w for w in cells if isinstance(w, study.Waiting) and w.model == m]
        assert len(waiting) == len(study.FAIR_OPTIMIZERS) and all(w.stage == "optim_fair" for w in waiting)
        assert {w.runs for w in waiting} == {len(s.seeds(study.FAIR_SEEDS))}


def test_the_tuned_lr_runs_on_seeds_never_used_for_tuning(tmp_path):
    s = study.Settings(root=tmp_path)
    best = {"sgd": 0.1, "adam": 0.001, "adamw": 0.01, "adadelta": 1.0}
    for m in study.OPTIM_MODELS:
        tune(s, m, {o: grid(best[o]) for o in study.FAIR_OPTIMIZERS})
    cells = study.optim_fair_cells(s)
    assert all(isinstance(c, study.Cell) for c in cells)
    assert len({c.name for c in cells}) == len(cells)
    tuning_names = {c.name for m in study.OPTIM_MODELS for o in study.FAIR_OPTIMIZERS for c in study.fair_tuning_cells(s, m, o)}
    compared = [c for c in cells if c.name not in tuning_names]
    assert study.FAIR_TUNE_SEED not in study.FAIR_SEEDS
    assert all(c.tags["seed"] in study.FAIR_SEEDS for c in compared)
    for m in study.OPTIM_MODELS:
        for o in study.FAIR_OPTIMIZERS:
            mine = [c for c in compared if c.model == m and c.tags["optimizer"] == o]
            assert sorted(c.tags["seed"] for c in mine) == list(study.FAIR_SEEDS)
            assert {c.tags["lr"] for c in mine} == {best[o]} == {study.fair_lr(s, m, o)}
            assert {c.epochs for c in mine} == {study.LR_EPOCHS[m]}


def test_cells_are_shared_by_name_with_the_lr_and_optim_stages(tmp_path):
    s = study.Settings(root=tmp_path)
    names = {c.name for c in study.optim_fair_cells(s) if isinstance(c, study.Cell)}
    for m in study.OPTIM_MODELS:  # the LR table's seed-0 grid is the fair grid's SGD and Adam rows, less LR 1.0
        for o in ("sgd", "adam"):
            assert {c.name for c in study.lr_grid_cells(s, m, o)} <= names
    assert "convnet-adadelta-lr1-e5-s0" in names  # the optim stage's Adadelta seed 0


def test_the_stage_is_registered_after_optim_and_leaves_the_optim_stage_alone(tmp_path):
    stages = list(study.STAGES)  # an ordered dict of Stage
    assert stages.index("optim_fair") == stages.index("optim") + 1
    assert study.STAGES["optim_fair"].help
    s = study.Settings(root=tmp_path)
    assert [c.name for c in study.stage_cells(s, "optim_fair") if isinstance(c, study.Cell)] == \
        [c.name for c in study.optim_fair_cells(s) if isinstance(c, study.Cell)]
    for m in study.OPTIM_MODELS:  # the optim stage (which chose the final recipes) still tunes from the LR table
        for o in ("sgd", "adam"):
            for c, acc in zip(study.lr_grid_cells(s, m, o), (0.98, 0.99, 0.97, 0.96)):
                fake_result(s, c, acc)
    lrs = {(c.model, c.tags["optimizer"]): c.tags["lr"] for c in study.optim_cells(s) if isinstance(c, study.Cell)}
    assert all(lrs[(m, "adamw")] == lrs[(m, "adam")] == 0.01 and lrs[(m, "adadelta")] == study.ADADELTA_LR
               for m in study.OPTIM_MODELS)


def test_fair_lr_ties_go_to_the_larger_lr_and_diverged_runs_never_win(tmp_path):
    s = study.Settings(root=tmp_path)
    accs = {o: grid(0.01) for o in study.FAIR_OPTIMIZERS}
    accs["sgd"] = {1.0: None, 0.1: 0.99, 0.01: 0.99, 0.001: 0.98, 0.0001: 0.97}
    accs["adam"] = {lr: None for lr in study.FAIR_LRS}
    tune(s, "convnet", accs)
    assert study.fair_lr(s, "convnet", "sgd") == 0.1
    assert study.fair_lr(s, "convnet", "adam") is None  # all diverged: nothing to compare
    assert study.fair_lr(s, "convnet", "adamw") == 0.01
    assert study.fair_lr(s, "dnn", "sgd") is None  # no results yet


def test_the_table_gives_means_stds_and_ties_by_the_stated_rule(tmp_path):
    s = study.Settings(root=tmp_path)
    best = {"sgd": 0.1, "adam": 0.001, "adamw": 0.01, "adadelta": 1.0}
    tune(s, "convnet", {o: grid(best[o]) for o in study.FAIR_OPTIMIZERS})
    vals = {"sgd": [0.9940, 0.9936, 0.9944], "adam": [0.9938, 0.9940, 0.9930],  # within noise of sgd
            "adamw": [0.9942, 0.9938, 0.9938], "adadelta": [0.9900, 0.9902, 0.9898]}  # 0.4 points below: no tie
    assert study.optim_fair_table(s, "convnet") is None  # the comparison seeds have not run
    for c in study.optim_fair_cells(s):
        if isinstance(c, study.Cell) and c.model == "convnet" and c.tags["seed"] in study.FAIR_SEEDS:
            fake_result(s, c, vals[c.tags["optimizer"]][study.FAIR_SEEDS.index(c.tags["seed"])])
    t = study.optim_fair_table(s, "convnet")
    rows = {r["optimizer"]: r for r in t["rows"]}
    assert t["seeds"] == list(study.FAIR_SEEDS) and t["tune_seed"] == study.FAIR_TUNE_SEED
    assert t["one_image"] == pytest.approx(1 / 5000)
    assert t["best"] == max(vals, key=lambda o: statistics.mean(vals[o]))
    b = rows[t["best"]]
    for o, r in rows.items():
        assert r["lr"] == best[o] and r["val"] == vals[o]
        assert r["mean"] == pytest.approx(statistics.mean(vals[o])) and r["std"] == pytest.approx(statistics.stdev(vals[o]))
        se = math.sqrt(statistics.variance(vals[o]) / 3 + b["std"] ** 2 / 3)
        assert r["noise"] == pytest.approx(max(study.FAIR_NOISE_SE * se, 1 / 5000))
        assert r["tie"] == (b["mean"] - r["mean"] <= r["noise"] + 1e-12)
        assert r["tuning"] == pytest.approx(grid(best[o]))
    assert rows["adam"]["tie"] and rows["sgd"]["tie"] and not rows["adadelta"]["tie"]


def test_an_optimizer_whose_every_lr_diverged_is_left_out_not_waited_for(tmp_path):
    s = study.Settings(root=tmp_path)
    accs = {o: grid(0.01) for o in study.FAIR_OPTIMIZERS}
    accs["sgd"] = {lr: None for lr in study.FAIR_LRS}
    tune(s, "convnet", accs)
    cells = [c for c in study.optim_fair_cells(s) if c.model == "convnet"]
    assert all(isinstance(c, study.Cell) for c in cells)  # nothing waits: the stage can finish
    assert not [c for c in cells if c.tags["optimizer"] == "sgd" and c.tags["seed"] in study.FAIR_SEEDS]
    for c in cells:
        if c.tags["seed"] in study.FAIR_SEEDS:
            fake_result(s, c, 0.99)
    rows = {r["optimizer"]: r for r in study.optim_fair_table(s, "convnet")["rows"]}
    assert rows["sgd"]["lr"] is None and rows["sgd"]["val"] == [] and not rows["sgd"]["tie"]
    assert all(rows[o]["tie"] for o in ("adam", "adamw", "adadelta"))
