"""Speed benchmark: time to 99.0% / 99.5% test accuracy, the reference recipes in the same
run, throughput per model and precision, ResNet-18 against the hardware ceiling, memory.

    python benchmarks/speed.py                 # the full table (~15 min on 2 CPU cores)
    python benchmarks/speed.py --json          # also print JSON; always saved to benchmarks/results/
    python benchmarks/speed.py --quick         # tiny budgets, seconds: keeps the script from rotting (CI)

Everything is measured in this one process on this one machine, so the ratios mean
something even where the machine is noisy. Time to accuracy is wall time from the start
of data loading (imports excluded) to the first fixed evaluation point (every 1/8 epoch)
whose test accuracy reaches the target; the time spent in those test evaluations is
excluded, the run's own per-epoch validation and checkpointing are included.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torchvision.datasets  # noqa: E402,F401  (imports are excluded from the timings; data loading is not)
import torch.nn as nn  # noqa: E402

import machine as this_machine  # noqa: E402
import train  # noqa: E402
from machine import exclusive  # noqa: E402,F401  (trials.py imports it from here)
from data import Augment, augment, load_data  # noqa: E402
from models import MODELS, build_model  # noqa: E402

# Our fastest recipe, for both targets: train.py's QuickNet recipe as it is (5 epochs, peak
# LR 0.2, batch 128; see recipes.DEFAULTS and the trials behind it in results/trials.jsonl).
# The study's ConvNet with train.py's default recipe (1 epoch) is timed beside it.
OURS = train.TrainConfig(model="quicknet")
STUDY_CONVNET = train.TrainConfig(model="convnet")
# The reference programs' own settings, run inside our loop: fp32, NCHW, their batch
# sizes and optimizers, no augmentation, smoothing or weight decay.
REFERENCES = {
    "pytorch/examples": train.TrainConfig(model="pytorch-example", optimizer="adadelta", lr=1.0, batch_size=64,
                                          schedule="step", gamma=0.7, warmup=0.0, weight_decay=0.0, label_smoothing=0.0,
                                          augment=False, precision="fp32", channels_last=False, epochs=5),
    "keras": train.TrainConfig(model="keras-example", optimizer="adam", lr=1e-3, batch_size=128, schedule="constant",
                               warmup=0.0, weight_decay=0.0, label_smoothing=0.0, augment=False, precision="fp32",
                               channels_last=False, epochs=6),
}
# What the programs themselves took on this kind of machine (../shared/BENCHMARKS.md), for context.
PROGRAMS_AS_RUN = {"pytorch/examples": "> 193 s (never reached 99.0% in 3 epochs)", "keras": "154 s to first >= 99.0%"}


class Reached(Exception):
    """Raised from the step hook once every target is reached: the run stops there."""


def time_to_accuracy(cfg: train.TrainConfig, targets=(0.99, 0.995), evals_per_epoch: int = 8, limit_test: int | None = None,
                     stop: bool = True) -> dict:
    """Train cfg, evaluating the test set every 1/evals_per_epoch epoch; stop once every target is
    reached (stop=False: train to the end, e.g. to see where a recipe tops out)."""
    t0 = time.perf_counter()
    data = load_data(cfg.dataset, cfg.data_dir)
    rcfg = cfg.resolved()
    x_test, y_test = data.x_test[:limit_test], data.y_test[:limit_test]
    n_train = min(len(data.x_train), rcfg.limit_train or len(data.x_train))
    _, steps_per_epoch, last = train.run_length(rcfg, n_train)  # the final step is evaluated too
    every = max(1, steps_per_epoch // evals_per_epoch)
    paused, reached, curve = 0.0, {}, []

    def hook(step, model):
        nonlocal paused, x_test, y_test
        if step % every and step != last:
            return
        t = time.perf_counter()
        dev = next(model.parameters()).device  # the test set goes where the model trains, once (CUDA: resident)
        x_test, y_test = x_test.to(dev), y_test.to(dev)
        acc = train.evaluate(model, x_test, y_test, rcfg)["acc"]
        elapsed = t - t0 - paused
        paused += time.perf_counter() - t
        curve.append((step, round(elapsed, 2), acc))
        for target in targets:
            if acc >= target and target not in reached:
                reached[target] = elapsed
        if stop and len(reached) == len(targets):
            raise Reached

    try:
        train.train(cfg, data, on_step=hook, quiet=True)
    except Reached:
        pass
    total = time.perf_counter() - t0 - paused
    return {"reached": {f"{t:.3f}": reached.get(t) for t in targets}, "total_s": total, "curve": curve,
            "best_test_acc": max((a for *_, a in curve), default=None)}


def conv_linear_flops(model: nn.Module, input_size=(1, 1, 28, 28)) -> float:
    """Forward FLOPs per image (2 x multiply-adds) of the convolutions and linear layers."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += 2 * out.numel() * m.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(input_size))
    for h in hooks:
        h.remove()
    return float(total)


