"""The study's experiments as cells, and the choices made from their results.

A *cell* is one training run (train.train with one TrainConfig), named by its settings; its
record lives in results/cells/<name>.json. This file says, stage by stage, which cells there
are (the LR grid, the optimizers, the regularization variants, the final recipes and their
attempts, the refits, the fair optimizer comparison) and what the study chooses from their
recorded results on validation (best LR, optimizer, augmentation, width, final recipe).
Nothing here trains or writes: study.py runs the cells; study_report.py reads the choices.
"""

import inspect
import json
import math
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import recipes
from data import load_data
from models import STUDY_MODELS
from train import TrainConfig, lr_find

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# The plan's budgets. Epochs per cell are chosen so the whole study fits in a few sessions
# of a 2-core CPU; ResNet-18 (full width) costs ~40x a ConvNet per image, so its cells are shorter.

LRS = (0.1, 0.01, 0.001, 0.0001)  # the homework's LR grid
SEEDS = (0, 1, 2)
LR_SEED = 0  # the LR table's runs
LR_EPOCHS = {"dnn": 10, "convnet": 5, "fastresnet": 5, "resnet": 2}  # every cell of a row: same budget
ADAM_MODELS = ("dnn", "convnet", "fastresnet", "resnet")  # the LR table's Adam rows
# Rows with the homework's grid only: no LR range test's suggestion and no LR the grid points to (for
# ResNet-18, ~4.5 min a cell on 2 CPU cores, the row that checks train.py's default recipe).
GRID_ONLY_ROWS = (("resnet", "adam"),)
# The optimizers whose LR-table rows a ResNet's final recipe is chosen from (the DNN and the ConvNet take
# theirs from the optimizer comparison): ResNet-18's final recipe was chosen from its SGD row.
FINAL_OPTIMIZERS = {"resnet": ("sgd",), "fastresnet": ("sgd", "adam")}
STEM_EPOCHS = 1  # ResNet-18 stems compared at equal epochs
OPTIM_MODELS = ("convnet", "dnn")
ADADELTA_LR = 1.0  # pytorch/examples' choice (with StepLR 0.7); it is not in the LR grid
REG_MODEL = "convnet"
REG_EPOCHS = 12  # long enough for an unregularized ConvNet to overfit
SMOKE_LR_FIND_STEPS = 20  # --smoke: the LR range test's steps (train.lr_find's default otherwise)
# The final stage's budgets, seeds, attempts and the recipe stage's candidates: recipes.py.
FINAL_EPOCHS = {m: r["epochs"] for m, r in recipes.FINAL.items()}
FINAL_SEEDS = {m: recipes.FINAL_SEEDS for m in recipes.FINAL}
ATTEMPTS = recipes.ATTEMPTS
SMOKE_EPOCHS = 0.005  # --smoke: ~2 steps per cell

# Over- and underfitting: the ConvNet with one regularizer removed at a time, all removed,
# too little and more capacity, and three stronger augmentations. Overrides of TrainConfig fields.
REG_VARIANTS = {
    "baseline": {},
    "no-augment": {"augment": False},
    "no-dropout": {"model_config": {"dropout": 0.0}},
    "no-smoothing": {"label_smoothing": 0.0},
    "no-weight-decay": {"weight_decay": 0.0},
    "none": {"augment": False, "model_config": {"dropout": 0.0}, "label_smoothing": 0.0, "weight_decay": 0.0},
    "small": {"model_config": {"width": 4}},
    "wide": {"model_config": {"width": 64}},
    "affine": {"rotate": 10.0, "scale": 0.1},
    "elastic": {"elastic": 34.0},
    # Simard et al. (2003) and Ciresan et al. (2010) used both: affine and elastic distortions.
    "affine-elastic": {"rotate": 10.0, "scale": 0.1, "elastic": 34.0},
}
# The final stage takes, on validation, the best augmentation (for every model) and the best
# ConvNet width among these variants; each factor is measured with the others at the baseline.
AUGMENTATIONS = ("baseline", "affine", "elastic", "affine-elastic")
CAPACITIES = ("baseline", "wide")
PATIENCE = 3  # the early-stopping rule the report applies to the regularization curves

