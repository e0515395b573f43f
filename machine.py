"""The machine a run uses: its device and precision, its facts for the records, torchrun's process
group, the lock that keeps two timing jobs apart, and the signals that stop a job like Ctrl-C.

    device = resolve_device("auto")                 # cuda, else mps, else cpu
    precision = resolve_precision("auto", device)   # bf16 where the CPU or GPU has it, else fp32 / fp16
    hardware(device, precision)                     # 'Intel(R) Xeon(R) Processor (2 threads, bf16)'
    dist = distributed(device)                      # rank 0 of 1 without torchrun
    lock = exclusive("speed.py")                    # one timing job per machine

Imports nothing of ours.
"""

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

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
# One timing job at a time, and signals


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
