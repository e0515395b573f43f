"""The benchmark scripts' own logic (their timings are only meaningful in a full run;
CI runs `benchmarks/speed.py --quick` end to end)."""

import json
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402
import trials  # noqa: E402


def test_trials_overrides_parse_json_values_and_reject_unknown_fields():
    got = trials.overrides(["epochs=2.5", "model=quicknet", 'model_config={"width": 24}', "augment=false"])
    assert got == {"epochs": 2.5, "model": "quicknet", "model_config": {"width": 24}, "augment": False}
    with pytest.raises(SystemExit, match="key=value"):
        trials.overrides(["epochz=3"])
    with pytest.raises(SystemExit, match="key=value"):
        trials.overrides(["epochs"])


def test_trials_table_gives_medians_per_setting_and_counts_misses(tmp_path, capsys):
    log = tmp_path / "trials.jsonl"
    rows = [({"lr": 0.2}, 0, 5.0, 20.0, 0.9955), ({"lr": 0.2}, 1, 7.0, 24.0, 0.9951), ({"lr": 0.2}, 2, 6.0, 30.0, 0.9952),
            ({"lr": 0.4}, 0, 4.0, None, 0.9940), ({"lr": 0.4}, 1, 4.5, 19.0, 0.9950)]
    log.write_text("".join(json.dumps({"set": s, "seed": seed, "reached": {"0.990": a, "0.995": b}, "final_test_acc": f}) + "\n"
                           for s, seed, a, b, f in rows))
    trials.show(log)
    out = capsys.readouterr().out.splitlines()
    assert "| lr=0.2 | 3 | 6.0 | 24.0 | 0.9955 / 0.9951 / 0.9952 |" in out
    assert "| lr=0.4 | 2 | 4.2 | 1/2 reached | 0.9940 / 0.9950 |" in out  # a miss is never hidden in a median


def test_only_one_benchmark_runs_at_a_time(tmp_path):
    lock = tmp_path / "benchmark.lock"
    held = speed.exclusive("first", lock)
    try:
        with pytest.raises(SystemExit, match="another benchmark or study is running"):
            speed.exclusive("second", lock)
    finally:
        held.close()
    speed.exclusive("third", lock).close()  # released with its file


def test_gpu_check_dry_run_writes_every_part(real_data_dir, tmp_path, monkeypatch):
    """The GPU machine's one prepared run, on CPU with tiny budgets: each part runs and lands in the JSON."""
    import gpu_check
    monkeypatch.setenv("DATA_DIR", str(real_data_dir))
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "speed-cpu-dry-run.json").read_text())
    assert out["dry_run"] and out["tests"]["rc"] == 0 and "passed" in out["tests"]["summary"]
    assert len(out["time_to_99_5_s_per_seed"]) == 1 and "time_to_99_0_s" in out
    assert out["resnet18_epoch_s"] > 0 and out["resnet18_ceiling_epoch_s"] > 0 and out["matmul_tflops"] > 0
    assert sorted(out["resnet18_lr_grid"], key=float) == ["0.0001", "0.001", "0.01", "0.1"]
    assert all(0 <= c["val_acc"] <= 1 and 0 <= c["test_acc"] <= 1 for c in out["resnet18_lr_grid"].values())
    assert "passed" in (tmp_path / "gpu_check_tests.txt").read_text()


def test_readme_speed_table_has_one_column_per_class_and_says_what_was_not_measured(tmp_path):
    run = {"quick": False, "machine_class": "bf16", "startup_s": 2.6, "time_to_99_0_s": 3.4, "time_to_99_5_s": 13.0,
           "time_to_99_5_s_per_seed": [13.0, None, 12.0], "speedup_vs_pytorch_examples": 40.0, "speedup_vs_keras": 14.0,
           "resnet18_epoch_s": 139.0, "resnet18_epoch_vs_ceiling": 6.7, "resnet18_precision": "bf16",
           "augment_ms_per_batch_256": {"shift": 0.4},
           "machine": {"cpu": "Test CPU", "threads": 2, "cpu_flags": ["avx2"], "date": "2026-11-27T08:00:00"}}
    (tmp_path / "speed-bf16.json").write_text(json.dumps(run))
    (tmp_path / "speed-old.json").write_text(json.dumps({**run, "machine_class": None, "startup_s": 99}))  # before classes: ignored
    rows = {line.split(" | ")[0].lstrip("| "): line for line in speed.readme_block(tmp_path) if line.startswith("| ")}
    assert "2.60 s (target <= 3 s: met)" in rows["`python train.py` start-up to the first step"]
    assert "3.4 s (target <= 3 s: missed)" in rows["time to 99.0%, median of 3 seeds"]
    assert "13.0 / never / 12.0 s (target: every seed, <= 15 s: missed)" in rows["time to 99.5%, each seed"]
    assert all(line.rstrip(" |").endswith("not measured (no such machine here yet)") for name, line in rows.items() if name != "")


def test_defaults_records_merge_by_model_seed_and_machine_and_fill_the_docs_table(tmp_path):
    """benchmarks/defaults.py: a new run replaces the record of the same (model, seed, machine) only; the
    table gives each model and machine its mean and lowest test accuracy and slowest wall time."""
    import defaults
    rec = lambda seed, acc, machine="cpu A", wall=100.0: {  # noqa: E731
        "model": "resnet", "seed": seed, "optimizer": "adam", "lr": 0.001, "epochs": 1, "batch_size": 256,
        "wall_seconds": wall, "train_seconds": wall - 10, "val_acc": acc, "test_acc": acc, "test_f1": acc,
        "machine": machine, "threads": 2, "code_version": "x", "date": "2026-12-06"}
    path = tmp_path / "defaults.json"
    path.write_text(json.dumps({"runs": [rec(0, 0.99), rec(1, 0.98), rec(0, 0.97, "cpu B")]}))
    merged = defaults.merge([rec(1, 0.992, wall=180.0)], path)
    assert [(r["seed"], r["test_acc"], r["machine"]) for r in merged] == [(0, 0.99, "cpu A"), (0, 0.97, "cpu B"), (1, 0.992, "cpu A")]
    rows = defaults.table(merged).splitlines()[2:]
    assert rows == ["| resnet | adam | 0.001 | 1 | 2 | 99.10, 99.00 | 3.0 min | cpu A |",
                    "| resnet | adam | 0.001 | 1 | 1 | 97.00, 97.00 | 1.7 min | cpu B |"]
    doc = tmp_path / "training.md"
    doc.write_text(f"before\n{defaults.TABLE_BEGIN}\nold\n{defaults.TABLE_END}\nafter\n")
    path.write_text(json.dumps({"runs": merged}))
    assert defaults.update_docs(doc, path)
    assert doc.read_text() == f"before\n{defaults.TABLE_BEGIN}\n{defaults.table(merged)}\n{defaults.TABLE_END}\nafter\n"
    assert not defaults.update_docs(tmp_path / "missing.md", path)