@dataclass
class Settings:
    """Where the study writes and how big it is; --smoke shrinks every budget."""
    root: Path = ROOT
    data_dir: str | None = None
    smoke: bool = False
    models: tuple[str, ...] = STUDY_MODELS
    shard: tuple[int, int] | None = None  # (i, n): this worker runs every n-th cell, from the i-th
    _mnist: object = field(default=None, repr=False, compare=False)  # the data, loaded once, by mnist()

    def mnist(self):
        """The MNIST split, loaded on first use (never downloaded here)."""
        if self._mnist is None:
            self._mnist = load_data("mnist", self.data_dir, download=False)
        return self._mnist

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def runs(self) -> Path:
        return self.root / "runs" / "study"

    def epochs(self, e: float) -> float:
        return SMOKE_EPOCHS if self.smoke else e

    def seeds(self, seeds=SEEDS) -> tuple[int, ...]:
        return seeds[:1] if self.smoke else tuple(seeds)

    def model_config(self, model: str) -> dict:
        # Smoke: ResNet-18 at width 8, so evaluating 15,000 images takes a second, not a minute.
        return {"width": 8} if self.smoke and model == "resnet" else {}


# -----------------------------------------------------------------------------
# Cells


@dataclass
class Cell:
    name: str  # unique, made from the settings: results/cells/<name>.json
    model: str
    epochs: float
    overrides: dict  # TrainConfig fields
    tags: dict = field(default_factory=dict)  # what the report groups by: optimizer, lr, seed, variant, stem, kind


def make_cell(s: Settings, model: str, optimizer: str, lr: float, epochs: float, seed: int = 0, variant: str = "",
              **overrides) -> Cell:
    epochs = s.epochs(epochs)
    model_config = {**s.model_config(model), **overrides.pop("model_config", {})}
    name = f"{model}{'-' + variant if variant else ''}-{optimizer}-lr{lr:g}-e{epochs:g}-s{seed}"
    fields = dict(model=model, model_config=model_config, optimizer=optimizer, lr=lr, epochs=epochs, seed=seed, **overrides)
    if optimizer == "adadelta":  # pytorch/examples' schedule: StepLR(gamma 0.7) per epoch, no warmup
        fields.update(schedule="step", gamma=0.7, warmup=0.0)
    tags = dict(model=model, optimizer=optimizer, lr=lr, seed=seed, variant=variant or "baseline")
    return Cell(name, model, epochs, fields, tags)


def result_path(s: Settings, name: str) -> Path:
    return s.results / "cells" / f"{name}.json"


def load_result(s: Settings, name: str) -> dict | None:
    p = result_path(s, name)
    return json.loads(p.read_text()) if p.exists() else None


def train_config(s: Settings, cell: Cell) -> TrainConfig:
    return TrainConfig(**cell.overrides, data_dir=s.data_dir, out=str(s.runs / "cells"), run_name=cell.name, weights_dir=None)


def cell_record(cell: Cell, r: dict, hw: str) -> dict:
    return {"name": cell.name, "tags": cell.tags, "status": r["status"], "best": r["best"], "test": r["test"],
            "seconds": round(r["seconds"], 2), "epochs": cell.epochs, "hardware": hw, "config": r["config"],
            "history": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in h.items()} for h in r["history"]],
            "worker": f"{platform.node()}:{os.getpid()}"}


# -----------------------------------------------------------------------------
# What each stage trains. A stage that depends on an earlier one's results says so with
# `Waiting` until they exist (--plan shows it; running it in order never meets it).


@dataclass
class Waiting:
    stage: str  # the stage whose results are needed
    what: str  # what will be trained once they exist
    model: str
    epochs: float  # for the time estimate
    runs: int = 1


def best_lr(s: Settings, model: str, optimizer: str) -> float | None:
    """The grid LR with the best validation accuracy (ties: the larger LR), None until all are done."""
    rows = [load_result(s, c.name) for c in lr_grid_cells(s, model, optimizer)]
    if any(r is None for r in rows):
        return None
    ok = [r for r in rows if r["status"] != "diverged" and r["best"].get("val_acc", -1) >= 0]
    return max(ok, key=lambda r: (r["best"]["val_acc"], r["tags"]["lr"]))["tags"]["lr"] if ok else None


def lr_grid_cells(s: Settings, model: str, optimizer: str) -> list[Cell]:
    return [make_cell(s, model, optimizer, lr, LR_EPOCHS[model], LR_SEED) for lr in LRS]


def stem_cells(s: Settings) -> list[Cell]:
    if "resnet" not in s.models:
        return []
    return [make_cell(s, "resnet", "sgd", 0.1, STEM_EPOCHS, variant=f"stem{stem}", model_config={"stem": stem})
            for stem in ("3x3s1", "3x3s2", "7x7s2pool")]


def lr_find_path(s: Settings) -> Path:
    return s.results / "lr_find.json"


def lr_rows(s: Settings) -> list[tuple[str, str]]:
    """(model, optimizer) rows of the LR table."""
    return [(m, "sgd") for m in s.models] + [(m, "adam") for m in ADAM_MODELS if m in s.models]