def matmul_gflops(dtype, n: int = 4096, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    count, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - t) / 1e9


def training_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: train.TrainConfig):
    """train.py's step (forward, backward, optimizer update) on the fixed batch (x, y), as a callable to time."""
    return lambda: train.train_step(model, opt, x, y, cfg)


def throughput(name: str, precision: str, channels_last: bool, batch: int, seconds: float, model_config=None) -> dict:
    """Training img/s (fwd + bwd + SGD step) and inference img/s, on random data."""
    cfg = train.TrainConfig(model=name, model_config=model_config or {}, precision=precision, channels_last=channels_last,
                            device="cpu", lr=0.01, eval_batch_size=1000).resolved()
    torch.manual_seed(0)
    model = build_model(name, **cfg.model_config)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = train.make_optimizer(model, cfg)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    step = training_step(model, opt, x, y, cfg)
    model.train()
    train_rate = rate(step, batch, seconds)
    xe = torch.randn(1000, 1, 28, 28)
    xe = xe.contiguous(memory_format=torch.channels_last) if channels_last else xe
    model.eval()

    def infer():
        with torch.no_grad(), train.autocast(cfg):
            model(xe)

    return {"train_img_s": train_rate, "infer_img_s": rate(infer, 1000, seconds)}


def rate(fn, n_per_call: int, seconds: float) -> float:
    """Items per second of fn() (n_per_call items a call) after one warm-up call (oneDNN builds its
    kernels on the first); capped by time: one timed call at least, never a count of calls."""
    fn()
    calls, t = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - t < seconds:
        fn()
        calls += 1
    return n_per_call * calls / (time.perf_counter() - t)


# The augmentations the recipes use: train.py's default shifts, the study's final affine warp, and the
# elastic fields of the regularization stage (sigma 4) and of the DNN's attempt (sigma 6).
AUGMENTS = {"shift": Augment(2.0), "affine": Augment(2.0, 10.0, 0.1), "affine+elastic s4": Augment(2.0, 10.0, 0.1, 34.0, 4.0),
            "affine+elastic s6": Augment(2.0, 10.0, 0.1, 34.0, 6.0)}


def augment_ms(batch: int = 256, seconds: float = 1.0) -> dict:
    """Milliseconds per batch of data.augment for each of AUGMENTS (fp32, a batch of `batch`)."""
    x, g = torch.randn(batch, 1, 28, 28), torch.Generator().manual_seed(0)
    return {name: 1000 / rate(lambda: augment(x, spec, g, -0.42), 1, seconds) for name, spec in AUGMENTS.items()}


def peak_rss_mb(model: str, steps: int) -> dict:
    """Memory of a fresh process (Linux) that loads the data, then trains `model` for `steps` steps.

    {"process": the whole process's peak RSS (libraries + data + training),
     "after_data": RSS once the data is loaded, "training": the peak RSS while training}.
    Loading the data has its own transient peak (decoding and normalizing copies) that can
    hide the model's; on Linux the peak is reset after loading (/proc/self/clear_refs) so
    "training" is the model's (activations, gradients, optimizer state) on top of
    "after_data". Where clear_refs is not allowed, "training" is None.
    """
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
import train

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def stop(step, model):
    if step >= {steps}:
        raise KeyboardInterrupt

