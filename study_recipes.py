"""Issue #25's record, results/final_recipes.json: each model's candidate recipes on validation,
the chosen recipe's refits on test (per seed, with its file's sha256), the fixed ensemble, and
where each weights/<model>.pt comes from against the rule "seed 0 of the recipe".
Reads the cells and choices of study_cells.py; study.py calls write_final_recipes after the
recipes stage and after shipping (stage evaluate). Imports study_cells, runs, numpy, and models and
test_model to record an ensemble member's test-set softmax.
"""

import io
import json
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from runs import resolve_device, sha256, write_bytes_atomic, write_json
from study_cells import (
    RECIPE_ENSEMBLE, RECIPE_MODELS, RECIPE_SEEDS, SCREEN_SEEDS, Cell, Settings, again_cells, candidate_cells,
    candidate_evidence, final_choice, load_result, recipe_choice, recipe_refit_cells, rel, train_config,
)

# {(model, recipe): why} not shipped: decided after e60's refits were scored and its seed 0 failed the
# handed 8x8 thumbnails of tests/test_user_images.py (benchmarks/results/user_images_recipes.md).
RECIPE_NOT_SHIPPED = {("convnet", "e60"): "fails the 8×8-thumbnail bar of `tests/test_user_images.py` (the handed user "
                                          "images), which the final-run file passes"}


def recipes_ensemble_test(s: Settings, members: list[dict], probs: list, before: dict | None) -> dict:
    """{"members": [{"checkpoint", "sha256"}], "test_acc", "scored_from"}: the accuracy of the members'
    mean softmax (probs: each member's member_probs, (10,000, 10)) on the test set, scored once; a
    record `before` with the same members (checkpoint, sha256) and a score is returned instead."""
    if before and before.get("members") == members and before.get("test_acc") is not None:
        return before
    y = s.mnist().y_test.numpy()
    return {"members": members, "test_acc": float((np.mean(probs, axis=0).argmax(1) == y).mean()),
            "scored_from": "results/member_probs"}