def finder_rows(s: Settings) -> list[tuple[str, str]]:
    """The LR table's rows that also run the LR range test's suggestion and the LR the grid points to."""
    return [row for row in lr_rows(s) if row not in GRID_ONLY_ROWS]


def round_lr(lr: float) -> float:
    """One significant digit: 0.0347 -> 0.03, as a person would try it."""
    return float(f"{lr:.0e}")


def data_lr(s: Settings, model: str, optimizer: str) -> float | None:
    """The LR the grid's results point to: past the grid's edge when the best LR is at an edge
    (x3 beyond it), else halfway (geometric mean) towards the better of its two neighbours."""
    rows = {c.tags["lr"]: load_result(s, c.name) for c in lr_grid_cells(s, model, optimizer)}
    if any(r is None for r in rows.values()):
        return None
    score = {lr: (r["best"]["val_acc"] if r["status"] != "diverged" else -1.0) for lr, r in rows.items()}
    grid = sorted(score, reverse=True)  # 0.1, 0.01, ...
    best = max(grid, key=lambda lr: (score[lr], lr))
    i = grid.index(best)
    if i == 0:
        return round_lr(best * 3)
    if i == len(grid) - 1:
        return round_lr(best / 3)
    neighbour = max((grid[i - 1], grid[i + 1]), key=lambda lr: score[lr])
    return round_lr(math.sqrt(best * neighbour))


def lr_cells(s: Settings) -> list:
    cells = [c for m, opt in lr_rows(s) for c in lr_grid_cells(s, m, opt)]
    found = json.loads(lr_find_path(s).read_text()) if lr_find_path(s).exists() else {}
    for m, opt in finder_rows(s):
        key = f"{m}-{opt}"
        if key not in found:
            cells.append(Waiting("lr_find", f"{m} {opt} at the LR finder's suggestion", m, LR_EPOCHS[m]))
            continue
        lr = round_lr(found[key]["suggested_lr"])
        if lr not in LRS:  # otherwise the grid already has it
            c = make_cell(s, m, opt, lr, LR_EPOCHS[m], LR_SEED)
            c.tags["kind"] = "lr_find"
            cells.append(c)
    for m, opt in finder_rows(s):  # then one more per row, where the grid's own results point
        lr = data_lr(s, m, opt)
        if lr is None:
            cells.append(Waiting("lr", f"{m} {opt} at the LR the grid points to", m, LR_EPOCHS[m]))
            continue
        c = make_cell(s, m, opt, lr, LR_EPOCHS[m], LR_SEED)
        c.tags["kind"] = c.tags.get("kind", "data")
        if not any(x.name == c.name for x in cells if isinstance(x, Cell)):
            cells.append(c)
    return cells


def optim_cells(s: Settings) -> list:
    cells = []
    for m in (m for m in OPTIM_MODELS if m in s.models):
        lrs = {"sgd": best_lr(s, m, "sgd"), "adam": best_lr(s, m, "adam")}
        lrs["adamw"] = lrs["adam"]  # AdamW at Adam's best LR: the same step size, decoupled decay
        lrs["adadelta"] = ADADELTA_LR
        for opt, lr in lrs.items():
            if lr is None:
                cells.append(Waiting("lr", f"{m} {opt} at its best grid LR, seeds {list(s.seeds())}", m, LR_EPOCHS[m], len(s.seeds())))
                continue
            cells += [make_cell(s, m, opt, lr, LR_EPOCHS[m], seed) for seed in s.seeds()]
    return cells


def reg_cells(s: Settings) -> list:
    if REG_MODEL not in s.models:
        return []
    lr = best_lr(s, REG_MODEL, "sgd")
    if lr is None:
        return [Waiting("lr", f"{REG_MODEL} {v}, seeds {list(s.seeds())}", REG_MODEL, REG_EPOCHS, len(s.seeds())) for v in REG_VARIANTS]
    return [make_cell(s, REG_MODEL, "sgd", lr, REG_EPOCHS, seed, variant=v if v != "baseline" else "reg", **dict(o))
            for v, o in REG_VARIANTS.items() for seed in s.seeds()]


def mean_val(s: Settings, cells: list[Cell]) -> float | None:
    rows = [load_result(s, c.name) for c in cells]
    if any(r is None for r in rows):
        return None
    return statistics.mean(r["best"].get("val_acc", 0.0) for r in rows)


