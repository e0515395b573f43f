"""report-appendix.md (every table, run and screenshot), the model cards weights/<model>.md and
the README's generated block, from the recorded results (Facts). Imported by study_report.py only."""

import inspect
import statistics
from pathlib import Path

import study
import train
from models import build_model, count_params, load_checkpoint
from report_facts import (
    GLOSSARY, TARGET_BEST_SINGLE, and_join, TARGET_ENSEMBLE, Facts, NAMES, OPT_NAMES, ROOT, STEM_TEXT, TARGETS, TRIALS, USER_IMAGE_RESULTS,
    aug_text, change_words, compare, confusion_pairs, fair_runs_done, fair_tables, figure, layer_text, lr_table, mean_std, multiply_adds,
    one_image_note, optim_groups, pct, read_json, reg_groups, results_of, run_words, shown_recipe, test_use, tie_rule_text
)
from report_recipes import appendix_recipes

# -----------------------------------------------------------------------------
# report-appendix.md


def recipe_note(f: Facts, m: str) -> str:
    """A sentence for a file that is not a seed of the model's finished issue-#25 recipe: that recipe's
    test mean ± std and where the report says why; "" otherwise."""
    e = shown_recipe((read_json(f.s.results / "final_recipes.json") or {}).get("models", {}).get(m) or {})
    if not e.get("done") or (f.file_recipe(m) or {}).get("candidate") == e["candidate"]:
        return ""
    return (f"Not a seed of the model's issue-#25 recipe `{e['candidate']}` (all 60,000 images, last epoch), whose "
            f"{len(e['seeds'])} seeds score {mean_std([x['test_acc'] for x in e['seeds']])}% on test; why: report.md, Step 5.")


def appendix_lines(f: Facts) -> list[str]:
    """report-appendix.md, section by section (its contents list first)."""
    contents = ["# Appendix to the report", "",
                "Written with [report.md](report.md) by `python study.py --report-only`. Everything the report summarizes: "
                "every table, the tie rule, the runs made for the accuracy targets, every training run and every screenshot.", "",
                "## Contents", "",
                "- [Test-set use](#test-set-use)", "- [LR sweep in full](#lr-sweep-in-full)", "- [ResNet-18's stem](#resnet-18s-stem)",
                "- [Over- and underfitting](#over--and-underfitting)", "- [Optimizer comparison in full](#optimizer-comparison-in-full)",
                "- [Per-class metrics](#per-class-metrics)", "- [Figures per model](#figures-per-model)",
                "- [Accuracy targets and the runs made for them](#accuracy-targets-and-the-runs-made-for-them)",
                "- [Ensembles](#ensembles)", "- [Accuracy by recipe](#accuracy-by-recipe)", "- [Tie rules](#tie-rules)", "- [Every training run](#every-training-run)",
                "- [Screenshots](#screenshots)", "- [Glossary](#glossary)", ""]
    return (contents + appendix_test_use(f) + appendix_lr(f) + appendix_stem(f) + appendix_fitting(f) + appendix_optimizers(f)
            + appendix_per_class(f) + appendix_figures(f) + appendix_targets(f) + appendix_ensembles(f) + appendix_recipes(f)
            + appendix_tie_rules(f)
            + appendix_runs(f) + appendix_screenshots(f) + GLOSSARY)


def appendix_test_use(f: Facts) -> list[str]:
    """Who scored the test set, and how often."""
    u = test_use(f)
    return ["## Test-set use", "", "| who scored the test set | times |", "|---|---|",
            f"| training runs, once each at the validation-best epoch (refits: the last) (`results/cells/`) | {u['runs']} |",
            "| models scored apart from their training runs: `test_model.py` on files in `weights/`, twice a file with `--tta` "
            "(plain, then test-time augmentation) (the study's evaluation, `results/evaluation.json`"
            + (f", run {u['evaluations']} times" if u["evaluations"] > 1 else "") + ")"
            + (f", {' and '.join(NAMES.get(m, m) for m in u['extra'])} scored once outside the study" if u["extra"] else "")
            + "".join(f", `{p}` ({n}: {why.rstrip('.')})" for p, (n, why) in u["later"].items())
            + f" | {u['scorings']} |",
            f"| speed benchmark recipe trials, every {u['every']} epoch (`{TRIALS}`, {u['trials']} trials) | {u['trial_points']:,} |",
            f"| all | {u['total']:,} |", "",
            "QuickNet's recipe (`train.RECIPES['quicknet']`) was chosen from those trials, by time to a *test* accuracy, the "
            "quantity the speed benchmark defines; its numbers are therefore not an unbiased estimate. The study's "
            "models were chosen on validation, but the runs listed under the accuracy targets below were made because "
            "earlier test scores missed the targets.", "",
            "Not in the count: the robustness benchmark (`benchmarks/user_images.py`) builds its files from MNIST test "
            "digits, and its MNIST check sends all 10,000 test images through `predict.py` on every full run; the tests "
            "(`tests/`) score test digits too. Two choices of the image pipeline were made looking at that benchmark: "
            "the filter that enlarges 8x8 thumbnails (`predict.UPSAMPLE`) and the smallest dot `predict.dot_apart` accepts "
            "(a 1-px speck under a 4 in its specks condition had been taken for a dot). Neither touches a model's weights "
            "or its test accuracy in this report.", ""]