def member_probs(s: Settings, member: dict) -> tuple[np.ndarray | None, dict | None]:
    """(test-set softmax (10,000, 10) fp32 of test_model.predict_proba, its pass record {"cell",
    "sha256", "source", "recorded_at"}) of an ensemble member {"cell", "checkpoint", "sha256"}: read from
    results/member_probs/<cell>.npz when recorded for that sha256; else computed and recorded from
    the member's file if it is here, or from a shipped file under weights/ whose card's made_from
    names that sha256 (calibrate.py adds fields to the file, never changes its weights); else
    (None, None). Recorded so that the ensemble can be scored after runs/ is gone (it is not
    committed). Each record is one pass over the test set, logged in passes.jsonl beside it
    (member_passes); no accuracy is computed here."""
    sha = member.get("sha256")
    if not sha:
        return None, None
    path = s.results / "member_probs" / f"{member['cell']}.npz"
    if path.exists():
        with np.load(path) as z:
            if str(z["sha256"]) == sha:  # the pass that made it (recorded_at: none in the first record)
                when = {"recorded_at": str(z["recorded_at"])} if "recorded_at" in z.files else {}
                return z["probs"], {"cell": member["cell"], "sha256": sha, "source": str(z["source"]), **when}
    src = s.root / member["checkpoint"] if member.get("checkpoint") else None
    if not (src and src.exists() and sha256(src) == sha):
        cards = sorted((s.root / "weights").rglob("*.json"))
        src = next((c.with_suffix(".pt") for c in cards if c.with_suffix(".pt").exists()
                    and (json.loads(c.read_text()).get("made_from") or {}).get("sha256") == sha), None)
    if src is None:
        return None, None
    from models import load_checkpoint
    from test_model import predict_proba
    model, _ = load_checkpoint(src, resolve_device("auto"))
    probs = predict_proba(model, s.mnist().x_test)
    done = {"cell": member["cell"], "sha256": sha, "source": rel(s, src),
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
    buf = io.BytesIO()
    np.savez_compressed(buf, probs=probs, **{k: v for k, v in done.items() if k != "cell"})
    write_bytes_atomic(path, buf.getvalue())
    with open(path.parent / "passes.jsonl", "a") as f:  # append-only: a pass stays counted whoever rewrites the record
        f.write(json.dumps(done) + "\n")
    return probs, done


def member_passes(s: Settings) -> list[dict]:
    """Every test-set pass member_probs made ({"cell", "sha256", "source", "recorded_at"}), in order:
    results/member_probs/passes.jsonl, appended to by each pass and never rewritten."""
    log = s.results / "member_probs" / "passes.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def run_file(s: Settings, name: str) -> Path | None:
    """A cell's checkpoint here (runs/study/cells or runs/study/final), None if not (runs/ is not committed)."""
    return next((p for p in (s.runs / "cells" / name / "best.pt", s.runs / "final" / name / "best.pt") if p.exists()), None)


def file_record(s: Settings, name: str, made: dict) -> dict:
    """{"checkpoint", "sha256"} of cell `name`'s file: measured here when the file is on this
    machine, else as recorded when it was made (`made`: {cell: earlier record}), else None."""
    ckpt = run_file(s, name)
    if ckpt:
        return {"checkpoint": rel(s, ckpt), "sha256": sha256(ckpt)}
    return {"checkpoint": made.get(name, {}).get("checkpoint"), "sha256": made.get(name, {}).get("sha256")}


def recipe_entry(s: Settings, m: str, made: dict) -> dict:
    """final_recipes.json's entry for model m: its candidates' validation evidence, test scores seen
    and cost, the chosen recipe (full TrainConfig, seed aside), each finished seed's test accuracy
    and file (file_record; a seed in RECIPE_AGAIN keeps its first score, its latest rerun under "again",
    earlier reruns under "reruns", "rerun_pending": the next rerun's cell while one is still to run),
    mean/std once every seed is done. made: {cell: earlier record} for files not on this machine."""
    choice = recipe_choice(s, m)
    (val, planned), (val_last, _) = candidate_evidence(s, m), candidate_evidence(s, m, last=True)
    runs = {k: [r for c in cells if isinstance(c, Cell) and (r := load_result(s, c.name))]
            for k, cells in candidate_cells(s, m).items()}
    entry = {"candidate": choice and choice["candidate"], "val": val, "planned": planned,
             "val_mean": {k: statistics.mean(v) for k, v in val.items() if v},
             # at each run's last epoch, which a refit keeps: a check that the best epoch did not flatter one candidate
             "val_last_mean": {k: statistics.mean(v) for k, v in val_last.items() if v},
             # the test scores of the candidates' own runs (final stage, 55,000 images), seen before this choice;
             # screening runs have none
             "test_seen": {k: [r["test"]["acc"] for r in rs if r.get("test")] for k, rs in runs.items()},
             "minutes": {k: statistics.mean(r["seconds"] for r in rs) / 60 for k, rs in runs.items() if rs},
             "hardware": {k: sorted({r["hardware"] for r in rs}) for k, rs in runs.items()}, "seeds": []}
    refits = recipe_refit_cells(s, m, choice) if choice else []
    if refits:  # the recipe as planned; the first finished refit's full config replaces it
        entry["recipe"] = {k: v for k, v in asdict(train_config(s, refits[0])).items() if k not in ("seed", "run_name", "out", "data_dir")}
    for c in refits:
        r = load_result(s, c.name)
        if r is None or not r.get("test"):
            continue
        entry["recipe"] = {k: v for k, v in r["config"].items() if k not in ("seed", "run_name", "out", "data_dir")}
        seed = {"seed": c.tags["seed"], "cell": c.name, "test_acc": r["test"]["acc"], "seconds": r["seconds"],
                "hardware": r["hardware"], **file_record(s, c.name, made)}
        reruns = [{"cell": a.name, "test_acc": ra["test"]["acc"], "seconds": ra["seconds"], "hardware": ra["hardware"],
                   **file_record(s, a.name, made)}
                  for a in again_cells(c) if (ra := load_result(s, a.name)) and ra.get("test")]  # diverged: no file worth using
        if reruns:  # the latest rerun's file is the seed's file; earlier reruns (their files lost too) stay listed
            seed["again"] = reruns[-1]
            if len(reruns) > 1:
                seed["reruns"] = reruns[:-1]
        if pending := [a.name for a in again_cells(c) if load_result(s, a.name) is None]:
            seed["rerun_pending"] = pending[0]  # its file is to come: no ensemble is scored with the one before
        entry["seeds"].append(seed)
    accs = [x["test_acc"] for x in entry["seeds"]]
    entry["done"] = len(accs) == len(s.seeds(RECIPE_SEEDS))
    if entry["done"]:
        entry.update(test_mean=statistics.mean(accs), test_std=statistics.stdev(accs) if len(accs) > 1 else 0.0)
    return entry


def earlier_recipes(prev: dict, candidate: str | None) -> list[dict]:
    """Earlier chosen recipes with refits (prev: the model's entry as recorded before), kept when
    validation later prefers another: their test scores were seen. The current one left out."""
    out = {x["candidate"]: x for x in prev.get("earlier", [])}
    if prev.get("candidate") and prev.get("seeds"):
        seeds = [{k: v for k, v in x.items() if k != "rerun_pending"} for x in prev["seeds"]]  # no longer to run
        out[prev["candidate"]] = {**{k: prev.get(k) for k in ("candidate", "recipe", "done", "test_mean", "test_std")}, "seeds": seeds}
    return [x for k, x in out.items() if k != candidate]


def recipe_source(s: Settings, m: str) -> dict | None:
    """Issue #25's rule ("the shipped weights/<model>.pt is seed 0 of that recipe, decided before any
    test score is seen"): weights/<m>.pt is seed 0 of the model's chosen recipe once every seed is done,
    unless RECIPE_NOT_SHIPPED names the recipe. Returns {"name", "checkpoint", "sha256", "candidate"}
    from results/final_recipes.json (a seed trained again gives its rerun's file), else None."""
    path = s.results / "final_recipes.json"
    d = json.loads(path.read_text()) if path.exists() else {}
    e = d.get("models", {}).get(m)
    if not e or not e.get("done") or (m, e["candidate"]) in RECIPE_NOT_SHIPPED:
        return None
    seed = next(x for x in e["seeds"] if x["seed"] == d["seeds"][0])
    src = seed.get("again") or seed
    return {"name": src["cell"], "checkpoint": src["checkpoint"], "sha256": src["sha256"], "candidate": e["candidate"]}


def made_from(card: Path, src: dict) -> None:
    """Record in a shipped recipe file's card the seed checkpoint it was copied from and its sha256
    (results/final_recipes.json's): calibrate.py changes the shipped bytes, not the weights."""
    meta = json.loads(card.read_text())
    if meta.get("made_from") != (want := {"cell": src["name"], "checkpoint": src["checkpoint"], "sha256": src["sha256"]}):
        write_json(card, {**meta, "made_from": want}, indent=2, newline=False)


def twin_file(s: Settings, m: str) -> Path | None:
    """The held-out twin of weights/<m>.pt when that file is seed 0 of m's recipe (recipe_source): the
    chosen candidate's own seed-0 run, with the same settings but the validation split held out
    (calibrate.py --twin); None when there is none, or its file is not on this machine or not
    finished (no result.json beside it: a run in progress has a best.pt already)."""
    src = recipe_source(s, m) if m in RECIPE_MODELS else None
    cells = candidate_cells(s, m).get(src["candidate"], []) if src else []
    seed0 = [c for c in cells if isinstance(c, Cell) and c.tags["seed"] == s.seeds(RECIPE_SEEDS)[0]]
    best = run_file(s, seed0[0].name) if seed0 else None
    return best if best and (best.parent / "result.json").exists() else None


def shipped_record(s: Settings, m: str, entry: dict) -> dict | None:
    """Where weights/<m>.pt comes from against issue #25's rule (seed 0 of the recipe): {"file",
    "sha256" (the shipped bytes: calibration included), "run", "made_from" (the card's: the seed
    checkpoint and its sha256), "seed_0", and where it is not seed 0 of a finished recipe, "why_not"
    and "decided_after_test"}; None when nothing is shipped."""
    path = s.root / "weights" / f"{m}.pt"
    card = s.root / "weights" / f"{m}.json"
    if not (path.exists() and card.exists()):
        return None
    meta = json.loads(card.read_text())
    seed0 = next((x.get("again") or x for x in entry["seeds"] if x["seed"] == s.seeds(RECIPE_SEEDS)[0]), None)
    made = meta.get("made_from")
    out = {"file": rel(s, path), "sha256": sha256(path), "run": meta["train_config"].get("run_name"),
           "made_from": made, "seed_0": bool(seed0 and made and made["sha256"] == seed0["sha256"])}
    if entry.get("done") and not out["seed_0"]:
        out["why_not"] = RECIPE_NOT_SHIPPED.get((m, entry["candidate"]), "not shipped yet (python study.py --only evaluate)")
        out["decided_after_test"] = (m, entry["candidate"]) in RECIPE_NOT_SHIPPED  # its refits' scores were seen
    return out


def write_final_recipes(s: Settings, score: bool = True) -> Path:
    """results/final_recipes.json: per model of RECIPE_MODELS its recipe_entry and earlier_recipes;
    the RECIPE_ENSEMBLE's members (each seed's file: its latest rerun's for a seed in RECIPE_AGAIN)
    and test accuracy, scored once, from the members' recorded softmax (member_probs), when every
    member has one and no rerun is pending; a member's softmax is recorded once its model's seeds
    are done, when its file is here and no rerun of it is pending. The record of an ensemble scored
    before is kept while its members are the same (checkpoint, sha256). Every ensemble ever scored
    stays in "ensembles_scored", every recorded softmax in "member_passes" (member_passes' log; the
    count of test-set use reads both); "ensemble_waits_for": the
    members still without one; per model, "shipped": shipped_record. score=False (after shipping):
    never scores the ensemble (members' softmax is still recorded, and counted); a record whose
    members changed is dropped. Accuracies are fractions."""
    path = s.results / "final_recipes.json"
    before = json.loads(path.read_text()) if path.exists() else {}
    seeds = [x for e in before.get("models", {}).values() for x in e.get("seeds", [])]
    made = {y["cell"]: y for x in seeds for y in (x, *x.get("reruns", []), x.get("again")) if y}  # cell -> its record
    out = {"seeds": list(s.seeds(RECIPE_SEEDS)), "screen_seeds": list(s.seeds(SCREEN_SEEDS)), "models": {},
           "rule": "the candidate with the best mean validation accuracy is refit on all 60,000 training images "
                   "for its fixed epochs (the last epoch kept); each seed scored once on test", "ensemble": None}
    members = []  # the seed files of RECIPE_ENSEMBLE's recipes: {"cell", "checkpoint", "sha256", "rerun_pending"}
    for m in (m for m in RECIPE_MODELS if m in s.models):
        if final_choice(s, m) is None:
            continue
        out["models"][m] = entry = recipe_entry(s, m, made)
        entry["earlier"] = earlier_recipes(before.get("models", {}).get(m, {}), entry["candidate"])
        entry["shipped"] = shipped_record(s, m, entry)
        if m in RECIPE_ENSEMBLE and entry["done"]:
            members += [{**{k: x.get("again", x)[k] for k in ("cell", "checkpoint", "sha256")},
                         "rerun_pending": x.get("rerun_pending")} for x in entry["seeds"]]
    # each member's softmax recorded as soon as its model's seeds are done and its file is here (not for a
    # file whose rerun is pending): every record is one test-set pass, logged by member_probs
    got = [(None, None) if x["rerun_pending"] else member_probs(s, x) for x in members]
    passes = member_passes(s)
    scored = list(before.get("ensembles_scored", []))
    if all(out["models"].get(m, {}).get("done") for m in RECIPE_ENSEMBLE):
        old, record = before.get("ensemble") or {}, [{k: x[k] for k in ("checkpoint", "sha256")} for x in members]
        probs, pending = [p for p, _ in got], any(x["rerun_pending"] for x in members)  # pending: members to change
        if all(p is not None for p in probs) and (score or old.get("members") == record):
            seen = next((e for e in reversed(scored) if e["members"] == record), old)  # never a second scoring
            out["ensemble"] = {"recipes": list(RECIPE_ENSEMBLE), **recipes_ensemble_test(s, record, probs, seen)}
        elif old.get("members") == record and not pending:
            out["ensemble"] = old  # scored on the machine that had the files
        if not out["ensemble"] and (waits := [x["rerun_pending"] or x["cell"] for x, p in zip(members, probs) if p is None]):
            out["ensemble_waits_for"] = waits  # the rerun to finish, or the file whose softmax is to be recorded
    # Every ensemble ever scored, kept when the recipes change (a new candidate wins, a seed is rerun):
    # a test evaluation once made is never dropped from the count.
    if out["ensemble"] and out["ensemble"] not in scored:
        scored.append(out["ensemble"])
    out["ensembles_scored"], out["member_passes"] = scored, passes
    if scored or passes:  # read by the report's count of test-set use (report_facts.test_use)
        files = [e for e in scored if "scored_from" not in e]  # scored by passing each member's file (before member_probs)
        k = len(scored) - len(files)
        out["why"] = (f"model passes: {sum(len(e['members']) for e in files)} for {len(files)} recipe ensemble{'s' * (len(files) != 1)} "
                      f"scored from their files, {len(passes)} recording a member's test-set softmax (results/member_probs/)"
                      + (f", from which {k} {'was' if k == 1 else 'were'} scored" if k else "") + "; each ensemble scored once by study.py --only recipes")
        out["commands"] = [{"command": "python study.py, stages recipes and evaluate (members' softmax, the ensemble's mean)",
                            "models_scored": sum(len(e["members"]) for e in files) + len(passes)}]
    write_json(path, out)
    return path