def best_variant(s: Settings, variants: tuple[str, ...]) -> tuple[str, dict] | None:
    """The variant of the regularization stage with the best mean validation accuracy over seeds
    (ties: the earlier, simpler one); None until all of their cells are done."""
    cells = [c for c in reg_cells(s) if isinstance(c, Cell)]
    if not cells:
        return None
    scores = {}
    for v in variants:
        score = mean_val(s, [c for c in cells if c.tags["variant"] == (v if v != "baseline" else "reg")])
        if score is None:
            return None
        scores[v] = score
    best = max(variants, key=lambda v: (scores[v], -variants.index(v)))
    return best, REG_VARIANTS[best]


def chosen_augmentation(s: Settings) -> tuple[str, dict] | None:
    return best_variant(s, AUGMENTATIONS)


def chosen_width(s: Settings) -> tuple[str, dict] | None:
    """The ConvNet's width for the final runs: the recipe's, or wider where that was better on validation."""
    return best_variant(s, CAPACITIES)


def best_optimizer(s: Settings, model: str) -> tuple[str, float] | None:
    """(optimizer, LR) with the best mean validation accuracy over seeds in the optimizer comparison."""
    cells = [c for c in optim_cells(s) if isinstance(c, Cell) and c.model == model]
    if not cells or len(cells) < 4 * len(s.seeds()):
        return None
    scores = {}
    for opt in ("sgd", "adam", "adamw", "adadelta"):
        score = mean_val(s, [c for c in cells if c.tags["optimizer"] == opt])
        if score is None:
            return None
        scores[opt] = (score, next(c.tags["lr"] for c in cells if c.tags["optimizer"] == opt))
    opt = max(scores, key=lambda o: scores[o][0])
    return opt, scores[opt][1]


# -----------------------------------------------------------------------------
# A fair optimizer comparison, for the report only. The optim stage above chose the
# final recipes and stays as it ran: there AdamW took Adam's LR and Adadelta a fixed 1.0, and the
# seed-0 runs were the tuning runs. Here every optimizer gets its own LR from one common grid,
# chosen on validation at the tuning seed, and is then compared at that LR over other seeds.

FAIR_LRS = (1.0, *LRS)  # the homework grid plus 1.0, Adadelta's usual LR
FAIR_OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
FAIR_TUNE_SEED = 0
FAIR_SEEDS = (1, 2, 3)  # never the tuning seed
FAIR_NOISE_SE = 2.0  # a gap under 2 standard errors of the difference of two means is a tie


def fair_tuning_cells(s: Settings, model: str, optimizer: str) -> list[Cell]:
    """The LR search: one cell per LR of FAIR_LRS at FAIR_TUNE_SEED, the model's LR-table budget."""
    return [make_cell(s, model, optimizer, lr, LR_EPOCHS[model], FAIR_TUNE_SEED) for lr in FAIR_LRS]


def fair_lr(s: Settings, model: str, optimizer: str) -> float | None:
    """The FAIR_LRS LR with the best validation accuracy at the tuning seed (ties: the larger LR;
    diverged runs never win); None until every tuning cell has its result."""
    rows = [load_result(s, c.name) for c in fair_tuning_cells(s, model, optimizer)]
    if any(r is None for r in rows):
        return None
    ok = [r for r in rows if r["status"] != "diverged" and r["best"].get("val_acc", -1) >= 0]
    return max(ok, key=lambda r: (r["best"]["val_acc"], r["tags"]["lr"]))["tags"]["lr"] if ok else None


def optim_fair_cells(s: Settings) -> list:
    """Stage optim_fair: per model of OPTIM_MODELS and optimizer, the tuning cells, then the tuned
    LR on the comparison seeds (Waiting until the tuning cells are done). Cells are shared by name
    with the LR and optim stages where the settings are the same."""
    cells = []
    for m in (m for m in OPTIM_MODELS if m in s.models):
        compare = []  # after all of the model's tuning cells: a stopped run leaves every LR chosen, if not every seed run
        for opt in FAIR_OPTIMIZERS:
            tuning = fair_tuning_cells(s, m, opt)
            cells += tuning
            lr = fair_lr(s, m, opt)
            if lr is None and all(load_result(s, c.name) for c in tuning):
                continue  # every LR diverged: nothing to compare (the table says so)
            if lr is None:
                compare.append(Waiting("optim_fair", f"{m} {opt} at its tuned LR, seeds {list(s.seeds(FAIR_SEEDS))}",
                                       m, s.epochs(LR_EPOCHS[m]), len(s.seeds(FAIR_SEEDS))))
                continue
            compare += [make_cell(s, m, opt, lr, LR_EPOCHS[m], seed) for seed in s.seeds(FAIR_SEEDS)]
        cells += compare
    unique = {}
    for c in cells:  # a tuned LR's seeds never repeat a tuning cell (the seeds differ), but stay safe
        unique.setdefault(c.name if isinstance(c, Cell) else id(c), c)
    return list(unique.values())