data = train.load_data()
process = kib("VmHWM")  # not getrusage's ru_maxrss: Linux carries that over from the parent across exec
try:
    after_data = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak) to the current RSS
except OSError:
    after_data = None
cfg = train.TrainConfig(model={model!r}, epochs=1, out=sys.argv[1], weights_dir=None)
try:
    train.train(cfg, data, on_step=stop, quiet=True)
except KeyboardInterrupt:
    pass
training = kib("VmHWM") if after_data is not None else None
process = max(process, kib("VmHWM"))
print(json.dumps({{"process": process, "after_data": after_data, "training": training}}))
"""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", code, tmp], capture_output=True, text=True, check=True)
    values = json.loads(out.stdout.strip().splitlines()[-1])  # KiB, as /proc reports them
    return {k: (v / 1024 if v is not None else None) for k, v in values.items()}


def startup_s(repeats: int = 3) -> dict:
    """`python train.py` start-up: wall time from launching the process to the end of its first
    training step (interpreter, imports, data loading and verification, model, one step), as a
    user sees it. A fresh process each time; the median of `repeats` (the first one may also pay
    for a cold file cache). The run itself is cut short (--limit-train) and never ships weights.
    """
    times = []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.time()  # wall clock on both sides: train.py records time.time() at its first step
            subprocess.run([sys.executable, str(ROOT / "train.py"), "--limit-train", "1280", "--out", tmp,
                            "--run-name", "startup", "--weights-dir", ""], check=True, capture_output=True, text=True)
            result = json.loads((Path(tmp) / "startup" / "result.json").read_text())
            times.append(result["first_step_unix"] - t)
    return {"median_s": statistics.median(times), "runs_s": times, "command": "python train.py (--limit-train 1280, default model)"}


FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what decides the fast path


def cpu_flags() -> list[str]:
    try:
        words = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return []
    return [f for f in FLAGS if f in words]


def machine_class() -> str:
    """'bf16' on CPUs with native bf16 (AVX512-BF16 or AMX: Zen 4, Sapphire Rapids), 'fp32' elsewhere (AVX2)."""
    return "bf16" if this_machine.cpu_has_bf16() else "fp32"


def machine() -> dict:
    return {"cpu": this_machine.cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "device": "cpu", "bf16_instructions": this_machine.cpu_has_bf16(), "machine_class": machine_class(), "cpu_flags": cpu_flags(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def measure_time_to_accuracy(out: dict, q: bool, seeds: int, tmp: str) -> None:
    """Ours (QuickNet's recipe) over seeds, the study's ConvNet, then the reference recipes (capped): seconds to 99.0 / 99.5%."""
    limit = 2000 if q else None
    ours, convnet = [], []
    for seed in range(1 if q else seeds):
        common = dict(seed=seed, out=tmp, weights_dir=None, limit_train=limit, epochs=0.5 if q else None)
        r = time_to_accuracy(dataclasses.replace(OURS, **common), limit_test=1000 if q else None)
        c = time_to_accuracy(dataclasses.replace(STUDY_CONVNET, **common), targets=(0.99,), limit_test=1000 if q else None)
        ours.append(r)
        convnet.append(c)
        print(f"seed {seed}: ours 99.0% at {_fmt(r['reached']['0.990'])}, 99.5% at {_fmt(r['reached']['0.995'])} "
              f"(best {r['best_test_acc']}); ConvNet default 99.0% at {_fmt(c['reached']['0.990'])}", flush=True)
    refs = {}
    for name, cfg in REFERENCES.items():
        cfg = dataclasses.replace(cfg, out=tmp, weights_dir=None, limit_train=limit, epochs=0.1 if q else cfg.epochs)
        refs[name] = time_to_accuracy(cfg, targets=(0.99,), limit_test=1000 if q else None)
        r = refs[name]
        print(f"{name} recipe in our loop: 99.0% at {_fmt(r['reached']['0.990'])} (best {r['best_test_acc']}, "
              f"capped at {cfg.epochs:g} epochs, {r['total_s']:.1f} s)", flush=True)

    def median_time(runs, key):
        times = [r["reached"][key] for r in runs]
        return statistics.median(times) if all(t is not None for t in times) else None

    t99, t995 = median_time(ours, "0.990"), median_time(ours, "0.995")
    out.update(time_to_99_0_s=t99, time_to_99_5_s=t995, time_to_99_5_s_per_seed=[r["reached"]["0.995"] for r in ours], references=refs,
               ours={"recipe": dataclasses.asdict(OURS.resolved()), "seeds": ours},
               study_convnet={"recipe": dataclasses.asdict(STUDY_CONVNET.resolved()), "seeds": convnet,
                              "time_to_99_0_s": median_time(convnet, "0.990")})
    for name, key in (("pytorch/examples", "speedup_vs_pytorch_examples"), ("keras", "speedup_vs_keras")):
        ref = refs[name]
        ref_t = ref["reached"]["0.990"]
        out[key] = (ref_t if ref_t is not None else ref["total_s"]) / t99 if t99 else None
        out[key + "_is_lower_bound"] = ref_t is None


def measure_throughput(out: dict, q: bool) -> tuple[str, ...]:
    """Training and inference img/s per model, precision and layout; the augmentation's cost. Returns the precisions measured."""
    # Throughput per model, fp32 vs bf16, NCHW vs channels_last. bf16 only where the CPU has
    # bf16 instructions: elsewhere it is emulated, 10-20x slower, and nobody should use it.
    precisions = ("fp32", "bf16") if this_machine.cpu_has_bf16() else ("fp32",)
    out["machine_class"] = machine_class()  # results are kept per class: never mix bf16 and fp32 machines
    if "bf16" not in precisions:
        print("bf16: skipped, no bf16 instructions on this CPU (it would be emulated)", flush=True)
    secs = 0.3 if q else 3.0
    rows = {}
    for name in MODELS:
        if q and name == "resnet":
            continue
        batch = 64 if name == "resnet" else 256
        for prec in precisions:
            for cl in (False, True):
                if name == "dnn" and cl:
                    continue
                rows[f"{name}|{prec}|{'channels_last' if cl else 'NCHW'}"] = throughput(name, prec, cl, batch, secs)
        print(f"throughput {name}: " + ", ".join(f"{k.split('|', 1)[1]} {v['train_img_s']:.0f}/{v['infer_img_s']:.0f}"
                                                  for k, v in rows.items() if k.startswith(name + "|")), flush=True)
    out["throughput"] = rows

    # 2b. What augmentation costs per batch of 256 (against a training step: 256 / train img/s above).
    out["augment_ms_per_batch_256"] = augment_ms(seconds=0.2 if q else 1.0)
    print("augmentation, ms per batch of 256: " + ", ".join(f"{k} {v:.2f}" for k, v in out["augment_ms_per_batch_256"].items()), flush=True)

    return precisions


def measure_resnet_and_inference(out: dict, q: bool, precisions: tuple[str, ...]) -> None:
    """ResNet-18's epoch against the machine's matmul ceiling; ConvNet inference on the test set."""
    # 3. ResNet-18 epoch vs the bf16 ceiling measured now: ceiling = matmul GFLOP/s / (3 x fwd FLOPs).
    # (fp32 and its matmul rate where the CPU has no bf16.)
    fast = precisions[-1]
    gf32 = matmul_gflops(torch.float32, seconds=0.5 if q else 2)
    gf16 = matmul_gflops(torch.bfloat16, seconds=0.5 if q else 2) if fast == "bf16" else None
    rn_cfg = {"width": 16} if q else {}  # quick mode: the 16x cheaper width
    flops = conv_linear_flops(build_model("resnet", **rn_cfg))
    rn = throughput("resnet", fast, True, 128 if q else 256, 1 if q else 30, rn_cfg)  # steady state, training batch
    n_train = 55_000
    epoch_s = n_train / rn["train_img_s"]
    ceiling_s = n_train * 3 * flops / ((gf16 or gf32) * 1e9)
    out.update(matmul_gflops={"fp32": gf32, "bf16": gf16}, resnet18_fwd_gflop_per_img=flops / 1e9,
               resnet18_epoch_s=epoch_s, resnet18_ceiling_epoch_s=ceiling_s, resnet18_epoch_vs_ceiling=epoch_s / ceiling_s,
               resnet18_model_config=rn_cfg, resnet18_precision=fast)

    # 4. ConvNet inference on the whole test set (10,000 images), as test_model.py runs it (fp32) and in bf16.
    data = load_data()
    model = build_model("convnet").eval().to(memory_format=torch.channels_last)
    infer = {}
    for prec in precisions:
        cfg = train.TrainConfig(model="convnet", precision=prec, device="cpu").resolved()
        train.evaluate(model, data.x_test[:1000], data.y_test[:1000], cfg)  # warm-up
        t = time.perf_counter()
        train.evaluate(model, data.x_test, data.y_test, cfg)
        infer[prec] = time.perf_counter() - t
    out["convnet_test_inference_s"] = min(infer.values())
    out["convnet_test_inference_by_precision_s"] = infer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (seconds): checks the script works, numbers mean nothing")
    p.add_argument("--seeds", type=int, default=3, help="seeds for our time-to-accuracy (median reported)")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    p.add_argument("--save", default=None, help="where to save the JSON (default benchmarks/results/speed-<machine class>.json, "
                                                "bf16 or fp32; quick: not saved)")
    p.add_argument("--update-readme", action="store_true", help="only rewrite docs/speed.md's table from the saved JSON files")
    a = p.parse_args(argv)
    if a.update_readme:
        print("updated docs/speed.md" if update_readme() else "docs/speed.md has no speed:classes block")
        return 0
    q = a.quick
    # The lock keeps timings from sharing the 2 cores; --quick times nothing that means anything,
    # so it runs even beside a study (CI on a developer's machine).
    lock = None if q else exclusive("speed.py")  # noqa: F841
    tmp = tempfile.mkdtemp(prefix="speed-")
    out = {"machine": machine(), "quick": q}
    print(f"machine: {out['machine']['cpu']}, {out['machine']['threads']} threads, torch {out['machine']['torch']}", flush=True)

    # 0. Start-up of `python train.py` to its first training step, in fresh processes.
    out["startup"] = startup_s(1 if q else 3)
    print(f"start-up of python train.py to the first step: {out['startup']['median_s']:.2f} s "
          f"(runs {', '.join(f'{t:.2f}' for t in out['startup']['runs_s'])} s)", flush=True)
    out["startup_s"] = out["startup"]["median_s"]

    measure_time_to_accuracy(out, q, a.seeds, tmp)
    precisions = measure_throughput(out, q)
    measure_resnet_and_inference(out, q, precisions)

    # 5. Peak memory of training runs (fresh processes: data + model + optimizer), read from /proc (Linux).
    if not q and Path("/proc/self/status").exists():
        out["peak_rss_mb"] = {"convnet": peak_rss_mb("convnet", 50), "resnet": peak_rss_mb("resnet", 3)}

    import contextlib
    import io
    tables = io.StringIO()
    with contextlib.redirect_stdout(tables):
        print_table(out)
    print(tables.getvalue(), end="")
    save = a.save or (None if q else str(ROOT / "benchmarks" / "results" / f"speed-{out['machine_class']}.json"))
    if save:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        Path(save).write_text(json.dumps(out, indent=2))
        Path(save).with_suffix(".txt").write_text(tables.getvalue())
        print(f"saved {save} and {Path(save).with_suffix('.txt')}")
        if not a.save and update_readme():
            print("updated docs/speed.md's table")
    if a.json:
        print(json.dumps(out, indent=2))
    return 0


# -----------------------------------------------------------------------------
# docs/speed.md's table, written from the saved JSON files (`--update-readme`; measures nothing)

README_BEGIN = "<!-- speed:classes (written by benchmarks/speed.py --update-readme from benchmarks/results/speed-*.json) -->"
README_END = "<!-- /speed:classes -->"
TARGETS = {"bf16": {"t99": 3, "t995": 15}, "fp32": {"t99": 8, "t995": 30}}  # the speed targets, per machine class


def readme_block(results: Path = ROOT / "benchmarks" / "results") -> list[str]:
    """One column per machine class: the newest `speed-<class>.json` of each, and a column saying
    "not measured" for a class with no file, so numbers from different machines never mix."""
    runs = {}
    for path in sorted(results.glob("speed-*.json")):
        o = json.loads(path.read_text())
        cls = o.get("machine_class") or o["machine"].get("machine_class")
        if cls in TARGETS and not o.get("quick") and (cls not in runs or o["machine"]["date"] > runs[cls][1]["machine"]["date"]):
            runs[cls] = (path, o)

    def cell(cls, fn):
        if cls not in runs:
            return "not measured (no such machine here yet)"
        try:
            return fn(runs[cls][1])
        except (KeyError, TypeError):
            return "not in this run"

    def met(value, target):
        return "" if value is None else (" (target <= %g s: %s)" % (target, "met" if value <= target else "missed"))

    def per_seed(o):
        seeds = o["time_to_99_5_s_per_seed"]
        worst = None if any(t is None for t in seeds) else max(seeds)
        shown = " / ".join("never" if t is None else f"{t:.1f}" for t in seeds)
        return f"{shown} s" + (" (target: every seed, <= %g s: %s)" % (TARGETS[o["machine_class"]]["t995"],
                                                                         "met" if worst is not None and worst <= TARGETS[o["machine_class"]]["t995"] else "missed"))
    rows = [
        ("CPU, flags, date", lambda o: f"{o['machine']['cpu']}, {o['machine']['threads']} threads; {', '.join(o['machine']['cpu_flags'])}; "
                                       f"{o['machine']['date'][:10]} (`{runs[o['machine_class']][0].name}`)"),
        ("`python train.py` start-up to the first step", lambda o: f"{o['startup_s']:.2f} s" + met(o["startup_s"], 3)),
        ("time to 99.0%, median of 3 seeds", lambda o: f"{o['time_to_99_0_s']:.1f} s" + met(o["time_to_99_0_s"], TARGETS[o["machine_class"]]["t99"])),
        ("time to 99.5%, each seed", per_seed),
        ("speed-up to 99.0% vs pytorch/examples / Keras recipes (targets >= 30x / >= 12x)",
         lambda o: f"{o['speedup_vs_pytorch_examples']:.1f}x / {o['speedup_vs_keras']:.1f}x"),
        ("ResNet-18 epoch (full width) vs the matmul ceiling", lambda o: f"{o['resnet18_epoch_s']:.0f} s, {o['resnet18_epoch_vs_ceiling']:.1f}x "
                                                                          f"the {o['resnet18_precision']} ceiling"),
        ("augmentation, ms per batch of 256", lambda o: ", ".join(f"{k} {v:.1f}" for k, v in o["augment_ms_per_batch_256"].items())),
    ]
    lines = [README_BEGIN, "", "| | bf16 class (native bf16: AVX512-BF16 or AMX) | fp32 class (AVX2 only) |", "|---|---|---|"]
    lines += [f"| {name} | {cell('bf16', fn)} | {cell('fp32', fn)} |" for name, fn in rows]
    return lines + ["", README_END]


def update_readme(path: Path = ROOT / "docs" / "speed.md") -> bool:
    text = path.read_text()
    if README_BEGIN.split(" (")[0] not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN.split(" (")[0], 1)
    head_end = rest.split(README_END, 1)[1]
    path.write_text(head + "\n".join(readme_block()) + head_end)
    return True


