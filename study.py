"""The study: every experiment of the homework, run stage by stage and resumably, and
report.md written from what they recorded.

    python study.py --plan                 # every stage and cell, its budget, the time it should take here, what is done
    nohup python study.py > runs/study.log 2>&1 &     # run whatever is not done yet (hours on 2 CPU cores)
    python study.py --only lr              # one stage (see --plan for the names)
    python study.py --report-only          # rewrite report.md from results/, figures/, weights/ (seconds)
    python study.py --smoke --root /tmp/s  # the whole pipeline at tiny budgets (CI)

A *cell* is one training run (train.train with one TrainConfig; study_cells.py lists them). Its outcome - status,
validation-best epoch, validation and test metrics, per-epoch history, time, hardware - is
written atomically to results/cells/<name>.json when it ends; its run folder lives under
runs/study/ (not committed), where last.pt lets a stopped cell continue. Running it again skips
every cell with a results file and resumes the one in progress, so `kill -9` loses at most
the epoch in progress. Cells are named by their settings, so two stages that need the same
run share it. Later stages read earlier ones' results (the LR of the optimizer comparison
is the LR table's best on validation, and so on); nothing is chosen on the test set.

The final models, their evaluation and Step 1 run as the user would run them
(`python train.py ...`, `python test_model.py ...`, as subprocesses) with the terminal
output saved to results/logs/, from which screenshots/ are rendered. report.md is written
from committed files only, so `--report-only` on a fresh clone reproduces it.
"""