def optim_fair_table(s: Settings, model: str) -> dict | None:
    """The fair comparison for one model, None until every cell of it has its result.

    Returns {"model", "epochs", "grid": FAIR_LRS, "tune_seed", "seeds": the comparison seeds,
    "one_image": one validation image as an accuracy (1/5,000 = 0.0002), "rule": the tie rule in words,
    "best": the optimizer with the best mean, "rows": [per optimizer: {"optimizer", "lr": tuned (None, and
    no comparison, when every LR diverged; then val is [] and mean, std, gap, noise are None),
    "tuning": {lr: val_acc or None if diverged} at the tuning seed, "val": [val_acc per comparison seed],
    "mean", "std" (sample std; 0.0 for one seed), "gap": best mean - this mean, "noise": FAIR_NOISE_SE x
    the standard error of that difference (at least one_image), "tie": gap <= noise, "hardware": the
    machines its cells ran on}]}.
    Accuracies are fractions (0.9938), not percent."""
    from data import VAL_FRACTION
    one_image = 1 / round(60_000 * VAL_FRACTION)  # the split of MNIST's 60,000 training images: 5,000 validate
    seeds = s.seeds(FAIR_SEEDS)
    rows = []
    for opt in FAIR_OPTIMIZERS:
        tuning = {c.tags["lr"]: load_result(s, c.name) for c in fair_tuning_cells(s, model, opt)}
        if any(r is None for r in tuning.values()):
            return None
        lr = fair_lr(s, model, opt)
        if lr is None:  # every LR diverged
            rows.append({"optimizer": opt, "lr": None, "tuning": {lr_: None for lr_ in tuning}, "val": [], "mean": None,
                         "std": None, "hardware": sorted({r.get("hardware", "") for r in tuning.values()})})
            continue
        results = [load_result(s, make_cell(s, model, opt, lr, LR_EPOCHS[model], seed).name) for seed in seeds]
        if any(r is None for r in results):
            return None
        val = [r["best"].get("val_acc", 0.0) if r["status"] != "diverged" else 0.0 for r in results]
        rows.append({"optimizer": opt, "lr": lr,
                     "tuning": {lr_: (r["best"].get("val_acc") if r["status"] != "diverged" else None) for lr_, r in tuning.items()},
                     "val": val, "mean": statistics.mean(val), "std": statistics.stdev(val) if len(val) > 1 else 0.0,
                     "hardware": sorted({r.get("hardware", "") for r in [*tuning.values(), *results]})})
    best = max((r for r in rows if r["mean"] is not None), key=lambda r: r["mean"], default=None)
    if best is None:
        return None
    for r in rows:
        if r["mean"] is None:
            r.update(gap=None, noise=None, tie=False)
            continue
        se = math.sqrt(best["std"] ** 2 / len(best["val"]) + r["std"] ** 2 / len(r["val"]))
        r["gap"] = best["mean"] - r["mean"]
        r["noise"] = max(FAIR_NOISE_SE * se, one_image)
        r["tie"] = r["gap"] <= r["noise"] + 1e-12
    return {"model": model, "epochs": s.epochs(LR_EPOCHS[model]), "grid": list(FAIR_LRS), "tune_seed": FAIR_TUNE_SEED,
            "seeds": list(seeds), "one_image": one_image, "best": best["optimizer"],
            "rule": f"a tie when the gap to the best mean is at most the larger of {FAIR_NOISE_SE:g} standard errors of the "
                    f"difference of the two means over {len(seeds)} seeds and one validation image", "rows": rows}


def final_choice(s: Settings, model: str) -> dict | None:
    """The final run's settings, every one chosen on validation: the optimizer and LR with the best
    mean validation accuracy in the optimizer comparison (DNN, ConvNet), else the best cell of the
    LR table's SGD and Adam rows; augmentation from the regularization stage; longer training.
    None until those stages are done."""
    if model in OPTIM_MODELS:
        best = best_optimizer(s, model)
        if best is None:
            return None
        opt, lr = best
    else:
        options = [(opt, best_lr(s, model, opt)) for opt in FINAL_OPTIMIZERS.get(model, ("sgd",))]
        if any(lr is None for _, lr in options):
            return None
        scored = [(load_result(s, make_cell(s, model, opt, lr, LR_EPOCHS[model]).name)["best"]["val_acc"], opt, lr)
                  for opt, lr in options]
        _, opt, lr = max(scored)
    aug = chosen_augmentation(s) if "convnet" in s.models else ("baseline", {})
    width = chosen_width(s) if model == "convnet" else ("baseline", {})
    if aug is None or width is None:
        return None
    name = aug[0] + ("" if width[0] == "baseline" else f"-{width[0]}")
    return {"optimizer": opt, "lr": lr, "augmentation": aug[0], "capacity": width[0], "variant": name,
            "overrides": {**aug[1], **width[1]}, "epochs": s.epochs(FINAL_EPOCHS[model])}


