"""What `python train.py --model M` gives as it is: each model's quick default (recipes.DEFAULTS) run by
the user's own command, timed from outside (imports, data loading, training, the test score), per seed.

    python benchmarks/defaults.py --model resnet --seed 0 1 2    # ResNet-18's default, three seeds
    python benchmarks/defaults.py                                # every model's default, seed 0
    python benchmarks/defaults.py --quick                        # tiny budgets: keeps the script from rotting (CI)
    python benchmarks/defaults.py --update-docs                  # only rewrite docs/training.md's table from the JSON

Each run goes to a temporary folder with --weights-dir '' (weights/ is never touched). Records are
merged into benchmarks/results/defaults.json by (model, seed, machine): a run on another machine is
kept beside this one's, never compared with it. --quick writes nothing there.
"""

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import recipes  # noqa: E402
import machine  # noqa: E402
import runs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "defaults.json"
DOCS = ROOT / "docs" / "training.md"
TABLE_BEGIN = "<!-- defaults (written by benchmarks/defaults.py from benchmarks/results/defaults.json) -->"
TABLE_END = "<!-- /defaults -->"
QUICK = ["--epochs", "0.01", "--limit-train", "600"]


def run_default(model: str, seed: int, out: Path, extra: list[str]) -> dict:
    """Run `train.py --model <model> --seed <seed>` (its default recipe) as a user would; returns the
    record: settings, wall seconds of the whole command, validation and test accuracy, test F1."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--model", model, "--seed", str(seed),
           "--out", str(out), "--weights-dir", "", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"defaults.py: {' '.join(cmd[1:])} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    result = json.loads(next(out.glob("*/result.json")).read_text())
    cfg = result["config"]
    return {"model": model, "seed": seed, "optimizer": cfg["optimizer"], "lr": cfg["lr"], "epochs": cfg["epochs"],
            "batch_size": cfg["batch_size"], "wall_seconds": round(wall, 1), "train_seconds": round(result["seconds"], 1),
            "val_acc": result["best"]["val_acc"], "test_acc": result["test"]["acc"], "test_f1": result["test"]["f1"],
            "machine": machine.hardware(result["environment"]["device"], cfg.get("precision", "")),
            "threads": result["environment"]["threads"], "code_version": result["environment"]["code_version"],
            "date": datetime.date.today().isoformat()}


def merge(records: list[dict], path: Path = RESULTS) -> list[dict]:
    """The recorded runs with `records` in place of those with the same (model, seed, machine)."""
    key = lambda r: (r["model"], r["seed"], r["machine"])  # noqa: E731
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    new = {key(r) for r in records}
    return [r for r in old if key(r) not in new] + records


def table(records: list[dict]) -> str:
    """One line per model and machine (models in recipes.DEFAULTS' order): mean test accuracy over its
    seeds, the worst seed, the slowest wall time."""
    lines = ["| model | optimizer | LR | epochs | seeds | test accuracy % (mean, lowest) | wall time, slowest | machine |",
             "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in records:
        groups.setdefault((r["model"], r["machine"]), []).append(r)
    order = list(recipes.DEFAULTS)  # the models in train.py's order, each machine as first recorded
    for (model, where), rs in sorted(groups.items(), key=lambda g: order.index(g[0][0]) if g[0][0] in order else len(order)):
        accs = [r["test_acc"] * 100 for r in rs]
        lines.append(f"| {model} | {rs[0]['optimizer']} | {rs[0]['lr']:g} | {rs[0]['epochs']:g} | {len(rs)} | "
                     f"{statistics.mean(accs):.2f}, {min(accs):.2f} | {max(r['wall_seconds'] for r in rs) / 60:.1f} min | "
                     f"{where} |")
    return "\n".join(lines)


def update_docs(path: Path = DOCS, results: Path = RESULTS) -> bool:
    """Rewrite the table between TABLE_BEGIN and TABLE_END in `path` from the recorded runs; False when
    the file has no such block or nothing is recorded."""
    text = path.read_text() if path.exists() else ""
    if TABLE_BEGIN not in text or TABLE_END not in text or not results.exists():
        return False
    head, rest = text.split(TABLE_BEGIN, 1)
    body = table(json.loads(results.read_text())["runs"])
    path.write_text(f"{head}{TABLE_BEGIN}\n{body}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=list(recipes.DEFAULTS), choices=list(recipes.DEFAULTS))
    p.add_argument("--seed", nargs="+", type=int, default=[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets; nothing recorded")
    p.add_argument("--update-docs", action="store_true", help="only rewrite docs/training.md's table from the JSON")
    args = p.parse_args(argv)
    if args.update_docs:
        print("updated docs/training.md" if update_docs() else "docs/training.md has no defaults block, or nothing recorded")
        return 0
    lock = None if args.quick else machine.exclusive("defaults.py")  # noqa: F841
    records = []
    with tempfile.TemporaryDirectory(prefix="mnist-defaults-") as tmp:
        for model in args.model:
            for seed in args.seed:
                out = Path(tmp) / f"{model}-s{seed}"
                records.append(r := run_default(model, seed, out, QUICK if args.quick else []))
                print(f"{model} seed {seed}: test {r['test_acc']:.2%}, {r['wall_seconds']:.0f} s wall", flush=True)
    if not args.quick:
        records = merge(records)
        runs.write_json(RESULTS, {"runs": records}, indent=1)
        update_docs()
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