import argparse
import io
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from data import DataError, describe, load_data, save_sample_grid
from models import STUDY_MODELS, CheckpointError, build_model, complete_config, load_checkpoint, read_checkpoint
from machine import exclusive, hardware, resolve_device, stop_on_signals
from plots import plot_curves
from runs import sha256, ship, write_bytes_atomic, write_json, write_text_atomic
from study_cells import (  # the cells and the choices; re-exported: tests and study_report read study.X
    LRS, SEEDS, LR_EPOCHS, ADAM_MODELS, STEM_EPOCHS, OPTIM_MODELS, ADADELTA_LR, REG_EPOCHS, FINAL_EPOCHS,
    FINAL_SEEDS, ATTEMPTS, SMOKE_EPOCHS, REG_VARIANTS, AUGMENTATIONS, CAPACITIES, PATIENCE, Settings, Cell,
    make_cell, result_path, load_result, train_config, cell_record, Waiting, best_lr, lr_grid_cells, stem_cells,
    lr_find_path, lr_rows, finder_rows, GRID_ONLY_ROWS, FINAL_OPTIMIZERS, round_lr, data_lr, lr_cells, optim_cells, reg_cells, mean_val, best_variant,
    chosen_augmentation, chosen_width, best_optimizer, FAIR_LRS, FAIR_OPTIMIZERS, FAIR_TUNE_SEED, FAIR_SEEDS,
    FAIR_NOISE_SE, fair_tuning_cells, fair_lr, optim_fair_cells, optim_fair_table, final_choice, attempt_changes,
    shipped_final, best_recipe, REFITS, REFIT_SEEDS, recipe_cells, refit_cells, final_cells,
    SCREEN_SEEDS, RECIPE_SEEDS, RECIPE_MODELS, RECIPE_CANDIDATES, RECIPE_ENSEMBLE, candidate_cells, recipe_choice,
    recipe_refit_cells, recipes_cells, candidate_evidence, lr_find_settings, study_design, rel,
)
from train import CONFIG_FIELDS, DIVERGED_EXIT, TrainConfig, config_argv, lr_find, make_optimizer, run_length, train, train_step
from test_model import mean_softmax, predict_proba

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# Workers: `--shard i/n` splits every grid among n workers that share the results folder
# (one machine each, or one GPU each). A worker claims a cell by creating
# results/claims/<cell>.json exclusively before training it, so no cell is ever run twice,
# even by workers whose shards overlap; the claim goes when the result is written.


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_file(path: Path) -> bool:
    """Claim a unit of work by creating `path` exclusively (O_CREAT | O_EXCL): True if this process
    may do it. Workers sharing a folder (one per machine, or per GPU) never do the same work twice;
    a claim whose owner is a dead process on this machine is taken over (its run resumes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": platform.node(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, ValueError):
                return False  # being written right now by its claimant
            if other.get("host") == me["host"] and other.get("pid") != me["pid"] and not pid_alive(other.get("pid", -1)):
                path.unlink(missing_ok=True)  # stale: its worker died
                continue
            return other.get("pid") == me["pid"] and other.get("host") == me["host"]
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True
    return False


def claim(s: Settings, cell: Cell) -> bool:
    return claim_file(s.results / "claims" / f"{cell.name}.json")


def release(s: Settings, cell: Cell) -> None:
    (s.results / "claims" / f"{cell.name}.json").unlink(missing_ok=True)


def mine(s: Settings, items: list) -> list:
    """This worker's share of a stage's cells: every n-th, from the i-th (all of them alone)."""
    if s.shard is None:
        return items
    i, n = s.shard
    return [c for k, c in enumerate(items) if k % n == i]


def run_cell(s: Settings, cell: Cell, data=None) -> dict:
    """Train the cell in this process (continuing its last.pt if a run was stopped) and record its result."""
    cfg = train_config(s, cell)
    print(f"\n=== cell {cell.name}", flush=True)
    r = train(cfg, data or s.mnist(), resume=True)
    record = cell_record(cell, r, hardware(r["config"]["device"], r["config"]["precision"]))
    write_json(result_path(s, cell.name), record)
    return record


# -----------------------------------------------------------------------------
# Subprocess stages: run a repository script as a user would, tee its output to a log.


def command_line(script: str, args: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / script), *args]


def shown(cmd: list[str]) -> str:
    """The command as a user types it: `python train.py --model ...`."""
    return shlex.join(["python", Path(cmd[1]).name, *cmd[2:]])


def run_logged(s: Settings, cmd: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> int:
    """Run cmd in the study root, printing and saving its output (with the command as the first line).
    An exit status outside `ok` stops the study (SystemExit) and leaves the output in a .tmp file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tmp = log.with_name(f".{log.name}.tmp")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if s.data_dir:
        env["DATA_DIR"] = str(s.data_dir)
    print(f"\n$ {shown(cmd)}", flush=True)
    with open(tmp, "w") as f:
        f.write(f"$ {shown(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=s.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                f.write(line)
            rc = proc.wait()
        except BaseException:  # stopped: stop the child too (train.py saves its last.pt on SIGTERM)
            proc.terminate()
            proc.wait(timeout=60)
            raise
    if rc not in ok:
        raise SystemExit(f"study: `{shown(cmd)}` failed (exit {rc}); its output is in {tmp}")
    os.replace(tmp, log)
    return rc


def final_command(s: Settings, cell: Cell) -> list[str]:
    """`python train.py` with a flag for every setting of the cell (train.config_argv): the run trains
    exactly the cell's config. The data folder comes from $DATA_DIR (run_logged sets it)."""
    cfg = TrainConfig(**cell.overrides, out=rel(s, s.runs / "final"), run_name=cell.name)
    return command_line("train.py", config_argv(cfg))


def run_final(s: Settings, cell: Cell) -> dict:
    """One final run through `python train.py` (it ships weights/<model>.pt when it is the
    best on validation so far); the run folder's result becomes the cell's record."""
    run_dir = s.runs / "final" / cell.name
    cmd = final_command(s, cell)
    if (run_dir / "last.pt").exists():  # stopped part-way: continue it, as a user would
        cmd = command_line("train.py", ["--resume", rel(s, run_dir)])
    log = s.results / "logs" / f"train-{cell.name}.txt"
    previous = log.read_text() if log.exists() and cmd[2] == "--resume" else ""
    run_logged(s, cmd, log, ok=(0, DIVERGED_EXIT))  # a diverged run is a result: recorded as such
    if previous:  # keep the first part of the terminal output: the screenshot shows the whole run
        log.write_text(previous + log.read_text())
    r = json.loads((run_dir / "result.json").read_text())
    import csv
    r["history"] = []  # none when the run diverged in its first epoch
    if (run_dir / "history.csv").exists():
        with open(run_dir / "history.csv") as f:
            r["history"] = [{k: (float(v) if k != "step" else int(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    record = cell_record(cell, r, hardware(r["config"]["device"], r["config"]["precision"]))
    record["command"] = shown(final_command(s, cell))
    record["log"] = rel(s, log)
    write_json(result_path(s, cell.name), record)
    return record


# -----------------------------------------------------------------------------
# Estimates for --plan: measured throughput on this machine, else a short measurement.


def measured_seconds_per_epoch(s: Settings, model: str, model_config: dict, elastic: bool = False) -> float | None:
    """From finished cells of the same network on this kind of machine (the fastest of them), with
    elastic distortion where the cell has it: it costs ~1.3-2x an epoch (DNN 6.2 vs 3.1 min a run)."""
    here = hardware()
    per_epoch = {False: [], True: []}
    wanted = json.loads(json.dumps(complete_config(model, model_config)))  # as JSON stores it: the DNN's hidden tuple is a list there
    for p in (s.results / "cells").glob("*.json"):
        r = json.loads(p.read_text())
        if (r["tags"]["model"] == model and r["config"]["model_config"] == wanted
                and r["hardware"] == here and r["status"] != "diverged" and r["epochs"] >= 1):
            per_epoch[bool(r["config"].get("elastic"))].append(r["seconds"] / r["epochs"])
    runs = per_epoch[elastic] or per_epoch[not elastic]
    return min(runs) if runs else None  # the least disturbed run: others may have shared the CPU


def quick_throughput(model: str, model_config: dict, steps: int = 3, batch: int = 128) -> float:
    """Training images per second over a few of train.py's steps on random data (bf16 where the CPU has it, as training runs)."""
    cfg = TrainConfig(model=model, model_config=model_config, device="cpu", optimizer="sgd", lr=0.01).resolved()
    torch.manual_seed(0)
    net = build_model(model, **cfg.model_config)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = make_optimizer(net, cfg)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    for i in range(steps + 1):
        if i == 1:
            t = time.perf_counter()
        train_step(net, opt, x, y, cfg)
    return batch * steps / (time.perf_counter() - t)


def stem_speed(s: Settings, rounds: int = 3) -> dict:
    """Training throughput of ResNet-18 with each stem, measured back to back in this process
    (rounds interleaved, median kept): the cost side of the stem comparison. A cell's wall time
    also counts whatever else the machine was doing; these ratios come from one short run."""
    stems = [c.overrides["model_config"]["stem"] for c in stem_cells(s)]
    rates = {stem: [] for stem in stems}
    for _ in range(rounds):
        for stem in stems:
            rates[stem].append(quick_throughput("resnet", complete_config("resnet", {**s.model_config("resnet"), "stem": stem}),
                                                steps=2 if s.smoke else 5, batch=256))
    out = {"hardware": hardware(), "batch": 256, "rounds": rounds,
           "train_img_s": {stem: round(statistics.median(r), 1) for stem, r in rates.items()}}
    write_json(s.results / "stem_speed.json", out)
    print("stem speed (train img/s): " + ", ".join(f"{k} {v:.0f}" for k, v in out["train_img_s"].items()), flush=True)
    return out


def estimate_seconds(s: Settings, model: str, model_config: dict, epochs: float, cache: dict, elastic: bool = False) -> float:
    key = (model, json.dumps(model_config, sort_keys=True), elastic)
    if key not in cache:
        per_epoch = measured_seconds_per_epoch(s, model, model_config, elastic)
        if per_epoch is None:
            img_s = quick_throughput(model, complete_config(model, model_config))
            per_epoch = 55_000 / img_s * 1.1 + 5_000 / (3 * img_s)  # + ~10% augmentation/bookkeeping, + validation
        cache[key] = per_epoch
    return cache[key] * epochs


def fmt_time(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan(s: Settings, only: list[str] | None = None) -> float:
    cache, total_left = {}, 0.0
    print(f"study plan | root {s.root} | {hardware()} | estimates from measured throughput on this machine")
    for stage in STAGES:
        if only and stage not in only:
            continue
        items = stage_cells(s, stage)
        print(f"\n[{stage}] {STAGES[stage].help}")
        if items is None:
            print(f"    {'done' if stage_done(s, stage) else 'to do'} (minutes at most)")
            continue
        left = 0.0
        for c in items:
            if isinstance(c, Waiting):
                secs = estimate_seconds(s, c.model, s.model_config(c.model), c.epochs, cache) * c.runs
                left += secs
                print(f"    waits for [{c.stage}]: {c.what}, {c.epochs:g} epochs x {c.runs}  ~{fmt_time(secs)}")
                continue
            r = load_result(s, c.name)
            secs = estimate_seconds(s, c.model, c.overrides["model_config"], c.epochs, cache, bool(c.overrides.get("elastic")))
            if r:
                state = f"done: val {100 * r['best'].get('val_acc', 0):.2f}%" if r["status"] != "diverged" else "done: diverged"
                state += f", {fmt_time(r['seconds'])}"
            else:
                partial = run_folder(s, c) / "last.pt"
                state = f"to do, ~{fmt_time(secs)}"
                if partial.exists():
                    step = read_checkpoint(partial).get("step", 0)
                    _, spe, total = run_length(TrainConfig(**{**c.overrides}).resolved(), 55_000)
                    state = f"partial ({step}/{total} steps), ~{fmt_time(secs * (1 - step / max(total, 1)))} left"
                left += secs * (0 if r else 1)
            print(f"    {c.name:<52} {c.epochs:>6g} ep  {state}")
        total_left += left
        print(f"    stage left: ~{fmt_time(left)}")
    print(f"\nleft in all: ~{fmt_time(total_left)} on this machine")
    return total_left


def run_folder(s: Settings, c: Cell) -> Path:
    return s.runs / ("final" if c.tags.get("kind") == "final" else "cells") / c.name


def stage_cells(s: Settings, stage: str) -> list | None:
    """A grid stage's cells (Cell, or Waiting for an earlier stage's results); None for the other stages."""
    return STAGES[stage].cells(s) if STAGES[stage].cells else None


def stage_done(s: Settings, stage: str) -> bool:
    """Whether a stage that is not a grid has written its mark file."""
    return STAGES[stage].done is not None and STAGES[stage].done(s).exists()


# -----------------------------------------------------------------------------
# The stages that are not grids of cells


def stage_data(s: Settings) -> None:
    answers = describe("mnist", s.data_dir, download=False)
    write_json(s.results / "data_step1.json", answers)
    save_sample_grid("mnist", s.data_dir, s.root / "figures" / "mnist_samples.png")
    run_logged(s, command_line("data.py", ["--no-download"]), s.results / "logs" / "data.txt")


def stage_lr_find(s: Settings) -> None:
    out = json.loads(lr_find_path(s).read_text()) if lr_find_path(s).exists() else {}
    for m, opt in finder_rows(s):
        key = f"{m}-{opt}"
        if key in out:
            continue
        cfg = TrainConfig(model=m, model_config=s.model_config(m), optimizer=opt, data_dir=s.data_dir)
        print(f"\n=== lr_find {key}", flush=True)
        r = lr_find(cfg, s.mnist(), **lr_find_settings(s), out_png=str(s.root / "figures" / f"lr_find-{key}.png"))
        out[key] = {"suggested_lr": r["suggested_lr"], "min_loss_lr": r["min_loss_lr"], "steps": len(r["lrs"]),
                    "png": rel(s, Path(r["png"])), "batch_size": cfg.resolved().batch_size}
        print(f"{key}: suggested {r['suggested_lr']:.3g}, loss lowest at {r['min_loss_lr']:.3g}")
        write_json(lr_find_path(s), out)


def write_lr_table(s: Settings) -> None:
    """results/lr_table.csv (every cell of the LR stage) and lr_table.md."""
    import csv
    rows = []
    for c in lr_cells(s):
        r = isinstance(c, Cell) and load_result(s, c.name)
        if not r:
            continue
        b, t = r["best"], r["test"] or {}
        rows.append({"model": c.model, "optimizer": c.tags["optimizer"], "lr": c.tags["lr"], "kind": c.tags.get("kind", "grid"),
                     "epochs": c.epochs, "seed": c.tags["seed"], "status": r["status"], "best_epoch": b.get("epoch", ""),
                     "val_acc": b.get("val_acc", ""), "val_f1": b.get("val_f1", ""), "test_acc": t.get("acc", ""),
                     "test_f1": t.get("f1", ""), "seconds": r["seconds"], "hardware": r["hardware"]})
    s.results.mkdir(parents=True, exist_ok=True)
    tmp = s.results / f".lr_table.csv.{os.getpid()}.tmp"  # per process: shard workers may write it at once
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, s.results / "lr_table.csv")


# A run's machine-resolved settings stay `auto` in a command for others (bf16 is slow without bf16 CPUs).
MACHINE_DEFAULTS = {"device": "auto", "precision": "auto", "channels_last": None}


def record_command(s: Settings, name: str, run_log: Path) -> str:
    """Add to a recipe cell's record (trained in this process) the `python train.py` command that
    trains the same config, and its terminal output as results/logs/train-<name>.txt (from the run
    folder's log.txt), as a final run's record has them. Returns the run's hardware."""
    record = load_result(s, name)
    if record.get("command"):  # a final-stage cell (refit_cells): trained through train.py, already recorded
        return record["hardware"]
    same = {k: v for k, v in record["config"].items() if k in CONFIG_FIELDS}  # not the run's own extras (world_size)
    cfg = TrainConfig(**{**same, "out": rel(s, s.runs / "cells"), "data_dir": None, **MACHINE_DEFAULTS})
    record["command"] = shown(command_line("train.py", config_argv(cfg)))
    if run_log.exists():
        log = s.results / "logs" / f"train-{name}.txt"
        write_text_atomic(log, f"$ {record['command']}\n{run_log.read_text()}")
        record["log"] = rel(s, log)
    write_json(result_path(s, name), record)
    return record["hardware"]


def keep_ensemble_member(s: Settings, target: Path, run_name: str | None) -> None:
    """Before target is replaced: when its run is a member of the ensemble chosen on validation
    (results/ensembles.json), move the file and its card to weights/ensemble/<run>.pt, where
    ensemble_weights looks for members that are not shipped (runs/ is not committed)."""
    path = s.results / "ensembles.json"
    choice = json.loads(path.read_text()) if path.exists() else None
    if not (choice and run_name and target.exists()) or run_name not in choice["candidates"][choice["chosen"]]["members"]:
        return
    dest = s.root / ENSEMBLE_DIR / f"{run_name}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(target, dest)
    card = json.loads(target.with_suffix(".json").read_text())
    write_json(dest.with_suffix(".json"), {**card, "weights": rel(s, dest)}, indent=2, newline=False)
    target.with_suffix(".json").unlink()


def ship_models(s: Settings) -> list[Path]:
    """weights/<model>.pt := seed 0 of the model's chosen recipe (recipe stage) once its refits are done
    (recipe_source), else its final run with the best validation accuracy (shipped_final; ties: the
    lower seed). Files already shipped stay; the files from before the study are replaced, so the
    shipped weights are exactly what `python study.py` reproduces. Returns the files written (they
    have no calibration yet: calibrate_shipped)."""
    written = []
    for m in s.models:
        target = s.root / "weights" / f"{m}.pt"
        card = target.with_suffix(".json")
        current = json.loads(card.read_text())["train_config"].get("run_name") if card.exists() else None
        src = recipe_source(s, m)
        if src:
            if current == src["name"]:
                made_from(card, src)
                continue
            best = s.root / (src["checkpoint"] or "<made elsewhere>")
            if not best.exists() or sha256(best) != src["sha256"]:
                raise SystemExit(f"study: {rel(s, target)} should be {src['name']} (seed 0 of the {m} recipe), but {src['checkpoint']} "
                                 f"is {'not on this machine' if not best.exists() else 'not the file recorded (sha256)'}; run "
                                 "`python study.py --only evaluate` where the recipes stage made it")
            hw = record_command(s, src["name"], best.parent / "log.txt")
            result = best.parent / "result.json"  # train()'s record of the run, with its environment
            env = json.loads(result.read_text()).get("environment", {}) if result.exists() else {"hardware": hw}
            how = f"seed 0 of the recipe {src['candidate']}, refit on 60,000 images, last epoch"
        else:
            c = shipped_final(s, m)
            if c is None or current == c.name:
                continue
            r = load_result(s, c.name)
            best = s.runs / "final" / c.name / "best.pt"
            if not best.exists():
                raise SystemExit(f"study: {rel(s, target)} should be the final run {c.name} (best val {r['best']['val_acc']:.4f}), "
                                 f"but {rel(s, best)} is gone; run it again: rm {rel(s, result_path(s, c.name))} && python study.py --only final")
            env = json.loads((best.parent / "result.json").read_text()).get("environment", {})
            n_runs = sum(1 for x in recipe_cells(s) if isinstance(x, Cell) and x.model == m)
            how = f"val {r['best']['val_acc']:.4f}, the best of {n_runs} final runs"
            src = {"name": c.name}
        keep_ensemble_member(s, target, current)
        ship(best, target, env)
        if src.get("sha256"):
            made_from(card, src)
        written.append(target)
        print(f"study: shipped {rel(s, target)} = {src['name']} ({how})", flush=True)
    return written


def calibrate_shipped(s: Settings, files: list[Path]) -> None:
    """calibrate.py on shipped files without one, on the validation split; a recipe's refit takes its
    temperature and threshold from its held-out twin where that file is here (twin_file), else it is
    calibrated in-sample, said so. Logs: results/logs/calibrate.txt (a twin's: calibrate-<model>.txt)."""
    cheap = ["--limit-val", "200", "--non-digits", "40"] if s.smoke else []
    twins = {w: t for w in files if (t := twin_file(s, w.stem))}
    for w, twin in twins.items():
        args = [rel(s, w), "--twin", rel(s, twin), "--out", "results/calibration", "--figures", "figures", *cheap]
        run_logged(s, command_line("calibrate.py", args), s.results / "logs" / f"calibrate-{w.stem}.txt")
    for w in files:  # a twin's log left from an earlier file would render as this file's screenshot
        if w not in twins:
            (s.results / "logs" / f"calibrate-{w.stem}.txt").unlink(missing_ok=True)
    if rest := [rel(s, w) for w in files if w not in twins]:
        run_logged(s, command_line("calibrate.py", [*rest, "--out", "results/calibration", "--figures", "figures", *cheap]),
                   s.results / "logs" / "calibrate.txt")


def ship_refits(s: Settings) -> list[Path]:
    """weights/<model>-refit.pt := the model's seed-0 refit run; returns the shipped files."""
    shipped = []
    for c in refit_cells(s):
        if not isinstance(c, Cell) or c.tags["seed"] != s.seeds(REFIT_SEEDS)[0] or not load_result(s, c.name):
            continue
        target = s.root / "weights" / f"{c.model}-refit.pt"
        card = target.with_suffix(".json")
        if not (card.exists() and json.loads(card.read_text())["train_config"].get("run_name") == c.name):
            best = s.runs / "final" / c.name / "best.pt"
            ship(best, target, json.loads((best.parent / "result.json").read_text()).get("environment", {}))
            print(f"study: shipped {rel(s, target)} = {c.name} (refit, labelled; not chosen on validation)", flush=True)
        shipped.append(target)
    return shipped


# Ensembles of final runs, one chosen on validation. Beyond the shipped files, the
# chosen set's members are copied to weights/ensemble/. The DNN and ResNet-18 take part with their
# validation-best run only: their other runs would add 7 and 43 MB each for the weakest and the costliest member.
ENSEMBLE_DIR = "weights/ensemble"


def ensemble_candidates(s: Settings) -> dict[str, list[Cell]] | None:
    """{name: the final runs averaged}, in order of size; None until every final run is done."""
    best = {m: shipped_final(s, m) for m in s.models}
    if any(c is None for c in best.values()):
        return None
    runs = lambda m: [c for c in recipe_cells(s) if isinstance(c, Cell) and c.model == m]  # noqa: E731  (attempts; no refits)
    out = {"best_per_model": [best[m] for m in s.models]}  # each model's validation-best final run
    if "convnet" in s.models:
        out["convnets"] = runs("convnet")
        cnns = out["convnets"] + (runs("fastresnet") if "fastresnet" in s.models else []) + [best[m] for m in s.models if m == "resnet"]
        out["cnns"] = cnns
        out["all"] = [best[m] for m in s.models if m == "dnn"] + cnns
    return out


def ensemble_val(s: Settings, data, cells: list[Cell], cache: dict) -> float:
    """Validation accuracy of the mean softmax of the cells' best.pt (validation-best epochs)."""
    probs = []
    for c in cells:
        if c.name not in cache:
            model, ckpt = load_checkpoint(s.runs / "final" / c.name / "best.pt", "cpu")
            norm = ckpt["normalization"]
            if abs(norm["mean"] - data.mean) > 1e-6 or abs(norm["std"] - data.std) > 1e-6:
                raise SystemExit(f"study: {c.name} was trained with another normalization than the study's split")
            cache[c.name] = predict_proba(model, data.x_val)  # (5000, 10)
        probs.append(cache[c.name])
    return float((mean_softmax(probs).argmax(1) == data.y_val.numpy()).mean())


def choose_ensemble(s: Settings) -> dict | None:
    """Every candidate's validation accuracy; the best one (ties: the smaller set) is the chosen one."""
    cands = ensemble_candidates(s)
    if not cands:
        return None
    path = s.results / "ensembles.json"
    prev = json.loads(path.read_text()) if path.exists() else None
    if prev and {n: c["members"] for n, c in prev["candidates"].items()} == {n: [c.name for c in cells] for n, cells in cands.items()}:
        return prev  # the same runs: their validation scores stand (and runs/ may not be on this machine)
    data, cache = load_data("mnist", s.data_dir, download=False), {}
    val = {name: ensemble_val(s, data, cells, cache) for name, cells in cands.items()}
    chosen = max(cands, key=lambda n: (val[n], -len(cands[n])))
    return {"candidates": {n: {"members": [c.name for c in cells], "val_acc": val[n]} for n, cells in cands.items()},
            "chosen": chosen}


def ensemble_weights(s: Settings, members: list[str]) -> list[Path]:
    """The files of an ensemble's members: the shipped file where a member is shipped, else a copy
    of its best.pt under weights/ensemble/ (written here, with its card)."""
    shipped = {json.loads(p.read_text())["train_config"]["run_name"]: p.with_suffix(".pt")
               for p in (s.root / "weights").glob("*.json")}
    paths = []
    for name in members:
        if name in shipped:
            paths.append(shipped[name])
            continue
        target = s.root / ENSEMBLE_DIR / f"{name}.pt"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            best = s.runs / "final" / name / "best.pt"
            ship(best, target, json.loads((best.parent / "result.json").read_text()).get("environment", {}))
        paths.append(target)
    return paths


def stage_evaluate(s: Settings) -> None:
    """Ship and calibrate, then test_model.py per shipped model and for the ensembles, feature maps,
    training curves; results/evaluation.json keeps every earlier evaluation's commands (the test count)."""
    ship_models(s)
    weights = [s.root / "weights" / f"{m}.pt" for m in s.models]
    missing = [rel(s, w) for w in weights if not w.exists()]
    if missing:
        raise SystemExit(f"study: evaluate needs {', '.join(missing)}; run the final stage first (python study.py --only final)")
    calibrate_shipped(s, [w for w in weights if "calibration" not in (c := read_checkpoint(w))  # new files, and train.py's
                          or c["calibration"].get("in_sample") and "twin" not in c["calibration"] and twin_file(s, w.stem)])
    write_final_recipes(s, score=False)  # its "shipped" record: each file as shipped now (sha256 after calibration)
    commands = []
    for m, w in zip(s.models, weights):
        cmd = command_line("test_model.py", ["--weights", rel(s, w), "--out", "figures", "--tta"])
        run_logged(s, cmd, s.results / "logs" / f"test-{m}.txt")
        commands.append({"command": shown(cmd), "models_scored": 1, "log": f"results/logs/test-{m}.txt"})
    for w in ship_refits(s):  # labelled refits, scored apart from the shipped models
        cmd = command_line("test_model.py", ["--weights", rel(s, w), "--out", "figures", "--tta"])
        run_logged(s, cmd, s.results / "logs" / f"test-{w.stem}.txt")
        commands.append({"command": shown(cmd), "models_scored": 1, "log": f"results/logs/test-{w.stem}.txt"})
    cmd = command_line("test_model.py", ["--weights", *[rel(s, w) for w in weights], "--out", "figures", "--tta"])
    run_logged(s, cmd, s.results / "logs" / "test-ensemble.txt")
    commands.append({"command": shown(cmd), "models_scored": len(weights), "log": "results/logs/test-ensemble.txt"})
    choice = choose_ensemble(s)
    members = ensemble_weights(s, choice["candidates"][choice["chosen"]]["members"]) if choice else []
    for old in (s.root / ENSEMBLE_DIR).glob("*.pt"):  # members of a set no longer chosen
        if old not in members:
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
    if choice and "test" not in choice:  # the validation-chosen ensemble, scored once on test
        cmd = command_line("test_model.py", ["--weights", *[rel(s, w) for w in members], "--tta", "--json"])
        log = s.results / "logs" / f"test-ensemble-{choice['chosen']}.txt"
        run_logged(s, cmd, log)
        text = log.read_text()
        scored = json.loads(text[text.index("\n["):])[-1]  # test_model's JSON list; the last entry is the ensemble
        choice["test"] = {"accuracy": scored["accuracy"], "f1_macro": scored["f1_macro"], "tta_accuracy": scored["tta"]["accuracy"]}
        choice["command"] = shown(cmd)
        commands.append({"command": shown(cmd), "models_scored": len(members), "log": rel(s, log)})
    if choice:
        write_json(s.results / "ensembles.json", choice)
    cnns = [rel(s, w) for m, w in zip(s.models, weights) if m != "dnn"]
    if cnns:
        cmd = command_line("feature_visualization.py", ["--weights", *cnns, "--digit", "7", "--out", "figures"])
        run_logged(s, cmd, s.results / "logs" / "feature_visualization.txt")
    if "dnn" in s.models:  # the DNN has no conv: feature_visualization draws its first layer's weights
        cmd = command_line("feature_visualization.py", ["--weights", rel(s, s.root / "weights" / "dnn.pt"), "--out", "figures"])
        run_logged(s, cmd, s.results / "logs" / "feature_visualization-dnn.txt")
    for m in s.models:  # the shipped run's training curves, from the card beside its weights
        card = json.loads((s.root / "weights" / f"{m}.json").read_text())
        history = [{k: float(v) for k, v in h.items()} for h in card["history"]]
        plot_curves(history, s.root / "figures" / f"curves_{m}.png", f"{m}: {card['train_config']['run_name']}")
    path = s.results / "evaluation.json"
    prev = json.loads(path.read_text()) if path.exists() else {}
    earlier = prev.get("earlier", []) + ([{k: prev.get(k) for k in ("commands", "hardware")}] if prev.get("commands") else [])
    write_json(path, {"commands": commands, "hardware": hardware(), "earlier": earlier})


# -----------------------------------------------------------------------------
# The recipe stage's record, results/final_recipes.json: each model's candidate recipes on validation,
# the chosen recipe's refits on test (per seed, with its file's sha256), the fixed ensemble, and
# where each weights/<model>.pt comes from against the rule "seed 0 of the recipe". Written after
# each cell of the recipe stage and after shipping (stage evaluate).

# {(model, recipe): why} not shipped: decided after e60's refits were scored and its seed 0 failed the
# handed 8x8 thumbnails of tests/test_user_images.py (benchmarks/results/user_images_recipes.md).
RECIPE_NOT_SHIPPED = {("convnet", "e60"): "fails the 8×8-thumbnail bar of `tests/test_user_images.py` (the handed user "
                                          "images), which the final-run file passes"}


def recipes_ensemble_test(s: Settings, members: list[dict], probs: list, before: dict | None) -> dict:
    """{"members": [{"checkpoint", "sha256"}], "test_acc", "scored_from"}: the accuracy of the members'
    mean softmax (probs: each member's member_probs, (10,000, 10)) on the test set, scored once; a
    record `before` with the same members (checkpoint, sha256) and a score is returned instead."""
    if before and before.get("members") == members and before.get("test_acc") is not None:
        return before
    y = s.mnist().y_test.numpy()
    return {"members": members, "test_acc": float((mean_softmax(probs).argmax(1) == y).mean()),
            "scored_from": "results/member_probs"}


def member_probs(s: Settings, member: dict) -> tuple[np.ndarray | None, dict | None]:
    """(test-set softmax (10,000, 10) fp32 of test_model.predict_proba, its pass record {"cell",
    "sha256", "source", "recorded_at"}) of an ensemble member {"cell", "checkpoint", "sha256"}: read from
    results/member_probs/<cell>.npz when recorded for that sha256; else computed and recorded from
    the member's file if it is here, or from a shipped file under weights/ whose card's made_from
    names that sha256 (calibrate.py adds fields to the file, never changes its weights); else
    (None, None). Recorded so that the ensemble can be scored after runs/ is gone (it is not
    committed). Each record is one pass over the test set, logged in passes.jsonl beside it
    (member_passes); no accuracy is computed here."""
    sha = member.get("sha256")
    if not sha:
        return None, None
    path = s.results / "member_probs" / f"{member['cell']}.npz"
    if path.exists():
        with np.load(path) as z:
            if str(z["sha256"]) == sha:  # the pass that made it (recorded_at: none in the first record)
                when = {"recorded_at": str(z["recorded_at"])} if "recorded_at" in z.files else {}
                return z["probs"], {"cell": member["cell"], "sha256": sha, "source": str(z["source"]), **when}
    src = s.root / member["checkpoint"] if member.get("checkpoint") else None
    if not (src and src.exists() and sha256(src) == sha):
        cards = sorted((s.root / "weights").rglob("*.json"))
        src = next((c.with_suffix(".pt") for c in cards if c.with_suffix(".pt").exists()
                    and (json.loads(c.read_text()).get("made_from") or {}).get("sha256") == sha), None)
    if src is None:
        return None, None
    model, _ = load_checkpoint(src, resolve_device("auto"))
    probs = predict_proba(model, s.mnist().x_test)
    done = {"cell": member["cell"], "sha256": sha, "source": rel(s, src),
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
    buf = io.BytesIO()
    np.savez_compressed(buf, probs=probs, **{k: v for k, v in done.items() if k != "cell"})
    write_bytes_atomic(path, buf.getvalue())
    with open(path.parent / "passes.jsonl", "a") as f:  # append-only: a pass stays counted whoever rewrites the record
        f.write(json.dumps(done) + "\n")
    return probs, done


def member_passes(s: Settings) -> list[dict]:
    """Every test-set pass member_probs made ({"cell", "sha256", "source", "recorded_at"}), in order:
    results/member_probs/passes.jsonl, appended to by each pass and never rewritten."""
    log = s.results / "member_probs" / "passes.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def run_file(s: Settings, name: str) -> Path | None:
    """A cell's checkpoint here (runs/study/cells or runs/study/final), None if not (runs/ is not committed)."""
    return next((p for p in (s.runs / "cells" / name / "best.pt", s.runs / "final" / name / "best.pt") if p.exists()), None)


def file_record(s: Settings, name: str, made: dict) -> dict:
    """{"checkpoint", "sha256"} of cell `name`'s file: measured here when the file is on this
    machine, else as recorded when it was made (`made`: {cell: earlier record}), else None."""
    ckpt = run_file(s, name)
    if ckpt:
        return {"checkpoint": rel(s, ckpt), "sha256": sha256(ckpt)}
    return {"checkpoint": made.get(name, {}).get("checkpoint"), "sha256": made.get(name, {}).get("sha256")}


def seed_file(seed: dict) -> dict:
    """A recipe seed's file ({"cell", "checkpoint", "sha256", ...}): its last later training's, else its own."""
    return (seed.get("later") or [seed])[-1]


def recipe_entry(s: Settings, m: str, made: dict) -> dict:
    """final_recipes.json's entry for model m: its candidates' validation evidence, test scores seen
    and cost, the chosen recipe (full TrainConfig, seed aside), each finished seed's test accuracy
    and file (file_record), mean/std once every seed is done. A seed keeps its first test score (no
    second draw for the mean); "later": the later trainings of that seed with the same settings, in
    order ({"cell", "test_acc", "seconds", "hardware", "checkpoint", "sha256"}), carried over from the
    seed's earlier record, the last one's file being the seed's (seed_file). made: {cell: its earlier
    record} (files not on this machine, and the later trainings)."""
    choice = recipe_choice(s, m)
    (val, planned), (val_last, _) = candidate_evidence(s, m), candidate_evidence(s, m, last=True)
    runs = {k: [r for c in cells if isinstance(c, Cell) and (r := load_result(s, c.name))]
            for k, cells in candidate_cells(s, m).items()}
    entry = {"candidate": choice and choice["candidate"], "val": val, "planned": planned,
             "val_mean": {k: statistics.mean(v) for k, v in val.items() if v},
             # at each run's last epoch, which a refit keeps: a check that the best epoch did not flatter one candidate
             "val_last_mean": {k: statistics.mean(v) for k, v in val_last.items() if v},
             # the test scores of the candidates' own runs (final stage, 55,000 images), seen before this choice;
             # screening runs have none
             "test_seen": {k: [r["test"]["acc"] for r in rs if r.get("test")] for k, rs in runs.items()},
             "minutes": {k: statistics.mean(r["seconds"] for r in rs) / 60 for k, rs in runs.items() if rs},
             "hardware": {k: sorted({r["hardware"] for r in rs}) for k, rs in runs.items()}, "seeds": []}
    refits = recipe_refit_cells(s, m, choice) if choice else []
    if refits:  # the recipe as planned; the first finished refit's full config replaces it
        entry["recipe"] = {k: v for k, v in asdict(train_config(s, refits[0])).items() if k not in ("seed", "run_name", "out", "data_dir")}
    for c in refits:
        r = load_result(s, c.name)
        if r is None or not r.get("test"):
            continue
        entry["recipe"] = {k: v for k, v in r["config"].items() if k not in ("seed", "run_name", "out", "data_dir")}
        seed = {"seed": c.tags["seed"], "cell": c.name, "test_acc": r["test"]["acc"], "seconds": r["seconds"],
                "hardware": r["hardware"], **file_record(s, c.name, made)}
        if later := made.get(c.name, {}).get("later"):
            seed["later"] = [{**x, **file_record(s, x["cell"], made)} for x in later]
        entry["seeds"].append(seed)
    accs = [x["test_acc"] for x in entry["seeds"]]
    entry["done"] = len(accs) == len(s.seeds(RECIPE_SEEDS))
    if entry["done"]:
        entry.update(test_mean=statistics.mean(accs), test_std=statistics.stdev(accs) if len(accs) > 1 else 0.0)
    return entry


def earlier_recipes(prev: dict, candidate: str | None) -> list[dict]:
    """Earlier chosen recipes with refits (prev: the model's entry as recorded before), kept when
    validation later prefers another: their test scores were seen. The current one left out."""
    out = {x["candidate"]: x for x in prev.get("earlier", [])}
    if prev.get("candidate") and prev.get("seeds"):
        out[prev["candidate"]] = {k: prev.get(k) for k in ("candidate", "recipe", "done", "test_mean", "test_std", "seeds")}
    return [x for k, x in out.items() if k != candidate]


def recipe_source(s: Settings, m: str) -> dict | None:
    """The recipe stage's rule ("the shipped weights/<model>.pt is seed 0 of that recipe, decided before any
    test score is seen"): weights/<m>.pt is seed 0 of the model's chosen recipe once every seed is done,
    unless RECIPE_NOT_SHIPPED names the recipe. Returns {"name", "checkpoint", "sha256", "candidate"}
    from results/final_recipes.json (the seed's file: seed_file), else None."""
    path = s.results / "final_recipes.json"
    d = json.loads(path.read_text()) if path.exists() else {}
    e = d.get("models", {}).get(m)
    if not e or not e.get("done") or (m, e["candidate"]) in RECIPE_NOT_SHIPPED:
        return None
    seed = next(x for x in e["seeds"] if x["seed"] == d["seeds"][0])
    src = seed_file(seed)
    return {"name": src["cell"], "checkpoint": src["checkpoint"], "sha256": src["sha256"], "candidate": e["candidate"]}


def made_from(card: Path, src: dict) -> None:
    """Record in a shipped recipe file's card the seed checkpoint it was copied from and its sha256
    (results/final_recipes.json's): calibrate.py changes the shipped bytes, not the weights."""
    meta = json.loads(card.read_text())
    if meta.get("made_from") != (want := {"cell": src["name"], "checkpoint": src["checkpoint"], "sha256": src["sha256"]}):
        write_json(card, {**meta, "made_from": want}, indent=2, newline=False)


def twin_file(s: Settings, m: str) -> Path | None:
    """The held-out twin of weights/<m>.pt when that file is seed 0 of m's recipe (recipe_source): the
    chosen candidate's own seed-0 run, with the same settings but the validation split held out
    (calibrate.py --twin); None when there is none, or its file is not on this machine or not
    finished (no result.json beside it: a run in progress has a best.pt already)."""
    src = recipe_source(s, m) if m in RECIPE_MODELS else None
    cells = candidate_cells(s, m).get(src["candidate"], []) if src else []
    seed0 = [c for c in cells if isinstance(c, Cell) and c.tags["seed"] == s.seeds(RECIPE_SEEDS)[0]]
    best = run_file(s, seed0[0].name) if seed0 else None
    return best if best and (best.parent / "result.json").exists() else None


def shipped_record(s: Settings, m: str, entry: dict) -> dict | None:
    """Where weights/<m>.pt comes from against the recipe stage's rule (seed 0 of the recipe): {"file",
    "sha256" (the shipped bytes: calibration included), "run", "made_from" (the card's: the seed
    checkpoint and its sha256), "seed_0", and where it is not seed 0 of a finished recipe, "why_not"
    and "decided_after_test"}; None when nothing is shipped."""
    path = s.root / "weights" / f"{m}.pt"
    card = s.root / "weights" / f"{m}.json"
    if not (path.exists() and card.exists()):
        return None
    meta = json.loads(card.read_text())
    seed0 = next((seed_file(x) for x in entry["seeds"] if x["seed"] == s.seeds(RECIPE_SEEDS)[0]), None)
    made = meta.get("made_from")
    out = {"file": rel(s, path), "sha256": sha256(path), "run": meta["train_config"].get("run_name"),
           "made_from": made, "seed_0": bool(seed0 and made and made["sha256"] == seed0["sha256"])}
    if entry.get("done") and not out["seed_0"]:
        out["why_not"] = RECIPE_NOT_SHIPPED.get((m, entry["candidate"]), "not shipped yet (python study.py --only evaluate)")
        out["decided_after_test"] = (m, entry["candidate"]) in RECIPE_NOT_SHIPPED  # its refits' scores were seen
    return out


def write_final_recipes(s: Settings, score: bool = True) -> Path:
    """results/final_recipes.json: per model of RECIPE_MODELS its recipe_entry and earlier_recipes;
    the RECIPE_ENSEMBLE's members (each seed's file: seed_file) and test accuracy, scored once, from
    the members' recorded softmax (member_probs), when every member has one; a member's softmax is
    recorded once its model's seeds are done, when its file is here. The record of an ensemble scored
    before is kept while its members are the same (checkpoint, sha256). Every ensemble ever scored
    stays in "ensembles_scored", every recorded softmax in "member_passes" (member_passes' log; the
    count of test-set use reads both); "ensemble_waits_for": the
    members still without one; per model, "shipped": shipped_record. score=False (after shipping):
    never scores the ensemble (members' softmax is still recorded, and counted); a record whose
    members changed is dropped. Accuracies are fractions."""
    path = s.results / "final_recipes.json"
    before = json.loads(path.read_text()) if path.exists() else {}
    chosen = [r for e in before.get("models", {}).values() for r in (e, *e.get("earlier", []))]  # current and earlier
    seeds = [x for r in chosen for x in r.get("seeds", [])]
    made = {y["cell"]: y for x in seeds for y in (x, *x.get("later", []))}  # cell -> its record
    out = {"seeds": list(s.seeds(RECIPE_SEEDS)), "screen_seeds": list(s.seeds(SCREEN_SEEDS)), "models": {},
           "rule": "the candidate with the best mean validation accuracy is refit on all 60,000 training images "
                   "for its fixed epochs (the last epoch kept); each seed scored once on test", "ensemble": None}
    members = []  # the seed files of RECIPE_ENSEMBLE's recipes: {"cell", "checkpoint", "sha256"}
    for m in (m for m in RECIPE_MODELS if m in s.models):
        if final_choice(s, m) is None:
            continue
        out["models"][m] = entry = recipe_entry(s, m, made)
        entry["earlier"] = earlier_recipes(before.get("models", {}).get(m, {}), entry["candidate"])
        entry["shipped"] = shipped_record(s, m, entry)
        if m in RECIPE_ENSEMBLE and entry["done"]:
            members += [{k: seed_file(x)[k] for k in ("cell", "checkpoint", "sha256")} for x in entry["seeds"]]
    # each member's softmax recorded as soon as its model's seeds are done and its file is here: every
    # record is one test-set pass, logged by member_probs
    got = [member_probs(s, x) for x in members]
    passes = member_passes(s)
    scored = list(before.get("ensembles_scored", []))
    if all(out["models"].get(m, {}).get("done") for m in RECIPE_ENSEMBLE):
        old, record = before.get("ensemble") or {}, [{k: x[k] for k in ("checkpoint", "sha256")} for x in members]
        probs = [p for p, _ in got]
        if all(p is not None for p in probs) and (score or old.get("members") == record):
            seen = next((e for e in reversed(scored) if e["members"] == record), old)  # never a second scoring
            out["ensemble"] = {"recipes": list(RECIPE_ENSEMBLE), **recipes_ensemble_test(s, record, probs, seen)}
        elif old.get("members") == record:
            out["ensemble"] = old  # scored on the machine that had the files
        if not out["ensemble"] and (waits := [x["cell"] for x, p in zip(members, probs) if p is None]):
            out["ensemble_waits_for"] = waits  # the files whose softmax is still to be recorded
    # Every ensemble ever scored, kept when the recipes change (a new candidate wins, a seed trained again):
    # a test evaluation once made is never dropped from the count.
    if out["ensemble"] and out["ensemble"] not in scored:
        scored.append(out["ensemble"])
    out["ensembles_scored"], out["member_passes"] = scored, passes
    if scored or passes:  # read by the report's count of test-set use (report_facts.test_use)
        files = [e for e in scored if "scored_from" not in e]  # scored by passing each member's file (before member_probs)
        out["commands"] = [{"command": "python study.py, stages recipes and evaluate (members' softmax, the ensemble's mean)",
                            "models_scored": sum(len(e["members"]) for e in files) + len(passes)}]
    write_json(path, out)
    return path


# -----------------------------------------------------------------------------
# Running the plan


POLL_SECONDS = 10


def ready_cells(s: Settings, stage: str) -> list:
    """The stage's cells once its inputs exist. Alone, missing inputs are an error; as a shard
    worker, another worker is producing them: wait."""
    said = False
    while True:
        items = stage_cells(s, stage)
        waiting = [c for c in items if isinstance(c, Waiting)]
        if not waiting:
            return items
        if s.shard is None:
            raise SystemExit(f"study: stage {stage} needs stage {waiting[0].stage}'s results first: "
                             f"python study.py --only {waiting[0].stage}")
        if not said:
            print(f"study: stage {stage} waits for stage {waiting[0].stage}'s results from the other workers", flush=True)
            said = True
        time.sleep(POLL_SECONDS)


def wait_for(s: Settings, cells: list[Cell]) -> None:
    """Shard workers: block until every cell has its result (some were trained elsewhere)."""
    said = False
    while any(load_result(s, c.name) is None for c in cells):
        if not said:
            print(f"study: waiting for {sum(load_result(s, c.name) is None for c in cells)} cells of the other workers", flush=True)
            said = True
        time.sleep(POLL_SECONDS)


def report_writer() -> dict:
    """study_report.py's functions, run from its file: the report writer is the top floor, a leaf
    that no module imports (it imports this one)."""
    import runpy
    return runpy.run_path(str(ROOT / "study_report.py"), run_name="study_report")


def run_grid(s: Settings, stage: str) -> None:
    """Every cell of a grid stage that this worker may take: the cells that can run now, then, as a
    shard worker, those that wait for other workers' results (alone, those are an error)."""
    said, passes_without_progress = False, 0
    while True:
        items = stage_cells(s, stage)
        waiting = [c for c in items if isinstance(c, Waiting)]
        elsewhere = [w for w in waiting if w.stage != stage]  # a stage's own later cells wait for its earlier ones
        if elsewhere and s.shard is None:
            raise SystemExit(f"study: stage {stage} needs stage {elsewhere[0].stage}'s results first: "
                             f"python study.py --only {elsewhere[0].stage}")
        progressed = False
        for c in mine(s, [c for c in items if isinstance(c, Cell)]):
            if load_result(s, c.name) or not claim(s, c):
                continue
            progressed = True
            try:
                if load_result(s, c.name):  # finished by another worker between the two looks
                    continue
                STAGES[stage].train(s, c)
            finally:
                release(s, c)
            if STAGES[stage].each:  # e.g. the LR table fills in as cells finish
                STAGES[stage].each(s)
        if not waiting:
            return
        if s.shard is None and not elsewhere:
            passes_without_progress = 0 if progressed else passes_without_progress + 1
            if passes_without_progress > 1:
                raise SystemExit(f"study: stage {stage} cannot finish: {waiting[0].what} waits for cells that "
                                 f"another worker has claimed (results/claims/); run with --shard, or remove stale claims")
            continue  # this pass finished what the waiting cells need: resolve them now
        if not said:
            print(f"study: stage {stage} waits for stage {waiting[0].stage}'s results from the other workers", flush=True)
            said = True
        time.sleep(POLL_SECONDS)


def run(s: Settings, only: list[str] | None = None) -> None:
    for name, stage in STAGES.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        print(f"\n##### stage {name}: {stage.help}", flush=True)
        if s.shard and s.shard[0] != 0 and stage.worker0:
            print(f"study: stage {name} is worker 0's", flush=True)
            continue
        if s.shard and name == "evaluate":
            wait_for(s, [c for c in ready_cells(s, "final")])
        if stage.cells:
            run_grid(s, name)
        else:
            stage.run(s)
        if stage.after:
            stage.after(s)
        print(f"##### stage {name} done in {time.perf_counter() - t0:.0f} s", flush=True)


def stem_speed_once(s: Settings) -> None:
    if stem_cells(s) and not (s.results / "stem_speed.json").exists():
        stem_speed(s)


def stage_report(s: Settings) -> None:
    report = report_writer()
    report["draw_figures"](s.root)
    print(f"wrote {report['write_report'](s.root)}")
    report["update_readme"](s.root)


@dataclass
class Stage:
    """One stage of the study: a grid of cells (cells, trained one by one by `train`) or one step (`run`)."""
    help: str
    cells: object = None  # (Settings) -> [Cell | Waiting]
    train: object = None  # (Settings, Cell) -> record: in this process, or as `python train.py` (final)
    each: object = None  # (Settings) -> None, after each cell
    after: object = None  # (Settings) -> None, after the stage
    run: object = None  # (Settings) -> None: a stage that is not a grid
    done: object = None  # (Settings) -> the file that marks it done
    worker0: bool = False  # shard workers other than worker 0 skip it


STAGES = {
    "data": Stage("Step 1: data.py's answers, the sample grid, its terminal output", run=lambda s: stage_data(s),
                  done=lambda s: s.results / "data_step1.json", worker0=True),
    "stem": Stage(f"ResNet-18 stems 3x3/1, 3x3/2, 7x7/2+pool at {STEM_EPOCHS} epoch", cells=stem_cells, train=run_cell,
                  after=stem_speed_once),
    "lr_find": Stage("LR range test per model and optimizer (the table's 'other LR')", run=stage_lr_find, done=lr_find_path,
                     worker0=True),
    "lr": Stage("Step 5 LR table: models x LR {0.1..0.0001}, SGD and Adam, + the finder's LR", cells=lr_cells, train=run_cell,
                each=lambda s: write_lr_table(s), after=lambda s: write_lr_table(s)),
    "optim": Stage("Step 4: SGD vs Adam vs AdamW vs Adadelta, ConvNet and DNN, 3 seeds", cells=optim_cells, train=run_cell),
    "optim_fair": Stage("Step 4, fair: each optimizer's own LR from {1.0, 0.1..0.0001} at seed 0, then seeds 1-3 (report only)",
                        cells=optim_fair_cells, train=run_cell),
    "regularization": Stage(f"over/underfitting: ConvNet without each regularizer, 3 seeds, {REG_EPOCHS} epochs",
                            cells=reg_cells, train=run_cell),
    "final": Stage("each model with the validation-chosen settings, longer; ships weights/", cells=final_cells,
                   train=lambda s, c: run_final(s, c)),
    "recipes": Stage("candidate recipes compared on validation, the chosen one refit on 60,000 images, 3 seeds",
                     cells=recipes_cells, train=run_cell, each=lambda s: write_final_recipes(s),
                     after=lambda s: write_final_recipes(s)),
    "evaluate": Stage("Step 6: test_model.py per model and the ensemble, feature maps, training curves",
                      run=lambda s: stage_evaluate(s), done=lambda s: s.results / "evaluation.json", worker0=True),
    "screenshots": Stage("PNG renderings of the recorded terminal output", run=lambda s: report_writer()["render_screenshots"](s.root),
                         done=lambda s: s.root / "screenshots" / "index.json", worker0=True),
    "report": Stage("report.md from the results", run=stage_report, done=lambda s: s.root / "report.md", worker0=True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run the study (every experiment of the report), resumably, and write report.md.")
    p.add_argument("--plan", action="store_true", help="print every stage and cell, its budget, estimated time here and what is done")
    p.add_argument("--only", nargs="+", choices=list(STAGES), help="run only these stages")
    p.add_argument("--models", nargs="+", choices=STUDY_MODELS, default=list(STUDY_MODELS), help="study only these models")
    p.add_argument("--report-only", action="store_true", help="only rewrite report.md from the committed results")
    p.add_argument("--smoke", action="store_true", help=f"tiny budgets ({SMOKE_EPOCHS} epochs a cell, one seed, ResNet width 8): the whole pipeline in minutes")
    p.add_argument("--root", help="where results/, figures/, weights/, screenshots/, runs/ and report.md go "
                                  "(default: this repository; --smoke: a new temporary folder)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw/ (default: $DATA_DIR, else ./data)")
    p.add_argument("--shard", metavar="I/N", help="be worker I of N sharing --root: run every N-th cell from the I-th "
                                                  "(claims keep any cell from running twice; worker 0 also runs the non-grid stages)")
    a = p.parse_args(argv)
    shard = None
    if a.shard:
        try:
            i, n = (int(x) for x in a.shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            p.error(f"--shard takes I/N with 0 <= I < N, e.g. 0/2; got {a.shard!r}")
        shard = (i, n)
    root = Path(a.root).resolve() if a.root else (Path(tempfile.mkdtemp(prefix="study-smoke-")) if a.smoke else ROOT)
    data_dir = a.data_dir or os.environ.get("DATA_DIR")
    data_dir = str(Path(data_dir).resolve()) if data_dir else None  # subprocesses run in the root
    s = Settings(root=root, data_dir=data_dir, smoke=a.smoke, models=tuple(a.models), shard=shard)
    try:
        if a.report_only:
            report = report_writer()
            print(f"wrote {report['write_report'](s.root)}")
            if report["update_readme"](s.root):
                print(f"updated {s.root / 'README.md'} (how to run each model)")
            return 0
        if a.plan:
            plan(s, a.only)
            return 0
        lock = exclusive("study.py")  # noqa: F841  (held until the process ends)
        stop_on_signals()
        print(f"study: root {s.root}, {hardware()}, {'smoke budgets' if s.smoke else 'full budgets'}"
              + (f", worker {shard[0]} of {shard[1]}" if shard else ""), flush=True)
        # What the report needs to name the cells as this run did.
        write_json(s.results / "study.json", {"smoke": s.smoke, "models": list(s.models)})
        write_json(s.results / "study_design.json", study_design(s))  # the grids and budgets, for the report
        run(s, a.only)
    except (DataError, CheckpointError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("\nstudy: interrupted; run the same command again to continue where it stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