def attempt_changes(model: str, attempt: str) -> dict:
    """An attempt's changes to the final recipe, without its seed list (a plan, not a recipe)."""
    return {k: v for k, v in ATTEMPTS.get(model, {}).get(attempt, {}).items() if k != "seeds"}


def shipped_final(s: Settings, model: str) -> Cell | None:
    """The model's final run with the best validation accuracy (ties: the main recipe, then the
    earlier attempt, then the lower seed), attempts included; None until every final run of the
    model has its result."""
    cells = [c for c in recipe_cells(s) if isinstance(c, Cell) and c.model == model]
    results = [load_result(s, c.name) for c in cells]
    if not cells or any(r is None or not r.get("test") for r in results):
        return None
    attempts = ["", *ATTEMPTS.get(model, {})]
    return max(zip(results, cells), key=lambda rc: (rc[0]["best"]["val_acc"], -attempts.index(rc[1].tags["attempt"]),
                                                    -rc[1].tags["seed"]))[1]


def best_recipe(s: Settings, model: str) -> dict | None:
    """The recipe of the shipped final run as train.BEST_RECIPES writes it (`python train.py --recipe
    best` trains it): final_choice, plus the attempt's change where an attempt won on validation."""
    choice = final_choice(s, model)
    if choice is None:
        return None
    shipped = shipped_final(s, model)
    o = {**choice["overrides"], **(attempt_changes(model, shipped.tags["attempt"]) if shipped else {})}
    recipe = {"optimizer": choice["optimizer"], "lr": choice["lr"], "epochs": FINAL_EPOCHS[model], **o}
    if not recipe.get("model_config"):
        recipe.pop("model_config", None)
    return recipe


# Refits (labelled as such): the shipped run's recipe and epochs trained on all 60,000
# training images (train + validation). No validation is left to choose with, so a refit never
# becomes weights/<model>.pt: it is kept as weights/<model>-refit.pt. The ConvNet only (the
# cheap model nearest its target), one seed: the 2-core CPU's budget this round.
REFITS = ("convnet",)
REFIT_SEEDS = (0,)

def recipe_cells(s: Settings) -> list:
    """The final stage's runs that compete on validation: each model's final recipe and its attempts."""
    out = []
    for m in s.models:
        choice = final_choice(s, m)
        seeds = s.seeds(FINAL_SEEDS[m])
        if choice is None:
            out.append(Waiting("regularization", f"{m} with the chosen LR, augmentation{' and width' if m == 'convnet' else ''}, seeds {list(seeds)}",
                               m, s.epochs(FINAL_EPOCHS[m]), len(seeds)))
            continue
        for attempt in ["", *ATTEMPTS.get(m, {})]:
            changes = attempt_changes(m, attempt)
            epochs = changes.pop("epochs", FINAL_EPOCHS[m])
            for seed in s.seeds(ATTEMPTS.get(m, {}).get(attempt, {}).get("seeds", FINAL_SEEDS[m])):
                c = make_cell(s, m, choice["optimizer"], choice["lr"], epochs, seed,
                              variant=f"final-{choice['variant']}" + (f"-{attempt}" if attempt else ""),
                              **{**choice["overrides"], **changes})
                c.tags.update(kind="final", attempt=attempt)
                out.append(c)
    return out


def refit_cells(s: Settings) -> list:
    """REFITS: the shipped run's recipe and epochs on train + validation, with the final seeds."""
    out = []
    for m in s.models:
        if m not in REFITS:
            continue
        seeds = s.seeds(REFIT_SEEDS)
        shipped = shipped_final(s, m)
        if shipped is None:
            out.append(Waiting("final", f"{m} refit on train + validation, seeds {list(seeds)}", m, s.epochs(FINAL_EPOCHS[m]), len(seeds)))
            continue
        o = shipped.overrides
        same = {k: v for k, v in o.items() if k not in ("model", "optimizer", "lr", "epochs", "seed")}
        for seed in seeds:
            c = make_cell(s, m, o["optimizer"], o["lr"], shipped.epochs, seed,
                          variant=shipped.tags["variant"].replace("final-", "refit-", 1), **same, refit=True)
            c.tags.update(kind="final", attempt="refit")
            out.append(c)
    return out


