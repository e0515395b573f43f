"""GPU check: one prepared run for a lent CUDA machine (~8 minutes on an H100), or its CPU dry run.

    python benchmarks/gpu_check.py --out "$OUT"        # on the GPU machine: JSON + log under $OUT
    python benchmarks/gpu_check.py --dry-run           # CPU, tiny budgets (the test suite runs this)

In order, each part timed and recorded even if a later one fails: (1) the model and training
tests of the suite on CUDA (pytest, the device left on auto); (2) time to 99.0% and 99.5% test
accuracy with QuickNet's recipe and the data resident on the GPU (speed.py's fixed evaluation
points, 3 seeds, median); (3) a ResNet-18 (full width, default stem) training epoch from its
measured throughput against the GPU's ceiling, 55,000 x 3 x forward FLOPs / the bf16 matmul
rate measured now; (4) the LR table's ResNet-18 row, LR {0.1, 0.01, 0.001, 0.0001} at one
epoch per cell, validation and test accuracy of each. The JSON, `speed-<gpu>.json`, is meant to
be committed to benchmarks/results/ with the GPU's name in it. Targets on an H100:
99.0% in <= 1 s, a ResNet-18 epoch in <= 3 s.
"""

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import speed  # noqa: E402
import machine  # noqa: E402
import train  # noqa: E402
from models import build_model  # noqa: E402

TESTS = ["tests/test_models.py", "tests/test_train.py"]
GRID_LRS = (0.1, 0.01, 0.001, 0.0001)


