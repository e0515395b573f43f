"""The run folder, and the machine it runs on.

    log = RunLog(run_dir / "log.txt"); log("a line")        # printed and appended
    write_history(run_dir / "history.csv", rows)             # one row per epoch (HISTORY_FIELDS)
    plot_curves(rows, run_dir / "curves.png", title)         # train vs validation loss, accuracy, F1
    promote(run_dir / "best.pt", cfg, genuine)               # -> weights/<model>.pt + its card, if better on val

Also: opening a run folder (a stopped run of the same settings continues), atomic writes, the
machine's facts (resolve_device, resolve_precision, cpu_has_bf16, cpu_name, hardware, environment),
joining a torchrun job (distributed), the process-wide lock that keeps two timing runs apart
(exclusive), and the signal handling that turns `kill` into Ctrl-C. Imports only models.py of ours.
"""

import csv
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

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


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), set in one place."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# -----------------------------------------------------------------------------
# The machine


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' if available, else 'mps' (Apple), else 'cpu'; any other name as given."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_bf16() -> bool:
    """bf16 autocast is 2-3x faster on CPUs with native bf16 (AVX512-BF16, AMX) and slower elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it ('AMD EPYC 9R14'); the architecture elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> bf16 on CUDA with bf16 (else fp16) and on CPUs with bf16 instructions, else fp32."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "fp32"


def hardware(device: str = "cpu", precision: str = "") -> str:
    """'AMD EPYC 9R14 (2 threads, bf16)': the CPU model, as /proc/cpuinfo names it; the GPU's name on CUDA."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} ({precision})"
    return f"{cpu_name()} ({torch.get_num_threads()} threads, {precision or ('bf16' if cpu_has_bf16() else 'fp32')})"


def code_version() -> str:
    """The repository's short commit, '-dirty' with uncommitted changes to tracked files; 'unknown' outside git."""
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if commit.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str) -> dict:
    """What a run ran on: torch, python, device, threads, CPU, code version (and the GPU on CUDA)."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
           "threads": torch.get_num_threads(), "cpu": cpu_name(), "code_version": code_version()}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


# -----------------------------------------------------------------------------
# Distributed data parallel: `torchrun --nproc-per-node=N train.py ...` runs N copies of this
# script; each trains on its 1/N of every global batch and DDP averages the gradients, so the
# run is the same optimization as one process with the same --batch-size and --lr (the batch
# size is the *global* batch). Without torchrun (WORLD_SIZE unset) nothing here does anything.


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the only process that prints, writes files and updates weights/."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of t over the ranks (a new tensor on t's device); t itself when alone."""
        if self.world == 1:
            return t
        dev = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        out = t.detach().clone().to(dev)
        torch.distributed.all_reduce(out)
        return out.to(t.device)

    def broadcast(self, obj):
        """Rank 0's obj, on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def distributed(device: str) -> Dist:
    """Join the torchrun job this process belongs to (gloo on CPU, NCCL on CUDA), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td
    backend = "nccl" if device.startswith("cuda") else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not td.is_initialized():
        td.init_process_group(backend)
    return Dist(td.get_rank(), td.get_world_size(), local_rank, backend)


# -----------------------------------------------------------------------------
# The run folder: log.txt, history.csv, curves.png, checkpoints


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


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Train vs validation loss, accuracy and macro-F1 per epoch."""
    if not history:
        return
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    plain = all(math.isfinite(float(h.get("train_ce", math.nan))) for h in history)  # runs from before train_ce: the optimised loss
    for ax, key, label in zip(axes, ("loss", "acc", "f1"), ("loss (CE)", "accuracy", "macro F1")):
        train_key = "train_ce" if key == "loss" and plain else f"train_{key}"
        ax.plot(ep, [float(h[train_key]) for h in history], "o-", label="train (augmented, running)")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def same_settings(stored: dict, record: dict, defaults: dict) -> bool:
    """Whether a last.pt's train_config describes the run `record` describes. A moved run folder is
    still the same run; a setting added after last.pt was written counts as its value in `defaults` there."""
    where = {"out", "run_name", "weights_dir"}
    return all(stored.get(k, defaults.get(k)) == record.get(k, defaults.get(k)) for k in (set(stored) | set(record)) - where)


def open_run_dir(run_dir: Path, record: dict, dist: "Dist", resume: bool, defaults: dict) -> dict | None:
    """Make the run folder. Returns its last.pt when `resume` and it holds a run of these same
    settings; otherwise clears the folder's files of an earlier run and returns None."""
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    saved = read_checkpoint(run_dir / "last.pt") if resume and (run_dir / "last.pt").exists() else None
    if saved is not None and not same_settings(saved["train_config"], record, defaults):
        if dist.main:
            print(f"{run_dir}/last.pt was made with other settings: starting over")
        saved = None
    dist.barrier()  # every rank has read last.pt before rank 0 may delete it
    if saved is None and dist.main:
        for stale in ("last.pt", "log.txt", "history.csv", "best.pt", "curves.png", "result.json"):
            (run_dir / stale).unlink(missing_ok=True)
    return saved


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float, title: str, out_png: str) -> str:
    """The LR range test's smoothed loss against the LR (log axis), the suggestion marked; returns out_png."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="r", ls="--", label=f"suggested {suggestion:.2g} (steepest)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(title)
    ax.legend()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_png


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


# -----------------------------------------------------------------------------
# Locks, claims, signals


def exclusive(name: str = "benchmark", path: Path | None = None):
    """Hold a lock for the whole process: two timing runs (benchmarks/, the study) at once on
    2 cores make both worthless. Exits with a one-line error when another one holds it."""
    import fcntl
    import tempfile

    # MNIST_STUDY_LOCK: another lock file, e.g. for two shard workers of one study on one machine (tests)
    path = path or Path(os.environ.get("MNIST_STUDY_LOCK") or Path(tempfile.gettempdir()) / "mnist-study-benchmark.lock")
    f = path.open("w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise SystemExit(f"{name}: another benchmark or study is running (lock {path}); wait for it: "
                         f"runs side by side on 2 cores make both slow and their timings meaningless")
    return f  # keep a reference: the lock lives as long as the file stays open


def stop_on_signals() -> None:
    """SIGTERM (a session's end, `kill`) and SIGINT, even in a background job where the shell
    ignores SIGINT, stop the process like Ctrl-C: a run in progress saves its last.pt first."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