def final_cells(s: Settings) -> list:
    return recipe_cells(s) + refit_cells(s)


# -----------------------------------------------------------------------------
# Stage "recipes": accuracy by recipe, not by lucky seed. Each model's candidate
# recipes are compared on validation only; the one with the best mean validation accuracy is
# then refit on all 60,000 training images for its fixed number of epochs (no checkpoint
# picking: the last epoch is the model) with RECIPE_SEEDS, and each seed is scored once on test.
# The model's accuracy is the mean of those seeds, not the best of them.
SCREEN_SEEDS = (0, 1)  # new candidates: two seeds each, test never scored
RECIPE_SEEDS = (0, 1, 2)
RECIPE_MODELS = ("convnet", "dnn", "resnet")  # in this order: the cheapest way to a target first
# New candidates: changes to the model's final recipe (final_choice: TrainConfig fields and
# "epochs"). The final recipe itself ("final") and each of its ATTEMPTS are candidates as well:
# their runs exist (same split, 2-3 seeds each), so they compete with their validation accuracy.
# These were designed after the final stage's test scores were seen (the report says so); the
# choice among them is made on validation alone.
RECIPE_CANDIDATES = recipes.CANDIDATES
# The ensemble, fixed before any of these recipes' test scores: every seed of the ConvNet's and
# ResNet-18's recipes, softmax averaged (the DNN, ~0.3 points behind, is left out).
RECIPE_ENSEMBLE = ("convnet", "resnet")


def candidate_cells(s: Settings, model: str) -> dict[str, list]:
    """{candidate: its cells} for one model: "final" and the ATTEMPTS (the final stage's runs),
    then RECIPE_CANDIDATES' screening runs (SCREEN_SEEDS, score_test off). [Waiting] until the
    final stage has chosen the model's settings."""
    choice = final_choice(s, model)
    if choice is None:
        return {"final": [Waiting("final", f"{model}'s final recipe", model, s.epochs(FINAL_EPOCHS[model]))]}
    finals = [c for c in recipe_cells(s) if isinstance(c, Cell) and c.model == model]
    out = {(a or "final"): [c for c in finals if c.tags["attempt"] == a] for a in ["", *ATTEMPTS.get(model, {})]}
    for name, changes in RECIPE_CANDIDATES.get(model, {}).items():
        assert name not in out, f"RECIPE_CANDIDATES[{model!r}] reuses the name {name!r} of the final recipe or an attempt"
        changes = dict(changes)
        epochs, lr = changes.pop("epochs", FINAL_EPOCHS[model]), changes.pop("lr", choice["lr"])
        out[name] = []
        for seed in s.seeds(SCREEN_SEEDS):
            c = make_cell(s, model, choice["optimizer"], lr, epochs, seed, variant=f"screen-{name}",
                          **{**choice["overrides"], **changes}, score_test=False)
            c.tags.update(kind="screen", candidate=name)
            out[name].append(c)
    return out


def candidate_evidence(s: Settings, model: str, last: bool = False) -> tuple[dict, dict]:
    """({candidate: [val_acc of each finished run]}, {candidate: runs planned}); a diverged run counts 0.
    val_acc at each run's validation-best epoch (what recipe_choice compares), or with last=True at
    its last epoch (what a refit keeps; a check on the choice, never a second chooser)."""
    cands = candidate_cells(s, model)
    val = {}
    for name, cells in cands.items():
        rs = [load_result(s, c.name) for c in cells if isinstance(c, Cell)]
        val[name] = [0.0 if r["status"] == "diverged" else r["history"][-1]["val_acc"] if last else r["best"]["val_acc"]
                     for r in rs if r]
    return val, {name: len(cells) for name, cells in cands.items()}


def recipe_choice(s: Settings, model: str) -> dict | None:
    """The model's recipe: the candidate with the best mean validation accuracy (ties: the earlier
    candidate). Returns {"candidate", "cell": one of its cells (its overrides are the recipe, seed
    aside), "val": {candidate: [val_acc per seed]}, "mean": {candidate: mean}}; None until every
    candidate's runs have their results."""
    cands = candidate_cells(s, model)
    val, planned = candidate_evidence(s, model)
    if any(len(val[k]) < planned[k] or any(isinstance(c, Waiting) for c in cands[k]) for k in cands):
        return None
    mean = {k: statistics.mean(v) for k, v in val.items()}
    order = list(cands)
    best = max(order, key=lambda k: (mean[k], -order.index(k)))
    return {"candidate": best, "cell": cands[best][0], "val": val, "mean": mean}


