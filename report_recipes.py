"""report-appendix.md's section "Accuracy by recipe" (issue #25), from results/final_recipes.json:
the candidates on validation, the chosen recipes' refits on test, the seeds trained again and the
fixed ensemble. Imported by report_cards.py only; reads report_facts.py."""

import statistics

import study
from report_facts import (
    RECIPE_TARGETS, Facts, NAMES, and_join, change_words, changes_words, mean_std, member_seeds, pct, read_json, run_words,
    scored_ensembles
)


def candidate_words(model: str, candidate: str) -> str:
    if candidate == "final":
        return "the final stage's recipe"
    if candidate in study.ATTEMPTS.get(model, {}):
        return change_words(model, candidate)
    return changes_words(study.RECIPE_CANDIDATES.get(model, {}).get(candidate, {})) or candidate


def appendix_recipes(f: Facts) -> list[str]:
    """Issue #25 from results/final_recipes.json: the candidates on validation, the chosen recipe's
    refits on test (per seed, mean ± std, against RECIPE_TARGETS) and the fixed ensemble."""
    d = read_json(f.s.results / "final_recipes.json")
    lines = ["## Accuracy by recipe", ""]
    if not d or not d.get("models"):
        return lines + ["Not run yet (`python study.py --only recipes`).", ""]
    lines += [f"A model's accuracy as the mean of a fixed recipe's seeds, not its luckiest run. Candidates are compared on "
              f"validation only (new ones on seeds {', '.join(map(str, d['screen_seeds']))}, never scored on test); {d['rule']}, "
              f"seeds {', '.join(map(str, d['seeds']))}. The new candidates were designed after the final stage's test scores "
              "had missed the targets; the choice among them used validation alone. It takes the best mean even when the gap "
              "is inside the noise (a few validation images), and an exact tie goes to the candidate listed first: the recipe is fixed either way, and what the report gives is "
              "its refits' test mean, so a lucky choice cannot pick test images. The targets are issue #25's, the best "
              "published results that do not select on the test set (`../shared/BENCHMARKS.md`), stricter than the "
              "first targets above.", "",
              "Test % here is each candidate's own runs (55,000 training images, the final stage's), scored at their validation-best epoch and "
              "seen before this choice; screening runs have none. Minutes compare only between runs on the same machine.", "",
              "| model | candidate | change to the final recipe | runs done | val % (mean ± std) | test % (mean ± std) | minutes a run | chosen |",
              "|---|---|---|---|---|---|---|---|"]
    for m, e in d["models"].items():
        for cand, vals in e["val"].items():
            chosen = "yes" if cand == e["candidate"] else "" if e["candidate"] else "(waits for every run)"
            seen = e.get("test_seen", {}).get(cand)
            minutes = e.get("minutes", {}).get(cand)
            where = ", ".join(h.split(" (")[0] for h in e.get("hardware", {}).get(cand, []))
            lines.append(f"| {NAMES.get(m, m)} | `{cand}` | {candidate_words(m, cand)} | {len(vals)} of {e['planned'][cand]} | "
                         f"{mean_std(vals) if vals else '–'} | {mean_std(seen) if seen else '–'} | "
                         f"{f'{minutes:.1f} ({where})' if minutes else '–'} | {chosen} |")
    bases = {m: r for m in d["models"] for r in f.finals if r["tags"]["model"] == m and not r["tags"].get("attempt")}
    lines += ["", "Each model's final recipe (`final`), which the changes above modify (the others as in its runs): "
              + "; ".join(f"{run_words(r['config'], seed=False)}, batch {r['config']['batch_size']}" for r in bases.values()) + "."]
    lines += ["", "| model | recipe | target % | test % per seed | test % (mean ± std) | met | minutes a seed: mean (range; machine) |",
              "|---|---|---|---|---|---|---|"]
    rows = [(m, x, " (an earlier choice)") for m, e in d["models"].items() for x in e.get("earlier", [])]
    for m, e, label in rows + [(m, e, "") for m, e in d["models"].items()]:
        if not e["candidate"]:
            continue
        accs = [x["test_acc"] for x in e["seeds"]]
        target = RECIPE_TARGETS.get(m)
        met = ("yes" if e["test_mean"] >= target else f"no: {round((target - e['test_mean']) * f.n_test, 1)} test images short") \
            if e.get("done") and target else f"{len(accs)} of {len(d['seeds'])} seeds done"
        sec = [x["seconds"] / 60 for x in e["seeds"]]
        minutes = (f"{statistics.mean(sec):.1f} ({min(sec):.1f}–{max(sec):.1f}; "
                   f"{', '.join(sorted({x['hardware'].split(' (')[0] for x in e['seeds']}))})") if accs else "–"
        lines.append(f"| {NAMES.get(m, m)} | `{e['candidate']}`{label} | {pct(target) if target else '–'} | "
                     f"{', '.join(pct(a) for a in accs) or '–'} | {mean_std(accs) if e.get('done') else '–'} | {met} | {minutes} |")
    lines += ["", "Minutes are wall-clock, on machines of a few cores (their thread counts in the run list) that other work, such as the test suite, "
              "may have shared: a wide range on one machine points to that load rather than to the recipe, whose steps are the same for every seed."]
    every = [(m, e) for m, e, _ in rows] + list(d["models"].items())  # the earlier recipes, then the current ones
    lost = {(NAMES.get(m, m), e.get("candidate"), x["seed"]): x.get("hardware", "") for m, e in every
            for x in e["seeds"] if not x.get("again", x).get("checkpoint")}
    said = lambda ks: ", ".join(f"{n} `{c}` seed {s}" for n, c, s in ks)  # noqa: E731
    if cpu := [k for k, hw in lost.items() if not hw.startswith("NVIDIA")]:
        lines += ["", f"Recorded without its file ({said(cpu)}): trained in an earlier session on another machine, and "
                      "`runs/` is not committed; its test score counts, but the ensemble and shipping need the file again."]
    if gpu := [k for k, hw in lost.items() if hw.startswith("NVIDIA")]:
        lines += ["", f"Recorded without file or sha256 ({said(gpu)}): trained on a lent "
                      f"`{and_join(sorted({lost[k].split(' (')[0] for k in gpu}))}` that did not return these files "
                      "(a call brings back little, and they are large); their test scores count, but an ensemble needs the files."]
    if again := [(m, e.get("candidate"), x) for m, e in every for x in e["seeds"] if x.get("again")]:
        lines += ["", "These seeds were trained again (same settings and seed) because their file is gone (`runs/` is not committed): each rerun "
                      "scored once on test, counted in [Test-set use](#test-set-use); the mean keeps the first run's score, so a rerun is no second draw. "
                      "The latest rerun's file stands for the seed in the ensemble, whose members' test-set softmax is now kept in `results/member_probs/`: "
                      "a file lost after that costs no rerun.", "", "| model | recipe | seed | first run: test % (machine) | reruns: test % (machine) |", "|---|---|---|---|---|"]
        lines += [f"| {NAMES.get(m, m)} | `{c}` | {x['seed']} | " + " | ".join("; ".join(f"{pct(r['test_acc'])} ({r['hardware'].split(' (')[0]})"
                  for r in rs) for rs in ([x], [*x.get("reruns", []), x["again"]])) + " |" for m, c, x in again]
    return lines + appendix_recipe_ensembles(f, d) + [""]