def appendix_lr(f: Facts) -> list[str]:
    """The LR sweep with test scores, and the LR range test's runs."""
    s = f.s
    lines = ["## LR sweep in full", "",
             "Validation / test accuracy % and macro F1 at the validation-best epoch; **bold**: the row's best on validation.", ""]
    lines += lr_table(f, with_test=True) + [""]
    finder = read_json(study.lr_find_path(s)) or {}
    if finder:
        params = inspect.signature(train.lr_find).parameters
        lines += [f"**LR range test** (`python train.py --model M --lr-find`, Smith 2015): up to {params['steps'].default} steps with the LR "
                  f"rising exponentially from {params['start'].default:g} to {params['end'].default:g}, stopped once the loss blows up "
                  f"({min(x['steps'] for x in finder.values())}–{max(x['steps'] for x in finder.values())} steps ran); the "
                  "suggestion is where the smoothed loss falls fastest. The extra runs at the suggestion and at the LR the grid points to:", "",
                  "| model | optimizer | suggested LR | loss lowest at | run at another LR: val / test % |", "|---|---|---|---|---|"]
        extra = {}
        for r in results_of(s, study.lr_cells(s)):
            if r["tags"].get("kind") in ("lr_find", "data"):
                extra.setdefault((r["tags"]["model"], r["tags"]["optimizer"]), []).append(r)
        for key, fd in sorted(finder.items()):
            m, opt = key.rsplit("-", 1)
            runs = "; ".join(f"lr {r['tags']['lr']:g}: {pct(r['best']['val_acc'])} / {pct(r['test']['acc'])}"
                             for r in sorted(extra.get((m, opt), []), key=lambda r: r["tags"]["lr"]))
            lines.append(f"| {NAMES[m]} | {OPT_NAMES[opt]} | {fd['suggested_lr']:.3g} | {fd['min_loss_lr']:.3g} | {runs or '–'} |")
        lines += [""]
        shown = [(key, fd["png"]) for key, fd in sorted(finder.items()) if fd.get("png") and (f.root / fd["png"]).exists()]
        if shown:
            lines += ["Smoothed loss against LR, the suggestion marked:", "",
                      " ".join(figure(f.root, png, f"LR range test, {key}") for key, png in shown), ""]
    return lines


def appendix_stem(f: Facts) -> list[str]:
    """ResNet-18's three stems at equal epochs."""
    s = f.s
    lines = []
    stem = results_of(s, study.stem_cells(s))
    lines += ["## ResNet-18's stem", ""]
    if stem:
        speed = read_json(s.results / "stem_speed.json")
        c0 = stem[0]["config"]
        lines += [f"{NAMES['resnet']}, {OPT_NAMES[c0['optimizer']]} lr {c0['lr']:g}, {c0['epochs']:g} epoch, seed {c0['seed']}, "
                  "three stems; throughput measured back to back in one process (`results/stem_speed.json`).", "",
                  "| stem | val % | test % | train images/s | run wall time |", "|---|---|---|---|---|"]
        for r in stem:
            st = r["config"]["model_config"]["stem"]
            rate = speed["train_img_s"].get(st) if speed else None
            lines.append(f"| {STEM_TEXT[st]} | {pct(r['best']['val_acc'])} | {pct(r['test']['acc'])} | "
                         f"{f'{rate:,.0f}' if rate else '–'} | {r['seconds']:.0f} s |")
        lines += ["", f"The default is {STEM_TEXT[build_model('resnet').stem]}.", ""]
    else:
        lines += ["Not run.", ""]
    return lines