def recipe_refit_cells(s: Settings, model: str, choice: dict) -> list[Cell]:
    """The chosen recipe on all 60,000 training images (refit: its fixed epochs, the last one
    kept), RECIPE_SEEDS, each scored once on test. A final-stage recipe's refits are named as
    refit_cells names them, so a refit already run for REFITS is the same cell, not a second run."""
    c0 = choice["cell"]
    same = {k: v for k, v in c0.overrides.items() if k not in ("model", "optimizer", "lr", "epochs", "seed", "score_test")}
    variant = c0.tags["variant"]
    variant = variant.replace("final-", "refit-", 1) if variant.startswith("final-") else f"recipe-{choice['candidate']}"
    out = []
    for seed in s.seeds(RECIPE_SEEDS):
        c = make_cell(s, model, c0.overrides["optimizer"], c0.overrides["lr"], c0.epochs, seed,
                      variant=variant, **same, refit=True)
        c.tags.update(kind="recipe", candidate=choice["candidate"])
        out.append(c)
    return out


def recipes_cells(s: Settings) -> list:
    """Stage recipes: per model of RECIPE_MODELS, the new candidates' screening runs, then (once
    every candidate has its validation results) the chosen recipe's refits."""
    out = []
    for m in (m for m in RECIPE_MODELS if m in s.models):
        cands = candidate_cells(s, m)
        out += [c for name, cells in cands.items() if name in RECIPE_CANDIDATES.get(m, {}) for c in cells]
        choice = recipe_choice(s, m)
        if choice is None:
            waits = [c for cells in cands.values() for c in cells if isinstance(c, Waiting)]
            out.append(waits[0] if waits else Waiting("recipes", f"{m}'s chosen recipe refit on 60,000 images, seeds "
                                                      f"{list(s.seeds(RECIPE_SEEDS))}", m, s.epochs(FINAL_EPOCHS[m]),
                                                      len(s.seeds(RECIPE_SEEDS))))
            continue
        out += recipe_refit_cells(s, m, choice)
    return out


def rel(s: Settings, path: Path) -> str:
    return os.path.relpath(path, s.root)



# -----------------------------------------------------------------------------
# The study's design as data: results/study_design.json, written by study.py when a study starts, read
# by the report instead of this code.


def lr_find_settings(s: Settings) -> dict:
    """train.lr_find's LR range {"start", "end", "steps"}: its defaults, SMOKE_LR_FIND_STEPS steps under --smoke."""
    p = inspect.signature(lr_find).parameters
    return {"start": p["start"].default, "end": p["end"].default,
            "steps": SMOKE_LR_FIND_STEPS if s.smoke else p["steps"].default}


def study_design(s: Settings) -> dict:
    """The grids, budgets and seeds this study's cells are made with (its Settings: --smoke budgets and
    seeds where it is a smoke study): the LR grid, the LR range test, the two optimizer comparisons,
    the regularization variants and the final stage's epochs. Models in LR_EPOCHS' order."""
    return {
        "about": "The study's design as data: the LR grid and its budgets, the optimizer comparisons, the regularization "
                 "variants and the LR range test's settings (study_cells.py and train.lr_find when the study ran). "
                 "The report reads it instead of the training code.",
        "lr_grid": {"lrs": list(LRS), "epochs": {m: s.epochs(e) for m, e in LR_EPOCHS.items()}, "seed": LR_SEED,
                    "adam_models": list(ADAM_MODELS)},
        "lr_range_test": {**lr_find_settings(s), "suggestion": "the LR of the steepest descent of the smoothed training "
                                                               "loss, rounded to one significant digit"},
        "optimizers": {"models": list(OPTIM_MODELS), "seeds": list(s.seeds()), "adadelta_lr": ADADELTA_LR},
        "fair_optimizers": {"lrs": list(FAIR_LRS), "optimizers": list(FAIR_OPTIMIZERS), "tune_seed": FAIR_TUNE_SEED,
                            "seeds": list(s.seeds(FAIR_SEEDS)), "tie_standard_errors": FAIR_NOISE_SE},
        "regularization": {"model": REG_MODEL, "epochs": s.epochs(REG_EPOCHS), "seeds": list(s.seeds()),
                           "variants": REG_VARIANTS, "augmentations": list(AUGMENTATIONS), "capacities": list(CAPACITIES)},
        "final_epochs": {m: s.epochs(FINAL_EPOCHS[m]) for m in LR_EPOCHS},
    }