def appendix_recipe_ensembles(f: Facts, d: dict) -> list[str]:
    """The recipe ensembles of final_recipes.json (d): the last one, every one scored, what shipping
    seed 0 changes in a file, and the membership against the one validation comparison of ensembles."""
    lines = []
    ens, last = d.get("ensemble"), (d.get("ensembles_scored") or [None])[-1]
    members = " and ".join(NAMES.get(m, m) for m in study.RECIPE_ENSEMBLE)
    scored = scored_ensembles(d)
    rule = f"The ensemble's rule, fixed before any of these test scores: every seed of the {members} recipes, softmax averaged"
    current = ", ".join(f"{NAMES.get(m, m)} `{d['models'][m]['candidate']}`" for m in study.RECIPE_ENSEMBLE if m in d["models"])
    waits, n = d.get("ensemble_waits_for") or [], sum(len(d["models"][m]["seeds"]) for m in study.RECIPE_ENSEMBLE if m in d["models"])
    if len(scored) > 1:  # which ConvNet recipe each scored ensemble held
        lines += ["", f"{rule}. It was scored {len(scored)} times, in order: "
                  + ", then ".join(f"{pct(e['test_acc'])}%" + (f" ({held} seeds)" if held else "") for e, held in scored)
                  + f" (target {pct(RECIPE_TARGETS['ensemble'])}%): the members changed after the first score was seen, with the "
                    "recipes (each new candidate came after the earlier recipe's refit scores) or a seed's file (trained again)."
                  + (f" With the current recipes ({current}) it is not scored: it waits for {len(waits)} of {n} members (a rerun to finish, "
                     "then its test-set softmax recorded in `results/member_probs/`)." if waits and not ens else "")]
    else:
        lines += ["", f"{rule}: " + (f"{pct(ens['test_acc'])}% on test (target {pct(RECIPE_TARGETS['ensemble'])}%)." if ens else
                                     f"with the earlier choices' seeds {pct(last['test_acc'])}% on test (target "
                                     f"{pct(RECIPE_TARGETS['ensemble'])}%); with the current recipes it waits for every member."
                                     if last else "not scored yet (it waits for every member).")]
    seed0 = [NAMES.get(m, m) for m, e in d["models"].items() if (e.get("shipped") or {}).get("seed_0")]
    lines += ["", f"Seed 0's file ships as `weights/<model>.pt` ({and_join(seed0) or 'none yet'}) with its calibration added, so its "
                  "sha256 differs from the seed's checkpoint's (`weights/<model>.json`'s `made_from` records that checkpoint and its sha256). A refit has no held-out digits: "
                  "where its held-out twin's file is here (the same recipe and seed trained without the validation split; "
                  "`calibrate.py --twin`), its temperature and probability threshold are the twin's, else all is fitted in-sample "
                  "(README, calibration); in-sample now: " + (and_join([NAMES.get(m, m) for m in d["models"] if (f.cards.get(m) or {})
                  .get("calibration", {}).get("in_sample") and not f.cards[m]["calibration"].get("twin")]) or "none")
                  + "".join(f"; the {NAMES.get(m, m)}'s twin, `{tw['run']}`, is a second training of that run with the test score "
                            f"off (`runs/` is not committed; not in the run list): validation {pct(tw.get('val_acc'))}% at its best epoch "
                            f"{tw.get('epoch') or 0:g}, the recorded run's {pct(r['best']['val_acc'])}% at {r['best']['epoch']:g}"
                            for m in d["models"] if (tw := ((f.cards.get(m) or {}).get("calibration") or {}).get("twin"))
                            and (r := study.load_result(f.s, tw["run"]))
                            and (tw.get("val_acc"), tw.get("epoch")) != (r["best"]["val_acc"], r["best"]["epoch"]))
                  + ". "
                  "The recipe table's scores are `train.py`'s, from the run's "
                  "own (bf16) evaluation; `test_model.py` scores in fp32, which can move a file by an image."]
    ens = ens or last
    cands = (read_json(f.s.results / "ensembles.json") or {}).get("candidates", {})
    if ens and "convnets" in cands and "cnns" in cands:
        cnn = d["models"].get("convnet", {})
        lines += ["", "Its membership was fixed without consulting the one validation comparison of ensembles there is (the "
                      f"final runs', [Ensembles](#ensembles)): there the ConvNets alone reached {pct(cands['convnets']['val_acc'])}% "
                      f"and the set with FastResNet and ResNet-18 {pct(cands['cnns']['val_acc'])}%, so that evidence favoured "
                      "leaving ResNet-18 out. The DNN was left out as the weakest model on validation (Step 5). "
                      + (f"Alone, its ConvNet members scored {', '.join(pct(a) for a in alone)}%: the ensemble "
                         + ("beats the best of them; " if ens["test_acc"] > max(alone) else "is no better than the best of them; ")
                         if (alone := [x["test_acc"] for x in member_seeds(cnn, ens)]) else "")
                      + "an ensemble chosen now would be chosen after seeing this test score, and would be reported as such."]
    return lines
