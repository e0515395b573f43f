"""The run folder: what one training run writes, and the one place that writes weights/.

    log = RunLog(run_dir / "log.txt"); log("a line")        # printed and appended
    write_history(run_dir / "history.csv", rows)             # one row per epoch (HISTORY_FIELDS)
    saved = open_run_dir(run_dir, record, dist, resume, d)   # a stopped run of the same settings continues
    promote(run_dir / "best.pt", cfg, genuine)               # -> weights/<model>.pt + its card, if better on val

Also the atomic writes every script uses (a reader never sees half a file). Imports models.py and
machine.py of ours.
"""

import csv
import json
import math
import os
from pathlib import Path

from machine import Dist, environment
from models import CheckpointError, read_checkpoint, save_atomic

# -----------------------------------------------------------------------------
# Files


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to a temp file beside `path` (named per process), then rename: readers and
    other workers never see half a file, and a crash leaves the old one (an exception: no temp file
    either; a killed process may leave its .<name>.<pid>.tmp)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """`text` (UTF-8) written atomically (see write_bytes_atomic)."""
    return write_bytes_atomic(path, text.encode())


def write_json(path: Path, obj, indent: int = 1, newline: bool = True) -> Path:
    """obj as JSON, atomically (see write_text_atomic)."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + ("\n" if newline else ""))


# -----------------------------------------------------------------------------
# The run folder: log.txt, history.csv, checkpoints; weights/


class RunLog:
    """Prints a line and appends it to log.txt."""

    def __init__(self, path: Path | None, quiet: bool = False):
        self.path, self.quiet = path, quiet

    def __call__(self, line: str = "") -> None:
        if not self.quiet:
            print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")


# train_loss is the optimised loss (label-smoothed); train_ce the plain cross-entropy, the loss val_loss measures.
HISTORY_FIELDS = ["epoch", "step", "lr", "train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1", "seconds", "train_ce"]


def write_history(path: Path, history: list[dict]) -> None:
    """history.csv: one row per epoch, the columns of HISTORY_FIELDS (losses in nats, accuracies in [0, 1])."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        w.writerows({k: row.get(k, math.nan) for k in HISTORY_FIELDS} for row in history)  # nan: not recorded then
    os.replace(tmp, path)


def same_settings(stored: dict, record: dict, defaults: dict) -> bool:
    """Whether a last.pt's train_config describes the run `record` describes. A moved run folder is
    still the same run; a setting added after last.pt was written counts as its value in `defaults` there."""
    where = {"out", "run_name", "weights_dir"}
    return all(stored.get(k, defaults.get(k)) == record.get(k, defaults.get(k)) for k in (set(stored) | set(record)) - where)


def open_run_dir(run_dir: Path, record: dict, dist: Dist, resume: bool, defaults: dict) -> dict | None:
    """Make the run folder. Returns its last.pt when `resume` and it holds a run of these same
    settings; otherwise clears the folder's files of an earlier run and returns None. A finished run
    of other settings is never cleared unless `resume` is off (--restart): SystemExit, one line."""
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    saved = read_checkpoint(run_dir / "last.pt") if resume and (run_dir / "last.pt").exists() else None
    if saved is not None and not same_settings(saved["train_config"], record, defaults):
        if (run_dir / "result.json").exists():  # a finished run is never cleared by another one
            raise SystemExit(f"error: {run_dir} holds a finished run with other settings; give this one --run-name NAME "
                             f"or --out DIR, or pass --restart to replace it")
        if dist.main:
            print(f"{run_dir}/last.pt was made with other settings: starting over")
        saved = None
    dist.barrier()  # every rank has read last.pt before rank 0 may delete it
    if saved is None and dist.main:
        for stale in ("last.pt", "log.txt", "history.csv", "best.pt", "curves.png", "result.json"):
            (run_dir / stale).unlink(missing_ok=True)
    return saved


def progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def promote(best_path: Path, cfg, genuine: bool) -> str:
    """Copy best.pt to weights/<model>.pt only if it beats the file there on validation accuracy.
    Returns what became of that file and why, e.g. "kept: its val acc 0.9968 >= this run's 0.9950"."""
    if not cfg.weights_dir:
        return "weights/ left alone (--weights-dir '')"
    prefix = "" if cfg.dataset == "mnist" else f"{cfg.dataset}-"
    target = Path(cfg.weights_dir) / f"{prefix}{cfg.model}.pt"
    if not genuine or cfg.limit_train:
        why = "data that is not the genuine MNIST release" if not genuine else "a --limit-train run"
        return f"kept: {why} never replaces it" if target.exists() else f"not written: {why} never writes weights/"
    new = read_checkpoint(best_path)
    said = f"written (val acc {new['metrics']['val_acc']:.4f})"
    if target.exists():
        try:
            old = read_checkpoint(target)
        except CheckpointError as e:
            return f"kept: unreadable ({e}); remove it to let this run replace it"
        if old.get("train_config", {}).get("refit"):  # its validation score is in-sample: nothing compares with it
            return ("kept: it was trained on all 60,000 training images, validation included, so no validation score "
                    "compares with this run's; remove it to let runs replace it")
        old_acc = float(old["metrics"].get("val_acc", -1))
        if new["metrics"]["val_acc"] <= old_acc:
            return f"kept: its val acc {old_acc:.4f} >= this run's {new['metrics']['val_acc']:.4f}"
        said = f"replaced: this run's val acc {new['metrics']['val_acc']:.4f} beats its {old_acc:.4f}"
    ship(best_path, target, environment(cfg.device))
    return said


def sha256(path: Path) -> str:
    """The file's SHA-256, hex (what results/final_recipes.json records for each checkpoint)."""
    import hashlib
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def ship(best_path: Path, target: Path, env: dict) -> None:
    """Write a run's best.pt to target (atomically) and its card target.json beside it: the
    settings and per-epoch history that made the weights (the run folder is not committed)."""
    new = read_checkpoint(best_path)
    save_atomic(new, target)
    run_dir = best_path.parent
    history = list(csv.DictReader(open(run_dir / "history.csv"))) if (run_dir / "history.csv").exists() else []
    card = {"weights": str(target), "model": new["model"], "model_config": new["model_config"], "metrics": new["metrics"],
            "train_config": new["train_config"], "environment": env, "history": history}
    write_json(target.with_suffix(".json"), card, indent=2, newline=False)