def appendix_optimizers(f: Facts) -> list[str]:
    """The optimizer comparison the recipes used, and the fair one where it has run."""
    lines = ["## Optimizer comparison in full", ""]
    groups = optim_groups(f)
    if groups:
        lines += ["| model | optimizer | LR | epochs | val % (mean ± std) | test % (mean ± std) | seeds | seconds a run |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, g in groups.items():
            for o, rs in g.items():
                lines.append(f"| {NAMES[m]} | {OPT_NAMES[o]} | {rs[0]['tags']['lr']:g} | {rs[0]['epochs']:g} | "
                             f"{mean_std([r['best']['val_acc'] for r in rs])} | {mean_std([r['test']['acc'] for r in rs])} | "
                             f"{len(rs)} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
        lines += [""]
    fair = fair_tables(f)
    for m, t in fair.items():
        lines += [f"Fair comparison, {NAMES[m]} ({t['epochs']:g} epochs): validation % per LR at tuning seed {t['tune_seed']}, "
                  f"then seeds {', '.join(map(str, t['seeds']))} at the tuned LR.", "",
                  "| optimizer | " + " | ".join(f"lr {x:g}" for x in t["grid"]) + " | tuned LR | val % (mean ± std) "
                  "| behind the best by (val images) | verdict |",
                  "|---|" + "---|" * (len(t["grid"]) + 4)]
        for r in t["rows"]:
            tune = [pct(r["tuning"].get(x)) if r["tuning"].get(x) is not None else "diverged" for x in t["grid"]]
            verdict = "best mean" if r["optimizer"] == t["best"] else ("tie" if r["tie"] else "behind")
            lines.append(f"| {OPT_NAMES[r['optimizer']]} | " + " | ".join(tune) + f" | {r['lr']:g} | {mean_std(r['val'])} | "
                         f"{max(r['gap'], 0.0) / t['one_image']:.1f} | {verdict} |")
        lines += [""]
    if not fair:
        done = fair_runs_done(f)
        lines += ["The fair comparison (each optimizer's own tuned LR, fresh seeds) "
                  + (f"has not finished: {done} of its runs are recorded (in the runs table below)." if done else "has not run yet."), ""]
    return lines


def appendix_tie_rules(f: Facts) -> list[str]:
    """How every choice breaks ties."""
    return ["## Tie rules", "",
            f"- Comparing means over seeds (optimizers, models): {tie_rule_text(f.one_val)}.",
            "- LR sweep: the best validation accuracy; equal scores go to the larger LR (`study.best_lr`).",
            "- Regularization variants: the best mean validation accuracy; equal means go to the simpler variant "
            "(`study.best_variant`).",
            "- The file shipped in `weights/`: seed 0 of the model's issue-#25 recipe once its refits are done "
            "(`study.recipe_source`), except where `study.RECIPE_NOT_SHIPPED` names the recipe (decided after its test scores: "
            + "; ".join(f"{NAMES.get(m, m)} `{c}`, which {why}" for (m, c), why in study.RECIPE_NOT_SHIPPED.items())
            + "); otherwise, and before that, the model's final run with the best validation accuracy, later recipes "
            "included; equal scores go to the first final recipe, then the earlier later recipe, then the lower seed "
            "(`study.shipped_final`, fixed before those runs).", ""]


def appendix_fitting(f: Facts) -> list[str]:
    by = reg_groups(f)
    lines = ["## Over- and underfitting", ""]
    if not by:
        return lines + ["Not run.", ""]
    base = by.get("baseline", [None])[0]
    c = base["config"] if base else {}
    lines += [f"The ConvNet, SGD at its best sweep LR, {study.REG_EPOCHS} epochs, each variant over "
              f"{len(next(iter(by.values())))} seeds. The recipe (baseline): ±{c.get('translate', 0):g} px shifts, dropout "
              f"{c.get('model_config', {}).get('dropout', 0):g}, label smoothing {c.get('label_smoothing', 0):g}, weight decay "
              f"{c.get('weight_decay', 0):g}. Variants remove one regularizer, all of them (`none`), change the width, or add "
              "augmentations. Training accuracy is measured on augmented batches while training.", "",
              "| variant | settings | parameters | last-epoch train % | best val % | test % | val-best epochs | val loss min → last | "
              f"early stop (patience {study.PATIENCE}) at epoch; val % |", "|---|---|---|---|---|---|---|---|---|"]
    for v, rs in by.items():
        stops = [early_stop(r["history"], study.PATIENCE) for r in rs]
        cfg = rs[0]["config"]
        lines.append(f"| {v} | {aug_text(cfg)}, dropout {cfg['model_config'].get('dropout', 0):g}, smoothing "
                     f"{cfg['label_smoothing']:g}, decay {cfg['weight_decay']:g} | "
                     f"{count_params(build_model('convnet', **cfg['model_config'])):,} | "
                     f"{mean_std([r['history'][-1]['train_acc'] for r in rs])} | {mean_std([r['best']['val_acc'] for r in rs])} | "
                     f"{mean_std([r['test']['acc'] for r in rs])} | {', '.join(format(r['best']['epoch'], 'g') for r in rs)} | "
                     f"{statistics.mean(min(h['val_loss'] for h in r['history']) for r in rs):.4f} → "
                     f"{statistics.mean(r['history'][-1]['val_loss'] for r in rs):.4f} | "
                     f"{', '.join(f'{e:g}' for e, _ in stops)}; {mean_std([b for _, b in stops])} |")
    aug, width = study.chosen_augmentation(f.s), study.chosen_width(f.s)
    lines += [""]
    if aug and width:
        lines += [f"Chosen on validation for the final runs: augmentation `{aug[0]}`, ConvNet width `{width[0]}`. "
                  + compare_text(f, by, aug[0], study.AUGMENTATIONS) + " " + compare_text(f, by, width[0], study.CAPACITIES), ""]
    gaps = {v: statistics.mean(r["history"][-1]["train_acc"] - r["history"][-1]["val_acc"] for r in rs) for v, rs in by.items()}
    half = {v: statistics.mean(r["history"][len(r["history"]) // 2 - 1]["train_acc"] - r["history"][len(r["history"]) // 2 - 1]["val_acc"]
                               for r in rs) for v, rs in by.items()}
    widest = max(gaps, key=gaps.get)
    lines += [f"Train minus validation accuracy at the middle and the last epoch: the widest gap is `{widest}`'s "
              f"({100 * half[widest]:+.2f} → {100 * gaps[widest]:+.2f} points); the recipe's "
              f"({100 * half.get('baseline', 0):+.2f} → {100 * gaps.get('baseline', 0):+.2f})."
              + (f" Negative at the end for {', '.join(f'`{v}`' for v, g in gaps.items() if g < 0)}: their augmented training "
                 "batches are harder than the clean validation images." if any(g < 0 for g in gaps.values()) else ""), "",
              figure(f.root, "figures/study_regularization.png", "training vs validation error per variant"), ""]
    return lines


def compare_text(f: Facts, by: dict, chosen: str, variants) -> str:
    vals = {v: [r["best"]["val_acc"] for r in by[v]] for v in variants if v in by}
    if len(vals) < 2:
        return ""
    best, res = compare(vals, f.one_val)
    ties = [v for v, (_, _, t) in res.items() if t and v != best]
    if ties:
        return (f"`{best}` has the best mean, tied with {', '.join(f'`{v}`' for v in ties)} "
                f"({', '.join(f'{res[v][0] * f.n_val:.1f}' for v in ties)} validation images behind): a choice within the noise.")
    return f"`{best}` leads the others beyond the noise."


def early_stop(history: list[dict], patience: int) -> tuple[float, float]:
    """(epoch where --patience would stop, val accuracy of the best epoch up to then)."""
    best, since = -1.0, 0
    for h in history:
        if h["val_acc"] > best:
            best, since = h["val_acc"], 0
        else:
            since += 1
            if since >= patience:
                return h["epoch"], best
    return history[-1]["epoch"], best


def appendix_per_class(f: Facts) -> list[str]:
    stems = [m for m in [*f.shipped, "ensemble"] if f.metrics.get(m)]
    lines = ["## Per-class metrics", "", "Test F1 per digit:", "", "| model | " + " | ".join(map(str, range(10))) + " |", "|---|" + "---|" * 10]
    for m in stems:
        met = f.metrics[m]
        lines.append(f"| {NAMES.get(m, m)} | " + " | ".join(f"{met['per_class'][str(d)]['f1-score']:.4f}" for d in range(10)) + " |")
    lines += ["", "1 − ROC-AUC per digit (one-vs-rest), from `figures/<model>_metrics.json`, which `test_model.py` writes "
              "with its ROC figures:", "",
              "| model | macro | " + " | ".join(map(str, range(10))) + " |", "|---|---|" + "---|" * 10]
    for m in stems:
        met = f.metrics[m]
        lines.append(f"| {NAMES.get(m, m)} | {1 - met['auc_ovr_macro']:.2e} | "
                     + " | ".join(f"{1 - met['auc_per_class'][str(d)]:.2e}" for d in range(10)) + " |")
    shifts = next((met["tta"]["shifts"] for met in (f.metrics[m] for m in stems) if "tta" in met), [])
    moved = [s_ for s_ in shifts if any(s_)]
    lines += ["", f"Test-time augmentation (`test_model.py --tta`: the mean softmax over the image and its {len(moved)} shifted "
              f"copies, by up to {max((max(map(abs, s_)) for s_ in moved), default=0)} px), reported apart; nothing was chosen by it:", "", "| model | accuracy % | with TTA % | errors |", "|---|---|---|---|"]
    for m in stems:
        met = f.metrics[m]
        lines.append(f"| {NAMES.get(m, m)} | {pct(met['accuracy'])} | {pct(met['tta']['accuracy']) if 'tta' in met else '–'} | "
                     f"{met['n'] - round(met['accuracy'] * met['n'])} |")
    return lines + [""]


def appendix_figures(f: Facts) -> list[str]:
    lines = ["## Figures per model", ""]
    for m in [*f.shipped, "ensemble"]:
        if not f.metrics.get(m):
            continue
        lines += [f"**{NAMES.get(m, m)}**", ""]
        if (f.root / "figures" / f"curves_{m}.png").exists():
            lines += [figure(f.root, f"figures/curves_{m}.png", "training curves"), ""]
        lines += [figure(f.root, f"figures/{m}_roc.png", "ROC") + " " + figure(f.root, f"figures/{m}_confusion_matrix.png", "confusion matrix"),
                  "", figure(f.root, f"figures/{m}_mistakes.png", "most confident mistakes"), ""]
        if (f.root / "figures" / f"{m}_conv1_filters.png").exists():
            lines += [" ".join(figure(f.root, f"figures/{m}_{k}.png", k) for k in ("conv1_filters", "conv1_maps", "conv2_filters", "conv2_maps")
                                if (f.root / "figures" / f"{m}_{k}.png").exists()), ""]
        if (f.root / "figures" / f"{m}_fc1_weights.png").exists():
            d = f.data or {"features_per_sample": "?", "shape": ["?", "?"]}
            lines += [f"First layer's weights, each unit's {d['features_per_sample']} weights as a {d['shape'][0]}x{d['shape'][1]} image: "
                      + figure(f.root, f"figures/{m}_fc1_weights.png", "fc1 weights"), ""]
    return lines


def appendix_targets(f: Facts) -> list[str]:
    lines = ["## Accuracy targets and the runs made for them", ""]
    if not f.evaluation:
        return lines + ["Not evaluated yet.", ""]

    def met_text(acc, target):
        return "yes" if acc >= target else f"no: {round((target - acc) * f.n_test)} test images short"
    lines += ["Issue #11's targets (best published results), for the shipped file's test accuracy; issue #25's stricter ones are in "
              "[Accuracy by recipe](#accuracy-by-recipe).", "",
              "| model | target % | test % | met |", "|---|---|---|---|"]
    singles = {}
    for m in f.models:
        met = f.metrics.get(m)
        if met:
            singles[m] = met["accuracy"]
            t = TARGETS.get(m)
            label = NAMES[m] + (" (the file now: issue #25's refit, seed 0)" if f.file_recipe(m) else "")
            lines.append(f"| {label} | {pct(t) if t else '–'} | {pct(met['accuracy'])} | {met_text(met['accuracy'], t) if t else ''} |")
    if singles:
        b = max(singles, key=singles.get)
        lines.append(f"| best single model ({NAMES[b]}) | {pct(TARGET_BEST_SINGLE)} | {pct(singles[b])} | {met_text(singles[b], TARGET_BEST_SINGLE)} |")
    ens = f.metrics.get("ensemble")
    if ens:
        lines.append(f"| ensemble of the {len(f.models)} | {pct(TARGET_ENSEMBLE)} | {pct(ens['accuracy'])} | {met_text(ens['accuracy'], TARGET_ENSEMBLE)} |")
    e = f.ensembles
    if e and "test" in e:
        lines.append(f"| ensemble chosen on validation (`{e['chosen']}`, {len(e['candidates'][e['chosen']]['members'])} models) | "
                     f"{pct(TARGET_ENSEMBLE)} | {pct(e['test']['accuracy'])} | {met_text(e['test']['accuracy'], TARGET_ENSEMBLE)} |")
    for m in study.REFITS:
        met = f.metrics.get(f"{m}-refit")
        if met and m in TARGETS:
            lines.append(f"| {NAMES[m]} refit on train + validation (`weights/{m}-refit.pt`) | {pct(TARGETS[m])} | "
                         f"{pct(met['accuracy'])} | {met_text(met['accuracy'], TARGETS[m])} |")
    lines += ["", "Because these targets were missed on test, later recipes were trained beside each model's first final "
              "recipe (`study.ATTEMPTS`, `study.REFITS`). Each recipe over its seeds, against the first final recipe on the "
              "same seeds:", "", "| model | recipe | seeds | val % (mean ± std) | test % (mean ± std) | change in val / test images | minutes a run |",
              "|---|---|---|---|---|---|---|"]
    for m in f.models:
        base = [r for r in f.finals if r["tags"]["model"] == m and not r["tags"].get("attempt") and r.get("test")]
        for a in ["", *study.ATTEMPTS.get(m, {}), *(["refit"] if m in study.REFITS else [])]:
            runs = [r for r in f.finals if r["tags"]["model"] == m and r["tags"].get("attempt", "") == a and r.get("test")]
            if not runs:
                continue
            seeds = {r["config"]["seed"] for r in runs}
            same = [r for r in base if r["config"]["seed"] in seeds] or base
            if a and a != "refit":
                dv = statistics.mean(r["best"]["val_acc"] for r in runs) - statistics.mean(r["best"]["val_acc"] for r in same)
                dt = statistics.mean(r["test"]["acc"] for r in runs) - statistics.mean(r["test"]["acc"] for r in same)
                change = f"{dv * f.n_val:+.1f} / {dt * f.n_test:+.1f}"
            else:
                change = "–"
            val = mean_std([r["best"]["val_acc"] for r in runs]) + (" (in-sample)" if a == "refit" else "")
            lines.append(f"| {NAMES[m]} | {'first final recipe' if not a else change_words(m, a)} | {len(runs)} | {val} | "
                         f"{mean_std([r['test']['acc'] for r in runs])} | {change} | {statistics.mean(r['seconds'] for r in runs) / 60:.1f} |")
    lines += ["", one_image_note(f) + "Differences of a few validation images cannot single out a recipe that lifts test "
              "accuracy by the few images the targets ask for.", ""]
    return lines


def appendix_ensembles(f: Facts) -> list[str]:
    e = f.ensembles
    lines = ["## Ensembles", ""]
    if not e:
        return lines + ["Not run.", ""]
    names = {r["name"]: r for r in f.records}
    lines += ["Mean softmax of final runs' validation-best checkpoints; of these candidates only the one with the best "
              "validation accuracy is scored on test. (The ensemble of the 4 shipped files in the report's first table is a "
              "different one: `test_model.py` scoring every shipped file together, Step 5.)", "", "| candidate | members | val % | chosen |", "|---|---|---|---|"]
    for name, c in e["candidates"].items():
        members = "; ".join(recipes_with_seeds([names[n] for n in c["members"] if n in names])
                            + [n for n in c["members"] if n not in names])
        lines.append(f"| `{name}` ({len(c['members'])} models) | {members} | {pct(c['val_acc'])} | {'yes' if name == e['chosen'] else ''} |")
    now = {(f.cards.get(m) or {}).get("train_config", {}).get("run_name") for m in f.models}
    gone = [names[n]["tags"]["model"] for n in e["candidates"].get("shipped", {}).get("members", []) if n in names and n not in now]
    if gone:
        why = " by issue #25's refits (no validation split left to ensemble on)" if all(f.file_recipe(m) for m in gone) else ""
        lines += ["", f"`shipped` is the final runs shipped when this choice was made; the {and_join([NAMES.get(m, m) for m in gone])} "
                      f"file{'s have' if len(gone) > 1 else ' has'} since been replaced{why}."]
    return lines + [""]


def recipes_with_seeds(records: list[dict]) -> list[str]:
    """Runs grouped by their settings: 'ConvNet, ..., 30 epochs, seeds 0, 1, 2'."""
    groups: dict = {}
    for r in records:
        groups.setdefault(run_words(r["config"], seed=False), []).append(r["config"]["seed"])
    return [f"{k}, seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}" for k, v in groups.items()]


def appendix_runs(f: Facts) -> list[str]:
    lines = ["## Every training run", "",
             f"All {len(f.records)} training runs of the study, by stage; the run's file is `results/cells/<file>.json` and its "
             "terminal output, where kept, `results/logs/`. **Bold**: the run whose weights are in `weights/`.", "",
             "An empty test score is a diverged run or a screening run (stage recipes), which never looks at the test set.", "",
             "| stage | run | val-best epoch | val % | test % | minutes | machine | file |", "|---|---|---|---|---|---|---|---|"]
    machine = {h: i + 1 for i, h in enumerate(f.hardware)}
    shipped = {f.shipped_run(m)["name"] for m in f.shipped if f.shipped_run(m)}
    stages = [("stem", study.stem_cells), ("LR sweep", study.lr_cells), ("optimizer", study.optim_cells),
              ("regularization", study.reg_cells), ("final", study.final_cells), ("recipes", study.recipes_cells)]
    fn = getattr(study, "optim_fair_cells", None)
    if fn:
        stages.insert(3, ("fair optimizer", fn))

    def row(stage: str, r: dict) -> str:
        refit = r["config"].get("refit")  # no validation split: the last epoch is kept, its "val" is in-sample
        name = f"**{run_words(r['config'])}**" if r["name"] in shipped else run_words(r["config"])
        val = (pct(r["best"].get("val_acc")) + (" (in-sample)" if refit else "")) if r["status"] != "diverged" else "diverged"
        return (f"| {stage} | {name} | {r['best'].get('epoch', 0):g}{' (last: refit)' if refit else ''} | {val} | "
                f"{pct((r.get('test') or {}).get('acc'))} | {r['seconds'] / 60:.1f} | {machine.get(r['hardware'], '?')} | `{r['name']}` |")

    seen = set()
    for stage, cells in stages:
        for r in results_of(f.s, cells(f.s)):
            if r["name"] not in seen:
                seen.add(r["name"])
                lines.append(row(stage, r))
    lines += [row("final (an earlier recipe's)", r) for r in f.records if r["name"] not in seen]
    if f.hardware:
        lines += ["", "Machines: " + "; ".join(f"{i} = `{h}`" for h, i in machine.items()) + "."]
    return lines + [""]


def appendix_screenshots(f: Facts) -> list[str]:
    idx = read_json(f.root / "screenshots" / "index.json")
    lines = ["## Screenshots", ""]
    if not idx:
        return lines + ["Not rendered yet (stage `screenshots`).", ""]
    lines += ["The real terminal output of the study's commands, saved while they ran (`results/logs/`); each image is "
              "titled with its command.", ""]
    for item in idx:
        kind = "testing" if "/test-" in item["png"] else "training" if "/train-" in item["png"] else "data / features"
        lines += [f"{kind}: " + figure(f.root, item["png"], Path(item["png"]).stem), ""]
    return lines


# -----------------------------------------------------------------------------
# weights/<model>.md: a model card per file in weights/ (Mitchell et al. 2019)


def mistakes_text(met: dict, k: int = 3, most: int = 6) -> str:
    """The card's line on the most frequent test mistakes of met["confusion_matrix"] (10x10 counts): the k most
    frequent pairs, every pair tied with the k-th too when that makes at most `most`, else "among others"."""
    every = confusion_pairs(met, k=len(met["confusion_matrix"]) ** 2)
    pairs = every[:k]
    if len(every) > k and every[k][2] == every[k - 1][2]:
        tied = [p for p in every if p[2] >= every[k - 1][2]]
        pairs, more = (tied, "") if len(tied) <= most else (pairs, f", among others tied at {every[k - 1][2]}")
    else:
        more = ""
    return ("- Its most frequent test mistakes (true → predicted, count): "
            + ", ".join(f"{i} → {j} ({n})" for i, j, n in pairs) + more + ".")


def user_image_results(f: Facts) -> tuple[str, dict] | None:
    for p in USER_IMAGE_RESULTS:
        d = read_json(f.root / p)
        if d is not None:
            return p, d
    return None


def user_image_worst(d: dict, m: str, k: int = 3) -> tuple[list, list] | None:
    """Where model m does worst in a benchmarks/user_images.py result d.

    d has the shape {"conditions": {name: {"kind": "control"|"digit"|"several"|"none", "note": str, "n": int,
    "models": {model: {"right": share, "refused": share}}}}} (shares in 0..1). Returns (digits, non_digits) or None when
    m has no entry: digits are the (name, note, n, right, refused) of the conditions with a digit to read whose 'right'
    share is among the k lowest (every condition tied with the k-th is kept, and conditions where m is always right are
    left out); non_digits are the same tuples for every "none" condition (there 'right' is the share refused), lowest
    first."""
    conds = d.get("conditions") if isinstance(d, dict) else None
    if not isinstance(conds, dict):
        return None
    rows = []
    for name, c in conds.items():
        r = c.get("models", {}).get(m) if isinstance(c, dict) and isinstance(c.get("models"), dict) else None
        if isinstance(r, dict) and isinstance(r.get("right"), (int, float)):
            rows.append((c.get("kind"), name, c.get("note", ""), c.get("n"), r["right"], r.get("refused", 0.0)))
    if not rows:
        return None
    digits = sorted((row for row in rows if row[0] != "none" and row[4] < 1), key=lambda row: (row[4], row[1]))
    if len(digits) > k:
        digits = [row for row in digits if row[4] <= digits[k - 1][4]]
    non_digits = sorted((row for row in rows if row[0] == "none"), key=lambda row: (row[4], row[1]))
    return [row[1:] for row in digits], [row[1:] for row in non_digits]


def user_image_text(f: Facts, m: str) -> list[str]:
    """The card's lines on users' kinds of images (benchmarks/user_images.py): the conditions where model m does worst."""
    found = user_image_results(f)
    if not found:
        return ["- Users' own images (photos, thick or thin strokes, off-centre digits): not measured yet "
                "(`benchmarks/user_images.py` writes that measurement)."]
    path, d = found
    worst = user_image_worst(d, m)
    if worst is None:
        return [f"- Users' kinds of images: `{path}` (`benchmarks/user_images.py`) has no entry for this file; "
                "run that benchmark with it to measure it."]
    digits, non_digits = worst
    out = [f"- Users' kinds of images, from `{path}` (`benchmarks/user_images.py`, through `predict.py`'s path), "
           "where this model does worst:"]
    if digits:
        out.append("  - digits it reads least often (share right, share refused): "
                   + "; ".join(f"{name} ({note}, {n} images): {pct(r, 1)}% right, {pct(x, 1)}% refused"
                               for name, note, n, r, x in digits) + ".")
    else:
        out.append("  - it read every digit image of every condition right.")
    if non_digits:
        out.append("  - non-digits it should refuse (share refused; the rest were read as a digit): "
                   + "; ".join(f"{name} ({note}, {n} images): {pct(r, 1)}%" for name, note, n, r, _ in non_digits) + ".")
    return out


def calibration_line(cal: dict) -> str:
    """The card's sentence on a file's calibration (its record from calibrate.py): held out, from a
    refit's twin, or in-sample."""
    twin = cal.get("twin")
    return (f"Calibration (`calibrate.py`): temperature {cal['temperature']:g}, ECE {cal['ece_before']:.4f} → "
            f"{cal['ece_after']:.4f} on the validation split"
            + (f", both from its held-out twin (`{twin['run']}`: the same recipe and seed trained without the validation "
               f"split; validation {pct(twin.get('val_acc'))}% at its best epoch {twin.get('epoch') or 0:g}, where this file keeps its "
               "last), as is the probability threshold; the rejector is fitted in-sample" if twin else
               " (in-sample: it trained on those images, so these numbers may flatter it on new digits)"
               if cal.get("in_sample") else "") + ".")


def card_lines(f: Facts, m: str) -> list[str]:
    card = f.cards[m]
    tc, env = card["train_config"], card.get("environment", {})
    met = f.metrics.get(m)
    run = f.shipped_run(m)
    net = load_checkpoint(f.root / "weights" / f"{m}.pt")[0]
    base = card["model"]
    shape = f"{f.data['shape'][0]}x{f.data['shape'][1]}" if f.data else "MNIST-sized"
    lines = [f"# Model card: {NAMES.get(m, m)} (`weights/{m}.pt`)", "",
             "Written by `python study.py --report-only` from `weights/" + m + ".json` and the study's results; see "
             "[report.md](../report.md) for how it compares with the other models.", "",
             "## Model details", "",
             f"- **What it is**: `{type(net).__name__}` from `models.py`, a digit classifier for {shape} grey images; "
             f"{f.params(m):,} parameters, {multiply_adds(net) / 1e6:.1f} M multiply-adds per image.",
             f"- **Layers**: {layer_text(net)}.",
             f"- **Trained as**: {(w := run_words(tc))}; " + ("" if "batch " in w else f"batch {tc['batch_size']}, ") + f"{tc.get('schedule', '')} schedule, weight decay "
             f"{tc.get('weight_decay', 0):g}, label smoothing {tc.get('label_smoothing', 0):g}.",
             (f"- **Kept**: the last epoch ({card['metrics']['epoch']:g} of {tc['epochs']:g}; a refit has no validation split to pick one)"
              if tc.get("refit") else f"- **Kept**: the validation-best epoch ({card['metrics']['epoch']:g} of {tc['epochs']:g})")
             + (f"; code version `{env['code_version']}`" if env.get("code_version") else "") + ".", ""]
    train_cmd = run["command"] if run else f"python train.py --model {base}" + (" --refit" if tc.get("refit") else "")
    lines += ["## How to use it", "", "```bash",
              f"{train_cmd}   # train: "
              + ("the command that made this file" if run else f"its recipe (train.RECIPES); this file's settings are in weights/{m}.json")
              + (" (writes runs/; a refit never replaces weights/)" if tc.get("refit") else " (writes runs/, and weights/ if better on validation)"),
              f"python test_model.py --weights weights/{m}.pt --out figures   # test: accuracy, F1, ROC-AUC, confusion matrix",
              f"python predict.py my_digit.png --weights weights/{m}.pt   # predict your own image",
              f"python feature_visualization.py --weights weights/{m}.pt --digit 7 --out figures   # visualize"
              + ("   (the DNN: its first layer's weights)" if base == "dnn" else ""),
              "```", ""]
    d = f.data
    lines += ["## Training data", ""]
    if d:
        sp = d["split"]
        trained_on = (f"train + validation ({sp['train'] + sp['val']:,} images; validation is then in-sample)" if tc.get("refit")
                      else f"the {sp['train']:,}-image training split; the {sp['val']:,}-image validation split chose the epoch "
                           "and the settings")
        lines += [f"MNIST: {d['train_samples']:,} training and {d['test_samples']:,} test images of handwritten digits, {shape} grey, "
                  f"centred by their centre of mass. This model was trained on {trained_on}. Preprocessing: {d['preprocessing']}. "
                  f"Augmentation while training: {aug_text(tc)}.", ""]
    lines += ["## Metrics", ""]
    if met:
        lines += [f"On the {met['n']:,} test images (`python test_model.py`): accuracy **{pct(met['accuracy'])}%** "
                  f"({met['n'] - round(met['accuracy'] * met['n'])} errors), macro F1 {met['f1_macro']:.4f}, ROC-AUC macro "
                  f"{met['auc_ovr_macro']:.6f} (1 − AUC {1 - met['auc_ovr_macro']:.2e})"
                  + (f"; with test-time augmentation {pct(met['tta']['accuracy'])}%" if "tta" in met else "") + "."]
    lines.append(f"Validation accuracy of this file: {pct(card['metrics']['val_acc'])}%"
                 + (" (in-sample: it trained on validation)" if tc.get("refit") else "") + ".")
    runs = f.file_seeds(m) if m in f.models else []
    if len(runs) > 1:
        val = "" if tc.get("refit") else f"validation {mean_std([r['best']['val_acc'] for r in runs])}%, "
        lines.append(f"Seed spread of its recipe ({len(runs)} seeds): {val}test {mean_std([r['test']['acc'] for r in runs])}%. "
                     f"{one_image_note(f).strip()}")
    lines += [note] if (note := recipe_note(f, m)) else []
    lines += [calibration_line(card["calibration"])] if card.get("calibration") else []
    lines += ["", "## Hardware and time", ""]
    hw = run["hardware"] if run else f"{env.get('cpu', '?')}, {env.get('threads', '?')} threads, {env.get('device', '')}"
    minutes = f.train_minutes(m)
    lines += [f"Trained on `{hw}`" + (f" in {minutes:.1f} minutes" if minutes is not None else "")
              + (f"; scoring the test set took {met['inference_seconds']:.1f} s" if met and "inference_seconds" in met else "") + ".", ""]
    lines += ["## Intended use", "",
              "Reading one handwritten digit, 0-9, from an image like MNIST's: a single dark-on-light or light-on-dark digit "
              "that `predict.py` can find, crop and centre; for teaching and demos (the web demo, `serve.py`). Not for "
              "multi-digit strings, letters, or decisions that matter without a person checking.", "",
              "## Limitations", ""]
    if met:
        lines.append(mistakes_text(met))
    lines += user_image_text(f, m)
    if m == "quicknet":
        lines.append("- Its recipe was chosen from trials that scored the test set (`benchmarks/trials.py`), so its test "
                     "accuracy is not an unbiased estimate.")
    if tc.get("refit"):
        lines.append("- Trained on the validation split too: its validation score is in-sample, and it was not chosen by it.")
    lines.append("- Trained on MNIST's writers only (American Census Bureau staff and high-school students); other handwriting, "
                 "pens, cameras and backgrounds are outside what it has seen.")
    return lines + [""]


# -----------------------------------------------------------------------------
# README: the per-model "how to run" block, with expected accuracy and time from the results

README_BEGIN = "<!-- study:models (written by study_report.py from the study's results; do not edit by hand) -->"
README_END = "<!-- /study:models -->"


def readme_models_block(f: Facts) -> list[str]:
    lines = []
    for m in f.models:
        met, card = f.metrics.get(m), f.cards.get(m)
        shipped = f.shipped_run(m)
        lines += [f"### {NAMES[m]} (`--model {m}`; model card [weights/{m}.md](weights/{m}.md))", "", "```bash"]
        if shipped:
            lines.append(f"{shipped['command']}   # the run that made weights/{m}.pt")
        else:
            lines.append(f"python train.py --model {m}   # its recipe in train.RECIPES (the study's final run is not recorded yet)")
        lines.append(f"python test_model.py --weights weights/{m}.pt")
        if m != "dnn":
            lines.append(f"python feature_visualization.py --weights weights/{m}.pt --digit 7 --out figures/")
        else:
            lines.append(f"python feature_visualization.py --weights weights/{m}.pt --out figures/   # its first layer's weights")
        lines += [f"python predict.py my_digit.png --weights weights/{m}.pt", "```", ""]
        facts = []
        if met:
            facts.append(f"expected test accuracy **{pct(met['accuracy'])}%** (the file `weights/{m}.pt`, as `test_model.py` prints it)")
        runs = f.file_seeds(m)
        if runs:
            facts.append(f"{mean_std([r['test']['acc'] for r in runs])}% over {len(runs)} seed{'s' if len(runs) > 1 else ''} of the recipe that made this file")
        if shipped:
            facts.append(f"training time {shipped['seconds'] / 60:.1f} min on {shipped['hardware']}")
        lines += [("; ".join(facts) + "." + (f" {note}" if (note := recipe_note(f, m)) else "")) if facts else
                  "Expected numbers: after the study's final stage (see report.md).", ""]
        del card
    return lines


USER_IMAGES_BEGIN = ("<!-- user_images:table (written by study_report.py from benchmarks/results/user_images.md; "
                     "do not edit by hand) -->")
USER_IMAGES_END = "<!-- /user_images:table -->"


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    """text with what lies between the marker lines `begin` and `end` replaced by body; unchanged without them."""
    if begin not in text or end not in text:
        return text
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{body.rstrip(chr(10))}\n{end}{rest.split(end, 1)[1]}"


CALIBRATION_BEGIN = "<!-- calibration:convnet (written by study_report.py from results/calibration/convnet.json; do not edit by hand) -->"
CALIBRATION_END = "<!-- /calibration:convnet -->"


def calibration_sentence(root: Path, m: str = "convnet") -> str:
    """The README's sentence on weights/<m>.pt's calibration, from results/calibration/<m>.json ("" without it)."""
    c = read_json(root / "results" / "calibration" / f"{m}.json")
    if not c:
        return ""
    held = "in-sample validation digits (this file was trained on them)" if c.get("in_sample") else "held-out validation digits"
    twin = " (temperature and ECE from its held-out twin)" if c.get("twin") else ""
    return (f"With `weights/{m}.pt` (from `results/calibration/{m}.json`): temperature {c['temperature']:g}, ECE "
            f"{c['ece_before']:.5f} → {c['ece_after']:.5f}{twin}; at the chosen thresholds {pct(c['val_accepted'])}% of {held} are "
            f"accepted, {pct(c['val_acc_accepted'])}% of those right, and {pct(c['non_digit_refused'], 1)}% of "
            f"{c['non_digit_n']} unseen generated non-digits are refused. The curve for every shipped model:")


def update_readme(root: Path = ROOT) -> bool:
    """Replace the README's generated blocks (the models, and the user-images table from
    benchmarks/results/user_images.md); False when the README has no models block."""
    path = root / "README.md"
    if not path.exists():
        return False
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    new = replace_block(text, README_BEGIN, README_END, "\n".join(readme_models_block(Facts(root))))
    sentence = calibration_sentence(root)
    if sentence:
        new = replace_block(new, CALIBRATION_BEGIN, CALIBRATION_END, sentence)
    table = root / "benchmarks" / "results" / "user_images.md"
    if table.exists():
        new = replace_block(new, USER_IMAGES_BEGIN, USER_IMAGES_END, table.read_text())
    if new != text:
        path.write_text(new)
    return True