def matmul_tflops(device: str, dtype, n: int, seconds: float) -> float:
    """Dense matmul rate on `device`: the ceiling a conv net's FLOPs are measured against."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    count, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        count += 1
        if count % 10 == 0:
            sync()
    sync()
    return 2 * n ** 3 * count / (time.perf_counter() - t) / 1e12


def train_throughput(cfg: train.TrainConfig, batch: int, steps: int) -> float:
    """Training images per second (forward, backward, SGD step) on random data, after a warm-up."""
    cfg = cfg.resolved()
    torch.manual_seed(0)
    model = build_model(cfg.model, **cfg.model_config).to(cfg.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = train.make_optimizer(model, cfg)
    x = torch.randn(batch, 1, 28, 28, device=cfg.device)
    y = torch.randint(0, 10, (batch,), device=cfg.device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)

    step = speed.training_step(model, opt, x, y, cfg)
    for _ in range(3):  # warm-up: cuDNN / oneDNN pick their kernels
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - t)


def run_tests(tests: list[str], extra: list[str], log: Path) -> dict:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"command": " ".join(["python", "-m", "pytest", "-q", *tests, *extra]), "rc": proc.returncode,
            "summary": summary, "seconds": round(time.perf_counter() - t, 1)}


def gpu_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny budgets: checks every part runs (CI); numbers mean nothing")
    p.add_argument("--out", default=None, help="folder for speed-<gpu>.json and the logs (default: a temporary folder)")
    p.add_argument("--seeds", type=int, default=3)
    a = p.parse_args(argv)
    dry = a.dry_run
    if not dry and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here; benchmarks/gpu_check.py needs a GPU (or --dry-run for the CPU check)")
    device = "cpu" if dry else "cuda"
    out_dir = Path(a.out or tempfile.mkdtemp(prefix="gpu-check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_root = tempfile.mkdtemp(prefix="gpu-check-runs-")
    gpu = torch.cuda.get_device_name() if device == "cuda" else f"CPU dry run: {machine.cpu_name()}"
    precision = machine.resolve_precision("auto", device)
    out = {"device": gpu, "dry_run": dry, "torch": torch.__version__, "cuda": torch.version.cuda, "precision": precision,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"gpu_check on {gpu} ({precision}), torch {torch.__version__}", flush=True)
    save = out_dir / f"speed-{gpu_slug(gpu if device == 'cuda' else 'cpu-dry-run')}.json"

    def saved():  # after every part: a later failure or timeout keeps what was measured
        save.write_text(json.dumps(out, indent=2))

    # 1. The suite's model and training tests, with CUDA present (device auto picks it).
    tests = ["tests/test_models.py"] if dry else TESTS
    extra = ["-k", "parameter_count"] if dry else []
    out["tests"] = run_tests(tests, extra, out_dir / "gpu_check_tests.txt")
    print(f"tests: {out['tests']['summary']} ({out['tests']['seconds']} s)", flush=True)
    saved()

    # 2. Time to 99.0% / 99.5% with QuickNet's recipe, data on the device.
    common = dict(device=device, out=run_root, weights_dir=None)
    if dry:
        common.update(limit_train=1000, epochs=0.1)
    seeds = []
    for seed in range(1 if dry else a.seeds):
        r = speed.time_to_accuracy(dataclasses.replace(speed.OURS, seed=seed, **common), limit_test=500 if dry else None)
        seeds.append(r)
        print(f"seed {seed}: 99.0% at {speed._fmt(r['reached']['0.990'])}, 99.5% at {speed._fmt(r['reached']['0.995'])} "
              f"(best {r['best_test_acc']})", flush=True)
    per_seed = [r["reached"]["0.995"] for r in seeds]
    t99 = [r["reached"]["0.990"] for r in seeds]
    out.update(time_to_99_0_s=sorted(t99)[len(t99) // 2] if all(t is not None for t in t99) else None,
               time_to_99_5_s=sorted(per_seed)[len(per_seed) // 2] if all(t is not None for t in per_seed) else None,
               time_to_99_5_s_per_seed=per_seed, quicknet_recipe=dataclasses.asdict(speed.OURS.resolved()), quicknet_seeds=seeds)
    saved()

    # 3. ResNet-18 epoch from throughput vs the ceiling (bf16 matmul rate now, 3x forward FLOPs per image).
    rn_config = {"width": 16} if dry else {}
    flops = speed.conv_linear_flops(build_model("resnet", **rn_config))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32
    tflops = matmul_tflops(device, dtype, 1024 if dry else 8192, 0.3 if dry else 3.0)
    rn = train.TrainConfig(model="resnet", model_config=rn_config, device=device, optimizer="sgd", lr=0.1)
    img_s = train_throughput(rn, 64 if dry else 256, 2 if dry else 100)
    epoch_s, ceiling_s = 55_000 / img_s, 55_000 * 3 * flops / (tflops * 1e12)
    out.update(matmul_tflops=tflops, matmul_dtype=str(dtype).replace("torch.", ""), resnet18_model_config=rn_config,
               resnet18_fwd_gflop_per_img=flops / 1e9, resnet18_train_img_s=img_s, resnet18_epoch_s=epoch_s,
               resnet18_ceiling_epoch_s=ceiling_s, resnet18_epoch_vs_ceiling=epoch_s / ceiling_s)
    print(f"ResNet-18: {img_s:.0f} img/s training, an epoch in {epoch_s:.1f} s; ceiling {ceiling_s:.2f} s "
          f"({tflops:.1f} TFLOP/s {out['matmul_dtype']} matmul)", flush=True)
    saved()

    # 4. The LR table's ResNet-18 row on this device: one epoch per cell, SGD-Nesterov, one-cycle.
    grid = {}
    for lr in GRID_LRS:
        cfg = train.TrainConfig(model="resnet", model_config=rn_config, optimizer="sgd", lr=lr, seed=0, run_name=f"resnet-lr{lr:g}",
                                **{**common, "epochs": 0.05 if dry else 1})
        r = train.train(cfg, quiet=True)
        grid[f"{lr:g}"] = {"status": r["status"], "val_acc": r["best"].get("val_acc") if r["best"] else None,
                           "test_acc": (r["test"] or {}).get("acc"), "seconds": r["seconds"]}
        print(f"ResNet-18 lr {lr:g}: val {grid[f'{lr:g}']['val_acc']}, test {grid[f'{lr:g}']['test_acc']}, "
              f"{r['seconds']:.1f} s", flush=True)
        out["resnet18_lr_grid"] = grid
        saved()
    print(f"saved {save}")
    return 0 if out["tests"]["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
