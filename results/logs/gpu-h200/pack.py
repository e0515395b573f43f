"""Pack what the recipes stage made for the way back: results/, the logs, then run folders in the
order they are needed here (seed 0 of each chosen recipe, twins, other seeds, unfinished runs'
last.pt for resuming), as one tar split into 15 MiB parts; parts 1-4 go to $OUT now (call 1),
the rest stay in runs/pack for a second call (`python3 .gpu/pack.py rest`)."""
import json, os, shutil, subprocess, sys, tarfile
from pathlib import Path

out = Path(os.environ["OUT"])
pack = Path("runs/pack")
if sys.argv[1:] == ["rest"]:
    parts = sorted(pack.glob("part.*"))[4:]
    for p in parts[:8]:
        shutil.copy(p, out / p.name)
    print("rest:", [p.name for p in parts])
    sys.exit()
cells = Path("runs/study/cells")
d = json.loads(Path("results/final_recipes.json").read_text())
first, twins, others = [], [], []
for m, e in d["models"].items():
    for x in e.get("seeds", []):
        (first if x["seed"] == d["seeds"][0] else others).append(x["cell"])
    # the twin: the chosen candidate's seed-0 screening run
    cand = e.get("candidate")
    for name in os.listdir(cells) if cells.exists() else []:
        if f"-screen-{cand}-" in name and name.startswith(m + "-") and name.endswith("-s0"):
            twins.append(name)
big = lambda n: n.startswith("resnet-")  # 45 MB a file: seed 0 and its twin only
others = [n for n in others if not big(n)]
order = first + twins + others
files = [Path("results"), pack / "gpu.txt", *sorted(pack.glob("w*.log"))]
done = set()
for n in order:
    r = cells / n
    if r.exists() and n not in done:
        done.add(n)
        files += [f for f in sorted(r.iterdir()) if f.name != "last.pt"]
# unfinished small runs: their last.pt to resume here
for r in sorted(cells.iterdir()) if cells.exists() else []:
    if not (r / "result.json").exists() and (r / "last.pt").exists() and (r / "last.pt").stat().st_size < 40 * 2**20:
        files += sorted(r.iterdir())
tar = pack / "all.tar"
with tarfile.open(tar, "w") as t:
    for f in files:
        if f.exists():
            t.add(f)
print("packed", tar.stat().st_size // 2**20, "MiB:", order)
subprocess.run(["split", "-b", "15M", "-d", "-a", "1", str(tar), str(pack / "part.")], check=True)
parts = sorted(pack.glob("part.*"))
for p in parts[:4]:
    shutil.copy(p, out / p.name)
shutil.copy(pack / "gpu.txt", out / "gpu.txt")
print("parts", len(parts), "sent", [p.name for p in parts[:4]])