def _fmt(t):
    return "not reached" if t is None else f"{t:.1f} s"


def print_table(o: dict) -> None:
    print(f"\n## Speed on {o['machine']['cpu']} ({o['machine']['threads']} threads, torch {o['machine']['torch']})"
          + ("  [QUICK MODE: budgets too small to mean anything]" if o["quick"] else ""))
    if "startup" in o:
        print(f"\n`python train.py` start-up to its first training step: **{o['startup_s']:.2f} s** (median of "
              f"{', '.join(f'{t:.2f}' for t in o['startup']['runs_s'])} s; fresh processes)")
    print("\n| recipe | time to 99.0% | time to 99.5% | per seed |\n|---|---|---|---|")
    n = len(o["ours"]["seeds"])

    def recipe(r):
        return (f"{r['epochs']:g} epoch{'s' if r['epochs'] != 1 else ''}, {r['optimizer']} lr {r['lr']:g}, batch {r['batch_size']}, "
                f"{r['precision']}{' + channels_last' if r['channels_last'] else ''}")

    both = "; ".join(f"{_fmt(r['reached']['0.990'])} / {_fmt(r['reached']['0.995'])}" for r in o["ours"]["seeds"])
    print(f"| **ours: QuickNet**, train.py's recipe ({recipe(o['ours']['recipe'])}), median of {n} | "
          f"**{_fmt(o['time_to_99_0_s'])}** | **{_fmt(o['time_to_99_5_s'])}** | 99.0 / 99.5: {both} |")
    sc = o["study_convnet"]
    print(f"| ConvNet (study model), train.py's default ({recipe(sc['recipe'])}), median of {n} | {_fmt(sc['time_to_99_0_s'])} | "
          f"| {'; '.join(_fmt(r['reached']['0.990']) for r in sc['seeds'])} |")
    for name, r in o["references"].items():
        t = r["reached"]["0.990"]
        shown = _fmt(t) if t is not None else f"> {r['total_s']:.0f} s (best {100 * (r['best_test_acc'] or 0):.2f}%)"
        print(f"| {name} recipe in our loop (fp32) | {shown} | | as the program runs: {PROGRAMS_AS_RUN[name]} |")
    for name, key in (("pytorch/examples", "speedup_vs_pytorch_examples"), ("keras", "speedup_vs_keras")):
        if o[key] is not None:
            print(f"\nspeed-up to 99.0% vs {name}: {'>= ' if o[key + '_is_lower_bound'] else ''}{o[key]:.1f}x", end="")
    print("\n\n| model | precision | layout | train img/s | inference img/s |\n|---|---|---|---|---|")
    for k, v in o["throughput"].items():
        name, prec, layout = k.split("|")
        print(f"| {name} | {prec} | {layout} | {v['train_img_s']:,.0f} | {v['infer_img_s']:,.0f} |")
    gf = o["matmul_gflops"]
    print(f"\nmatmul 4096^2: fp32 {gf['fp32']:.0f} GFLOP/s, bf16 " + (f"{gf['bf16']:.0f} GFLOP/s" if gf["bf16"] else "skipped (no bf16 on this CPU)"))
    print(f"ResNet-18 {o['resnet18_model_config'] or '(full width)'}: {o['resnet18_fwd_gflop_per_img']:.3f} GFLOP/img forward; "
          f"epoch (55,000 images, {o.get('resnet18_precision', 'bf16')} + channels_last) {o['resnet18_epoch_s']:.0f} s vs ceiling {o['resnet18_ceiling_epoch_s']:.0f} s "
          f"= {o['resnet18_epoch_vs_ceiling']:.2f}x the ceiling")
    if "augment_ms_per_batch_256" in o:
        print("augmentation (data.augment), ms per batch of 256: "
              + ", ".join(f"{k} {v:.2f}" for k, v in o["augment_ms_per_batch_256"].items()))
    by = o["convnet_test_inference_by_precision_s"]
    print("ConvNet inference, 10,000 test images: " + ", ".join(f"{k} {v:.2f} s" for k, v in by.items()))
    if "peak_rss_mb" in o:
        for name, label in (("convnet", "ConvNet"), ("resnet", "ResNet-18")):
            m = o["peak_rss_mb"][name]
            during = f"{m['training']:.0f} MB while training ({m['training'] - m['after_data']:+.0f} MB over the {m['after_data']:.0f} MB " \
                     "after loading the data)" if m["training"] is not None else "training peak not measurable here"
            print(f"memory of a {label} training process: peak RSS {m['process']:.0f} MB; {during}")

if __name__ == "__main__":
    sys.exit(main())
