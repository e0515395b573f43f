"""Recipe trials: how fast a training configuration reaches 99.0% / 99.5% test accuracy.

    python benchmarks/trials.py --set epochs=2.5 lr=0.2 --seeds 0 1
    python benchmarks/trials.py --show          # the table of every trial so far

Each run trains to the end (no early stop), evaluates the test set every 1/8 epoch as
benchmarks/speed.py does, and appends one JSON line to benchmarks/results/trials.jsonl:
the full config, the seed, the times to each target, the accuracy curve and the final
accuracy. This is the record behind the recipes chosen in speed.py and recipes.DEFAULTS:
a choice made from these trials says which lines it rests on. The test set is only
used here to measure *speed to a test accuracy*, the quantity the benchmark defines;
models shipped in weights/ are still selected on the validation split.
"""

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from speed import exclusive, machine, time_to_accuracy  # noqa: E402

LOG = ROOT / "benchmarks" / "results" / "trials.jsonl"
TARGETS = (0.99, 0.995)


def parse_value(text: str):
    """'0.2' -> 0.2, 'true' -> True, '{"width": 24}' -> dict; anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def overrides(pairs: list[str]) -> dict:
    fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"trials.py: --set {pair!r}: expected key=value with key one of TrainConfig's fields")
        out[key] = parse_value(value)
    return out


def show(path: Path = LOG) -> None:
    """One row per distinct setting: the median time to each target over its seeds, and the final accuracy."""
    if not path.exists():
        print(f"no trials yet ({path})")
        return
    groups: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        groups.setdefault(json.dumps(r["set"], sort_keys=True), []).append(r)
    print(f"| setting | seeds | median s to 99.0% | median s to 99.5% | final test acc (each seed) |\n|---|---|---|---|---|")
    for key, runs in groups.items():
        cells = []
        for t in TARGETS:
            times = [r["reached"][f"{t:.3f}"] for r in runs]
            hit = [x for x in times if x is not None]
            med = f"{statistics.median(hit):.1f}" if len(hit) == len(times) else f"{len(hit)}/{len(times)} reached"
            cells.append(med)
        finals = " / ".join(f"{r['final_test_acc']:.4f}" for r in runs)
        print(f"| {' '.join(f'{k}={v}' for k, v in json.loads(key).items())} | {len(runs)} | {cells[0]} | {cells[1]} | {finals} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig fields to change from the defaults")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--show", action="store_true", help="print the table of recorded trials and exit")
    p.add_argument("--log", type=Path, default=LOG)
    a = p.parse_args(argv)
    if a.show:
        show(a.log)
        return 0
    changes = overrides(a.set)
    lock = exclusive("trials.py")  # noqa: F841
    a.log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            cfg = dataclasses.replace(train.TrainConfig(**{"model": "convnet", **changes}), seed=seed, out=tmp, weights_dir=None)
            r = time_to_accuracy(cfg, targets=TARGETS, stop=False)
            row = {"set": changes, "seed": seed, "reached": r["reached"], "total_s": round(r["total_s"], 2),
                   "final_test_acc": r["curve"][-1][2] if r["curve"] else None, "best_test_acc": r["best_test_acc"],
                   "curve": r["curve"], "config": dataclasses.asdict(cfg.resolved()), "machine": machine()}
            with a.log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            reached = ", ".join(f"{k}: {'-' if v is None else f'{v:.1f} s'}" for k, v in r["reached"].items())
            print(f"{changes} seed {seed}: {reached} | final {row['final_test_acc']:.4f} | {row['total_s']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
