#!/bin/bash
# Issue #25's recipes stage on a lent GPU: N shard workers of `python study.py --only recipes`
# on one card (claims keep a cell from running twice), then the results packed for the way back.
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
T0=$(date +%s)
mkdir -p /tmp/data/MNIST/raw runs/pack
for f in .gpu/*.gz; do gunzip -c "$f" > /tmp/data/MNIST/raw/$(basename "$f" .gz); done
export DATA_DIR=/tmp/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee runs/pack/gpu.txt
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a runs/pack/gpu.txt
# MPS lets the workers' small kernels run side by side; without it they take turns (still works).
if nvidia-cuda-mps-control -d 2>>runs/pack/gpu.txt; then
  if timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then echo "MPS on" | tee -a runs/pack/gpu.txt
  else echo quit | nvidia-cuda-mps-control; echo "MPS off (client failed)" | tee -a runs/pack/gpu.txt; fi
else echo "MPS off (no daemon)" | tee -a runs/pack/gpu.txt; fi
N=${N:-26}
LEFT=$(( ${BUDGET:-500} - ($(date +%s) - T0) ))
echo "workers $N, $LEFT s" | tee -a runs/pack/gpu.txt
PIDS=()
for i in $(seq 0 $((N-1))); do
  MNIST_STUDY_LOCK=/tmp/w$i.lock timeout -s TERM $LEFT python3 study.py --only recipes --shard $i/$N > runs/pack/w$i.log 2>&1 &
  PIDS+=($!)
done
( while sleep 30; do echo "t=$(( $(date +%s) - T0 ))s results $(ls results/cells | wc -l) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"; done ) &
MON=$!
wait "${PIDS[@]}"
kill $MON
echo "workers done at $(( $(date +%s) - T0 )) s" | tee -a runs/pack/gpu.txt
tail -3 runs/pack/w0.log
python3 .gpu/pack.py
python3 - <<'PY'
import json, glob
for f in sorted(glob.glob("results/cells/*.json")):
    r = json.load(open(f))
    if "H200" in r.get("hardware", "") or "NVIDIA" in r.get("hardware", ""):
        print(r["name"], r["status"], round(r["seconds"]), "val", r["best"] and r["best"]["val_acc"], "test", (r["test"] or {}).get("acc"))
d = json.load(open("results/final_recipes.json"))
for m, e in d["models"].items():
    print(m, e["candidate"], {k: round(sum(v)/len(v), 5) for k, v in e["val"].items() if v}, e.get("test_mean"))
print("ensemble", (d.get("ensemble") or {}).get("test_acc"))
PY
