"""report.md: the homework's Steps 1-6, section by section, from the recorded results (Facts).
Imported by study_report.py and report_cards.py only."""

import math
import statistics

import torch

import study
import test_model
from feature_visualization import filter_orientations
from models import build_model, conv_layers, count_params, load_checkpoint
from report_facts import (
    APPENDIX, AUC_GAP_FIGURE, Facts, NAMES, OPT_NAMES, and_join, change_words, compare, curves_caption, f1_note,
    fair_runs_done, fair_tables, figure, history_of, later_runs, layer_text, lr_table, mean_std, multiply_adds, one_image_note,
    member_seeds, optim_groups, pct, read_json, recipe_robustness, file_sha256, reg_groups, results_of, scored_ensembles, seed_robustness, shown_recipe, test_use,
    tie_rule_text, RECIPE_TARGETS
)

# -----------------------------------------------------------------------------
# report.md


def section_summary(f: Facts) -> list[str]:
    lines = ["# MNIST: a DNN, a ConvNet and ResNet-18 (and two nets of our own)", "",
             "Written by `python study.py --report-only` from the recorded results (no number typed by hand). "
             f"Every table, run and screenshot behind it is in the [appendix]({APPENDIX}), with a [glossary]({APPENDIX}#glossary); "
             "each model has a card (`weights/<model>.md`).", ""]
    if f.hardware:
        made = {r["hardware"] for m in f.shipped if (r := f.shipped_run(m))}
        count = {h: sum(r["hardware"] == h for r in f.records) for h in f.hardware}
        order = sorted(f.hardware, key=lambda h: (h not in made, -count[h], h))
        both = len(made) > 1  # say it once when the files come from every machine
        lines += ["Hardware (training runs): " + "; ".join(f"`{h}` ({count[h]}" + (", including those behind the files in `weights/`"
                                                                               if h in made and not both else "") + ")" for h in order)
                  + ("; the files in `weights/` come from each" if both else "")
                  + ". Times compare only within one machine.", ""]
    d = read_json(f.s.results / "final_recipes.json") or {}
    recipes = {m: r for m, e in d.get("models", {}).items() if (r := shown_recipe(e)).get("done")}  # issue #25's, done
    lines += ["| model | parameters | test accuracy % | recipe test %, mean ± std over seeds (below) | macro F1 | 1 − ROC-AUC (macro; smaller is better) "
              "| training time (this file's run) | seeds |", "|---|---|---|---|---|---|---|---|"]
    for m in [m for m in f.shipped if m != "convnet-refit"]:
        met = f.metrics.get(m)
        if not met:
            continue
        accs = [x["test_acc"] for x in recipes[m]["seeds"]] if m in recipes else [r["test"]["acc"] for r in f.file_seeds(m)]
        minutes = f.train_minutes(m)
        lines.append(f"| {NAMES.get(m, m)} | {f.params(m):,} | {pct(met['accuracy'])} | {mean_std(accs) or '–'} | "
                     f"{met['f1_macro']:.4f} | {1 - met['auc_ovr_macro']:.2e} | "
                     f"{f'{minutes:.1f} min' if minutes is not None else '–'} | {len(accs) or 1} |")
    ens = f.metrics.get("ensemble")
    if ens:
        lines.append(f"| {NAMES['ensemble']} of the {len(f.models)} (mean softmax) | {sum(f.params(m) for m in f.models):,} | {pct(ens['accuracy'])} | – | "
                     f"{ens['f1_macro']:.4f} | {1 - ens['auc_ovr_macro']:.2e} | – | – |")
    best = f.best_model()
    names = lambda ms: and_join([NAMES.get(m, m) for m in ms])  # noqa: E731
    others = [m for m in f.shipped if m not in recipes and m != "convnet-refit" and f.file_seeds(m)]
    seed0 = [m for m, e in recipes.items() if (d["models"][m].get("shipped") or {}).get("seed_0")]
    not0 = [m for m in recipes if m not in seed0]
    said = ([f"the {names(seed0)} file{'s are their' if len(seed0) > 1 else ' is its'} recipe's seed 0"] if seed0 else []) + \
           ([f"the {names(not0)} file{'s are' if len(not0) > 1 else ' is'} not (Step 5)"] if not0 else [])
    lines += ["", f"Test accuracy: the file in `weights/`, scored by `test_model.py` on the {f.n_test:,} test images. "
              + (f"Recipe mean ± std: the model's issue-#25 recipe (Step 5), {len(d['seeds'])} seeds each trained on all 60,000 "
                 "training images, each seed's first test score, at the last epoch (reruns of lost files were scored again: Step 5)" + (f"; {names(others)}: its final-stage seeds, validation-best epoch"
                                                                         if others else "") + ". " + (j := "; ".join(said))[:1].upper() + j[1:]
                 + "." if recipes else "Mean ± std: the file's recipe's seeds, each scored once at its validation-best epoch.")]
    if best:
        lines += ["", f"**Best model: the {NAMES[best[0]]}** (Step 5 says why)."]
    u = test_use(f)
    lines += ["", f"**How often the test set was used: {u['total']:,} times** (robustness benchmark and tests aside): "
              f"once at the end of each of {u['runs']} training runs, {u['scorings']} times scoring saved models (`test_model.py`, "
              "each TTA pass counted; ensembles; re-scorings)" + (f", and {u['trial_points']:,} times in the speed benchmark's {u['trials']} recipe trials "
                                  f"(`benchmarks/trials.py`, every {u['every']} epoch)" if u["trials"] else "") + "."]
    after = ["QuickNet's recipe (those trials)"] if u["trials"] else []
    later = later_runs(f)
    if later:
        seen = {r["name"] for _, _, rs in later for r in rs}
        more = [r for r in f.records if r["tags"].get("kind") in ("recipe", "screen") and r["name"] not in seen
                and not r["tags"].get("again")]  # a rerun of a lost file is not a choice (Step 5 counts those)
        after.append(f"{sum(len(rs) for _, _, rs in later)} runs for issue #11 and {len(more)} for issue #25 "
                     f"({sum(1 for r in more if not r.get('test'))} screening, never scored), made *because* test scores missed "
                     "targets")
    if cands := [f"{NAMES.get(m, m)}'s `{e['candidate']}` (after `{e['earlier'][-1]['candidate']}`)"
                 for m, e in d.get("models", {}).items() if e.get("earlier")]:
        after.append(f"the candidate{'s' if len(cands) > 1 else ''} {and_join(cands)}, each after the earlier recipe's refit scores")
    after += [f"keeping the {NAMES.get(m, m)} file over `{e['candidate']}` seed 0" for m, e in d.get("models", {}).items()
              if (e.get("shipped") or {}).get("decided_after_test")]
    if (scored := scored_ensembles(d)) and (changed := [NAMES.get(m, m) for m in study.RECIPE_ENSEMBLE if m in d.get("models", {})
                                                        and not member_seeds({"seeds": shown_recipe(d["models"][m]).get("seeds")}, scored[0][0])]):
        after.append(f"the recipe ensemble's {and_join(changed)} members (changed with the recipes after its first score)")
    after.append("two image-pipeline settings (`predict.UPSAMPLE`, `predict.dot_apart`), on the robustness benchmark's test "
                 f"digits ([appendix]({APPENDIX}#test-set-use))")
    lines += [f"Every choice was made on the {f.n_val:,}-image validation split except these, made after a test score: "
              + "; ".join(after) + f" ([appendix]({APPENDIX}#accuracy-targets-and-the-runs-made-for-them))."]
    return lines + [""]


def section_data(f: Facts) -> list[str]:
    d = f.data
    if not d:
        return ["## Step 1: the data", "", "Not run yet (stage `data`).", ""]
    sp, pc = d["split"], d["split_percent"]
    return [
        "## Step 1: the data", "",
        "| question | answer |", "|---|---|",
        f"| Samples | {d['train_samples']:,} training, {d['test_samples']:,} test |",
        f"| Problem | {d['problem']} |",
        f"| Values | {d['min']}..{d['max']} raw ({d['dtype']}); {d['normalized_min']}..{d['normalized_max']} after normalization |",
        f"| Sample shape | {d['shape'][0]} x {d['shape'][1]} x {d['channels']} = {d['features_per_sample']} values |",
        f"| Missing values | {d['missing']} |",
        f"| Labels | {', '.join(d['class_names'])}; {min(d['class_counts_train']):,} to {max(d['class_counts_train']):,} "
        "training images a digit (nearly balanced) |",
        f"| Split | train {sp['train']:,} ({pc['train']}%), validation {sp['val']:,} ({pc['val']}%), test {sp['test']:,} ({pc['test']}%) |",
        f"| Preprocessing | {d['preprocessing']} |",
        "", figure(f.root, "figures/mnist_samples.png", "training digits per class"), "",
    ]


def section_models(f: Facts) -> list[str]:
    lines = ["## Step 2: the models", "",
             "Built layer by layer from `torch.nn` in `models.py` (`python models.py` prints each layer with its output "
             "shape and parameters). Each row is the model in `weights/`, at the width it was trained with.", "",
             "| model | layers (output shape) | parameters | multiply-adds per image |", "|---|---|---|---|"]
    macs = {}
    for m in [m for m in f.shipped if m != "convnet-refit"]:
        net = load_checkpoint(f.root / "weights" / f"{m}.pt")[0]
        macs[m] = multiply_adds(net)
        lines.append(f"| {NAMES.get(m, m)} | {layer_text(net)} | {f.params(m):,} | {macs[m] / 1e6:.1f} M |")
    if "fastresnet" in macs and "resnet" in macs:
        lines += ["", f"FastResNet and QuickNet are our own answers to \"any other model?\": FastResNet puts ResNet's "
                  f"zero-initialized residual blocks where the maps are small, at {macs['resnet'] / macs['fastresnet']:.0f}x "
                  "fewer multiply-adds than ResNet-18; QuickNet is the speed benchmark's small ConvNet. "
                  f"ResNet-18 keeps torchvision's layer names; its stem was chosen in a {study.STEM_EPOCHS:g}-epoch comparison (appendix)."]
    return lines + [""]


def recipe_facts(f: Facts) -> dict:
    """Settings shared by every run of the LR sweep, from a recorded run's config."""
    r = next((r for r in results_of(f.s, study.lr_cells(f.s))), None)
    return r["config"] if r else {}


def section_training(f: Facts) -> list[str]:
    c = recipe_facts(f)
    eps = c.get("label_smoothing", 0)
    lines = ["## Step 3: training, and the learning-rate sweep", "",
             "Loss: cross-entropy between the softmax and the smoothed one-hot target, written out in `train.cross_entropy`:",
             "", "    CE = -(1/B) Σ_b Σ_k y_bk · log softmax(z_b)_k,   y = (1 - ε) · onehot + ε / K", "",
             f"with label smoothing ε = {eps:g} in training and ε = 0 for validation and test. "
             f"Unless noted (Adadelta, refits), every run: one-cycle schedule (linear warmup over {100 * c.get('warmup', 0):g}% of the steps, then linear "
             f"decay to 0), weight decay {c.get('weight_decay', 0):g} (not on BN and biases), "
             f"±{c.get('translate', 0):g} px random shifts; early stopping: the validation-best epoch is kept.", "",
             "The homework's LR grid for every model, SGD-Nesterov and (for the cheaper models) Adam; validation accuracy % "
             f"at the best epoch, **bold** the row's best, seed {c.get('seed', 0)}, every LR of a row with the same budget:", ""]
    lines += lr_table(f, with_test=False)
    lines += ["", figure(f.root, "figures/study_lr.png", "validation error per LR"), ""]
    worst = []
    for m, opt in study.lr_rows(f.s):
        rs = [r for r in (study.load_result(f.s, x.name) for x in study.lr_grid_cells(f.s, m, opt)) if r and r["status"] != "diverged"]
        if len(rs) == len(study.LRS):
            b = max(rs, key=lambda r: r["best"]["val_acc"])
            w = min(rs, key=lambda r: r["best"]["val_acc"])
            worst.append((m, opt, b["tags"]["lr"], w))
    sgd_best = {b for m, o, b, _ in worst if o == "sgd"}
    adam_best = {b for m, o, b, _ in worst if o == "adam"}
    if worst:
        low = min(worst, key=lambda t: t[3]["best"]["val_acc"])
        decades = sorted({round(math.log10(a / b)) for a in sgd_best for b in adam_best})
        lines += [f"Of the grid's LRs, SGD is best at {', '.join(f'{x:g}' for x in sorted(sgd_best, reverse=True))} for every model and Adam at "
                  f"{' or '.join(f'{x:g}' for x in sorted(adam_best, reverse=True))}: SGD's step is LR x gradient, Adam's about LR "
                  f"per weight, so Adam's good LRs sit {' to '.join(map(str, decades))} decade{'s' if max(decades) > 1 else ''} "
                  "lower. Too small an LR underfits the budget: "
                  f"{NAMES[low[0]]} with {OPT_NAMES[low[1]]} at lr {low[3]['tags']['lr']:g} reaches only "
                  f"{pct(low[3]['best']['val_acc'])}%. The LR range test and the finder's and extra LRs are in the appendix.", ""]
    lines += section_fitting(f)
    return lines


def section_fitting(f: Facts) -> list[str]:
    by = reg_groups(f)
    if not by:
        return []
    def m_(v, key):
        return statistics.mean(r["history"][-1][key] for r in by[v])

    def best_val(v):
        return statistics.mean(r["best"]["val_acc"] for r in by[v])
    lines = ["**Over- and underfitting** (ConvNet, SGD, "
             f"{study.REG_EPOCHS} epochs, {len(next(iter(by.values())))} seeds per variant; every number a mean):"]
    parts = []
    if "none" in by:
        parts.append(f"with every regularizer removed the ConvNet fits its training images to {pct(m_('none', 'train_acc'))}% "
                     f"while validation stays at {pct(best_val('none'))}% - overfitting")
    if "baseline" in by:
        parts.append(f"with them (shifts, dropout, label smoothing, weight decay) validation reaches {pct(best_val('baseline'))}%")
    if "small" in by:
        small_w = by["small"][0]["config"]["model_config"].get("width")
        small_p = count_params(build_model("convnet", width=small_w))
        parts.append(f"at width {small_w} ({small_p:,} parameters) training accuracy itself stays at "
                     f"{pct(m_('small', 'train_acc'))}% - underfitting")
    lines[0] += " " + "; ".join(parts) + "."
    aug, width = study.chosen_augmentation(f.s), study.chosen_width(f.s)
    choice = ""
    if aug and width:
        verdicts = []
        for chosen, variants in ((aug[0], study.AUGMENTATIONS), (width[0], study.CAPACITIES)):
            vals = {v: [r["best"]["val_acc"] for r in by[v]] for v in variants if v in by}
            if chosen != "baseline" and "baseline" in vals and chosen in vals:
                _, res = compare(vals, f.one_val)
                verdicts.append((chosen, res["baseline"][2]))
        if verdicts and all(tie for _, tie in verdicts):
            note = " - each a tie with the `baseline` variant, a choice within the noise"
        else:
            note = "".join(f"; `{c}` {'ties' if tie else 'beats'} the baseline on validation" for c, tie in verdicts)
        choice = f" The final runs take the best means, augmentation `{aug[0]}` and ConvNet width `{width[0]}`{note}."
    lines += ["", (choice + " The per-variant tables are in the appendix.").strip(), "",
              figure(f.root, "figures/study_regularization.png", "training vs validation error per variant"), "",
              "*Each panel: error rate, training and validation; training error, measured on augmented batches while the "
              "weights change, can lie above validation error.*", ""]
    return lines


def section_optimizers(f: Facts) -> list[str]:
    lines = ["## Step 4: the optimizer", ""]
    groups = optim_groups(f)
    if not groups:
        return lines + ["Not run yet.", ""]
    n_seeds = max(len(v) for g in groups.values() for v in g.values())
    lines += ["**Noise first.** " + one_image_note(f) + "So, in every comparison below, " + tie_rule_text(f.one_val) + ".", "",
              f"Each optimizer at its best LR from the sweep (AdamW at Adam's LR, Adadelta at {study.ADADELTA_LR:g} with "
              f"step decay), the sweep's budget, {n_seeds} seeds; validation accuracy %."
              + left_out_text(f) + ":", "",
              "| model | optimizer | LR | validation % (mean ± std) | behind the best by (validation images) | verdict |",
              "|---|---|---|---|---|---|"]
    verdicts = {}
    for m in (m for m in study.OPTIM_MODELS if m in groups):
        vals = {o: [r["best"]["val_acc"] for r in rs] for o, rs in groups[m].items()}
        best, res = compare(vals, f.one_val)
        verdicts[m] = (best, res)
        for o in OPT_NAMES:
            if o not in vals:
                continue
            gap, _, tie = res[o]
            verdict = "best mean" if o == best else ("tie" if tie else "behind")
            lines.append(f"| {NAMES[m]} | {OPT_NAMES[o]} | {groups[m][o][0]['tags']['lr']:g} | {mean_std(vals[o])} | "
                         f"{gap * f.n_val:.1f} | {verdict} |")
    lines += ["", figure(f.root, "figures/study_optimizers.png", "validation accuracy per seed and optimizer"), ""]
    reasons = {"adamw": "per-weight adaptive steps (one LR suits every layer) and weight decay decoupled from the gradient "
                        "step, so the decay does not shrink with Adam's scaling",
               "adam": "adaptive steps - each weight's step is scaled by its own gradient history, so one LR suits every "
                       "layer",
               "sgd": "the plainest update, with momentum; no per-weight state",
               "adadelta": "no LR to tune"}
    for m, (best, res) in verdicts.items():
        ties = [OPT_NAMES[o] for o, (_, _, t) in res.items() if t and o != best]
        text = f"**{NAMES[m]}: {OPT_NAMES[best]}.** It has the best mean validation accuracy"
        if ties:
            text += (f", but its lead over {and_join(ties)} is within the noise: a tie, not a finding. Kept by the rule "
                     f"(best mean) and for a reason the measurement cannot give: {reasons[best]}")
        else:
            text += f" and leads every other optimizer by more than the noise. Why it helps: {reasons[best]}"
        lines += [text + ".", ""]
    fair = fair_tables(f)
    if fair:
        lines += ["**A fairer comparison** (each optimizer tuned on its own LR grid at one seed, then compared on other "
                  "seeds; it came after the choice and changes no file in `weights/`; tables in the "
                  f"[appendix]({APPENDIX}#optimizer-comparison-in-full)):", ""]
        lines += [fair_verdict(NAMES[m], verdicts[m][0], t) for m, t in fair.items() if m in verdicts] + [""]
    else:
        done = fair_runs_done(f)
        lines += ["A fairer comparison - every optimizer tuned on its own LR grid, then compared on fresh seeds - "
                  + (f"has not finished ({done} of its runs recorded so far)" if done else "has not run yet")
                  + "; the table above gives AdamW and Adadelta LRs that were not tuned for them.", ""]
    return lines


def left_out_text(f: Facts) -> str:
    """Which models the optimizer comparison left out, and the optimizer they train with."""
    out = {m: c["optimizer"] for m in f.models if m not in study.OPTIM_MODELS and (c := study.final_choice(f.s, m))}
    if not out:
        return ""
    return (f" {and_join([NAMES[m] for m in out])} {'was' if len(out) == 1 else 'were'} left out for the cost; "
            f"{'it uses' if len(out) == 1 else 'they use'} {and_join(sorted({OPT_NAMES[o] for o in out.values()}))}, "
            "the optimizer of their best LR-table run")


def fair_verdict(name: str, chosen: str, t: dict) -> str:
    """One sentence: does the fairer comparison `t` (study.optim_fair_table) agree with the optimizer `chosen` above?"""
    rows = {r["optimizer"]: r for r in t["rows"]}
    best = t["best"]
    if best == chosen or rows.get(chosen, {}).get("tie"):
        return (f"For the {name} it agrees with the choice above: {OPT_NAMES[chosen]} "
                + ("has the best mean again." if best == chosen else f"ties the best mean ({OPT_NAMES[best]})."))
    gap = max(rows[chosen]["gap"], 0.0) / t["one_image"] if chosen in rows and rows[chosen]["gap"] is not None else None
    return (f"For the {name} it disagrees: {OPT_NAMES[best]} at lr {rows[best]['lr']:g} leads {OPT_NAMES[chosen]}"
            + (f" by {gap:.1f} validation images, beyond the noise" if gap is not None else "")
            + f"; the {name}'s later runs used {OPT_NAMES[chosen]} and were not re-run with it.")


def comparison_notes(f: Facts, b: str) -> list[str]:
    """Step 5's sentences on the summary table's other rows (QuickNet, the ensemble) and on files from later recipes."""
    out = []
    later = [(m, c.tags["attempt"]) for m in f.models if (c := study.shipped_final(f.s, m)) and c.tags.get("attempt")]
    if later:
        out.append("The " + and_join([NAMES[m] for m, _ in later]) + " rows came after test scores missed the "
                   "targets (" + "; ".join(f"{NAMES[m]}: {change_words(m, a)}" for m, a in later)
                   + f"; [appendix]({APPENDIX}#accuracy-targets-and-the-runs-made-for-them)).")
    if "quicknet" in f.shipped:
        out.append("QuickNet, whose recipe was chosen on test scores (`benchmarks/trials.py`), is left out of that choice.")
    ens, met = f.metrics.get("ensemble"), f.metrics.get(b)
    if ens and met:
        diff = round((ens["accuracy"] - met["accuracy"]) * f.n_test)
        members = sum(f.params(m) for m in f.models)
        out.append(f"The ensemble of the {len(f.models)} (mean softmax) gets "
                   + (f"{abs(diff)} more test image{'s' if abs(diff) != 1 else ''} right" if diff > 0 else
                      f"{abs(diff)} fewer test image{'s' if abs(diff) != 1 else ''} right" if diff < 0 else "as many test images right")
                   + f" than the {NAMES[b]} file ({pct(ens['accuracy'])}% against {pct(met['accuracy'])}%) with "
                   f"{members / f.params(b):.0f}x its parameters and {len(f.models)} forward passes an image"
                   + (f"; it was not chosen on validation: the ensemble that was (`{e['chosen']}`, "
                      f"{len(e['candidates'][e['chosen']]['members'])} models) scored {pct(e['test']['accuracy'])}%"
                      if (e := f.ensembles) and "test" in e else "") + ".")
    return ["", " ".join(out)] if out else []



def rerun_members(ens: dict | None) -> str:
    """' (the last: k of n members are seeds' rerun files)' when some are, else ''."""
    members = (ens or {}).get("members") or []
    k = sum("-again" in m["checkpoint"] for m in members)
    return f" (the last: {k} of its {len(members)} members are seeds' rerun files, which were scored again alone)" if k else ""

def recipes_summary(f: Facts) -> list[str]:
    """Step 5's accuracy by recipe (issue #25) from results/final_recipes.json, with each recipe's
    robustness (benchmarks/user_images.py --recipes, matched to the seed files by sha256) beside
    its MNIST accuracy, and a sentence for each trade: a recipe whose test mean beats another
    model's recipe by more than one test image while its users'-images mean falls below that
    recipe's by more than max(1 point, 2 std of its seeds)."""
    d = read_json(f.s.results / "final_recipes.json")
    if not d or not d.get("models"):
        return []
    rob = recipe_robustness(f.root)
    lines = ["", f"**Accuracy by recipe** (issue #25; [appendix]({APPENDIX}#accuracy-by-recipe)). "
                 + (f"Users' images: the top guess (no rejector) on {rob['conditions']} kinds of files made from test digits, {rob['n']} each ("
                    + "; ".join([f"{k}: {n}" for k, n in rob["fewer"].items()] + ["`benchmarks/user_images.py --recipes`",
                                                                                    "not in the test count"]) + ")." if rob else "Users' images: not measured yet."), "",
             "| model | recipe | test % (mean ± std) | target % | minutes a seed (machine) | users' images %: recipe / file | 8×8 thumbnails %: recipe / file |",
             "|---|---|---|---|---|---|---|"]
    measured = []
    for m, e in d["models"].items():
        e, now = shown_recipe(e), e
        if not e.get("candidate"):
            continue
        accs = [x["test_acc"] for x in e["seeds"]]
        part, of = measured_seeds(rob, e["seeds"]) if e.get("done") else ([], "")  # a lent GPU kept some seeds' files
        full = bool(part) and not of
        sha = rob.get("shipped", {}).get(m) if rob else None
        made = ((getattr(f, "cards", {}).get(m) or {}).get("made_from") or {}).get("sha256")  # its seed checkpoint's
        # the file as measured; else the seed checkpoint it was copied from, when measured: the same weights (calibration
        # changes the bytes, not the top guess); never a stale file's
        file = rob["by_sha"][sha] if sha and sha == file_sha256(f.root / "weights" / f"{m}.pt") else rob["by_sha"].get(made) if rob else None
        users, tiny = [g["mean"] for g in part], seeds_tiny8(part)
        side = lambda vals, key, digits: (f"{pct(statistics.mean(vals), digits)}{of} / {pct(file[key], digits) if file else '–'}"  # noqa: E731
                                          if vals else "–")
        test = mean_std(accs) if e.get("done") else f"{len(accs)} of {len(d['seeds'])} seeds done"
        later = f" (since beaten on validation by `{now['candidate']}`, refits to do)" if e is not now and now.get("candidate") else ""
        cost = (f"{(mins := statistics.mean(x['seconds'] for x in e['seeds']) / 60):.{0 if mins >= 10 else 1}f} "
                f"({', '.join(sorted({x['hardware'].split(' (')[0] for x in e['seeds']}))})") if e["seeds"] else "–"
        lines.append(f"| {NAMES.get(m, m)} | `{e['candidate']}`, {recipe_words(m, e)}{later} | {test} | "
                     f"{pct(RECIPE_TARGETS[m])} | {cost} | {side(users, 'mean', 1)} | {side(tiny, 'tiny8', 0)} |")
        if users and full:  # trades compare whole recipes only
            measured.append((f"the {NAMES.get(m, m)} recipe", e["test_mean"], users, f"the {NAMES.get(m, m)}'s"))
    ens = d.get("ensemble") or (d.get("ensembles_scored") or [None])[-1]  # the last one scored, while new members train
    scored = [pct(e["test_acc"]) + (f" ({held})" if held else "") for e, held in scored_ensembles(d)]
    lines.append(f"| Ensemble: every seed of {' + '.join(NAMES.get(m, m) for m in study.RECIPE_ENSEMBLE)} | " + (f"scored {len(scored)} times, in order" if d.get("ensemble") or not scored
                                                              else f"{len(scored)} earlier scorings; current members unscored") + " | "
                 f"{', then '.join(scored) or 'not scored yet'}{rerun_members(ens)} | {pct(RECIPE_TARGETS['ensemble'])} | – | – | – |")
    same = all(last_epoch_leader(e) in (None, e["candidate"]) for e in d["models"].values() if e.get("candidate"))
    lines += ["", f"Validation before the refits' test scores, at each run's best epoch ({'the last, which a refit keeps, gives the same leaders; ' if same else ''}"
                  f"one image = {100 * f.one_val:.2f} points):", ""]
    lines += [f"- {validation_evidence(f, m, e)}" for m, e in d["models"].items() if e.get("candidate")]
    missed = [NAMES.get(m, m) for m, e in d["models"].items()
              if shown_recipe(e).get("done") and shown_recipe(e)["test_mean"] < RECIPE_TARGETS[m]]
    if ens and ens["test_acc"] < RECIPE_TARGETS["ensemble"]:
        missed.append("the ensemble")
    seeds = [x for e in d["models"].values() for r in [e, *e.get("earlier", [])] for x in r.get("seeds") or []]
    again = [x for x in seeds if x.get("again")]
    reruns = sum(1 + len(x.get("reruns", [])) for x in again)
    pending = sum(1 for x in seeds if x.get("rerun_pending"))
    after = ((f". {len(again)} seeds were trained again{f' ({reruns} runs)' if reruns > len(again) else ''}, their files lost and "
              "needed by the ensemble (the means keep the first scores)") if again else "") \
        + (f"{'; ' if again else '. '}{pending} seed{'s' if pending > 1 else ''} awaiting a rerun" if pending else "")
    if missed:
        lines += ["", f"Missed: {and_join(missed)}{after} ([appendix]({APPENDIX}#accuracy-by-recipe))."]
    lines += recipe_trades(f, d, rob, measured)
    for m, e in d["models"].items():
        sh = e.get("shipped") or {}
        if sh.get("decided_after_test"):
            n = sum(1 for c in study.recipe_cells(f.s) if isinstance(c, study.Cell) and c.model == m)
            best = study.shipped_final(f.s, m)
            what = (f"the validation-best of {n} issue-#11 final runs (`{best.tags['attempt'] or 'final'}` seed {best.tags['seed']})"
                    if best and best.name == sh["run"] else f"the run `{sh['run']}`")
            lines += ["", f"Kept out of `weights/` after its test scores: the {NAMES.get(m, m)}'s `{e['candidate']}` seed 0 "
                          f"{sh['why_not']}; the file is {what}, not a recipe's mean."]
    return lines


def measured_seeds(rob: dict | None, seeds: list[dict]) -> tuple[list[dict], str]:
    """The users'-images records (seed_robustness) of a recipe's seeds whose files were measured, and
    the label " (k/n seeds)" when some were not ("" when all were)."""
    got = [seed_robustness(rob, x) for x in seeds] if rob else []
    part = [g for g in got if g]
    return part, ("" if len(part) == len(got) else f" ({len(part)}/{len(got)} seeds)")


def seeds_tiny8(part: list[dict]) -> list[float]:
    """The 8x8-thumbnail accuracies of measured seeds, [] unless every one has it (a mean over fewer is not the recipe's)."""
    return [g["tiny8"] for g in part] if part and all(g["tiny8"] is not None for g in part) else []


def recipe_words(m: str, e: dict) -> str:
    """A recipe's schedule for the table: its epochs, and its batch and LR where its candidate
    (study.RECIPE_CANDIDATES) changes the model's final-stage ones."""
    changes = study.RECIPE_CANDIDATES.get(m, {}).get(e["candidate"], {})
    return ", ".join([f"{e['recipe']['epochs']:g} epochs"] + [f"{w} {e['recipe'][k]:g}" for k, w in (("batch_size", "batch"), ("lr", "LR"))
                                                               if k in changes])


def trade(a: tuple, b: tuple, one_test: float) -> str | None:
    """"a beats b by x points on MNIST but reads users' images y points worse" when it does: a and b
    are (name, test mean, [users'-images mean per measured seed], name as the one beaten: "the DNN's",
    "`e15`"); worse means
    beyond max(1 point, 2 std of a's seeds). Fractions in, percent points out."""
    gain, loss = a[1] - b[1], statistics.mean(b[2]) - statistics.mean(a[2])
    noise = max(0.01, 2 * statistics.stdev(a[2])) if len(a[2]) > 1 else 0.01
    if gain > one_test and loss > noise:
        return f"{a[0]} beats {b[3]} by {100 * gain:.2f} points on MNIST but reads users' images {100 * loss:.1f} points worse"
    return None


def recipe_trades(f: Facts, d: dict, rob: dict, measured: list[tuple]) -> list[str]:
    """Step 5's robustness-for-accuracy lines (issue #25): each recipe against the one it replaced
    (test %, users' images %, 8x8 thumbnails %, from the seeds' files measured by sha256), and
    every trade (`trade`) between two models' recipes or a recipe and the one it replaced."""
    def numbers(r: dict) -> tuple[str, list, str]:
        part, of = measured_seeds(rob, r["seeds"])
        tiny = seeds_tiny8(part)
        return (f"{pct(statistics.mean(x['test_acc'] for x in r['seeds']))} / " + (f"{pct(statistics.mean(g['mean'] for g in part), 1)}{of}" if part else "–")
                + f" / {pct(statistics.mean(tiny), 0) if tiny else '–'}", [g["mean"] for g in part], of)
    pairs, compared = [], [(a, b) for a in measured for b in measured if a is not b]  # across models
    for m, e in d["models"].items():
        old = next((x for x in reversed(e.get("earlier", [])) if x.get("done")), None)
        if not (e.get("done") and old):
            continue
        (now_text, now_users, of), (old_text, old_users, _) = numbers(e), numbers(old)
        pairs.append(f"{NAMES.get(m, m)} `{e['candidate']}` {now_text} vs `{old['candidate']}` {old_text}")
        if now_users and old_users and not of:  # within a model: the recipe and the one it replaced
            a = (f"{NAMES.get(m, m)} `{e['candidate']}`", e["test_mean"], now_users, f"`{e['candidate']}`")
            b = (f"{NAMES.get(m, m)} `{old['candidate']}`", statistics.mean(x["test_acc"] for x in old["seeds"]), old_users,
                 f"`{old['candidate']}`")
            compared += [(a, b), (b, a)]
    trades = [t for a, b in compared if (t := trade(a, b, f.one_test))]
    lines = ["", "New recipe vs the one it replaced (its refits scored before the choice; test / users' images / 8×8 thumbnails, %): "
             + "; ".join(pairs) + "."] if pairs else []
    return lines + ["", "Trades (better on MNIST by over one test image, worse on users' images by over max(1 point, 2 seed std); "
                    "recipes with every seed measured): "
                    + ("; ".join(trades) if trades else "none") + "."]


def last_epoch_leader(e: dict) -> str | None:
    """The candidate with the best mean validation accuracy at its runs' last epoch (final_recipes.json
    entry e's val_last_mean), None without two candidates measured so."""
    last = e.get("val_last_mean", {})
    return max(last, key=last.get) if len(last) > 1 else None


def validation_evidence(f: Facts, m: str, e: dict) -> str:
    """One model's recipe choice as validation saw it (final_recipes.json entry e): the chosen
    candidate's lead over the runner-up in validation images, a tie or not (compare's rule), and
    the 55,000-image test means already seen then."""
    val = {k: v for k, v in e["val"].items() if v}
    chosen = e["candidate"]
    _, res = compare(val, f.one_val)
    seen = {k: statistics.mean(v) for k, v in e.get("test_seen", {}).items() if v}
    text = NAMES.get(m, m) + ": " + (f"`{chosen}`, the only candidate" if len(val) < 2 else "")
    if len(val) > 1:
        runner = min((k for k in val if k != chosen), key=lambda k: res[k][0])
        text += (f"`{chosen}` led `{runner}` by {(res[runner][0] - res[chosen][0]) / f.one_val:.1f} images "
                 f"({len(val[chosen])} vs {len(val[runner])} seeds: {'a tie' if res[runner][2] else 'beyond the noise'})")
    if seen:
        top = max(seen, key=seen.get)
        shown = [k for k in seen if k in (chosen, top) or len(val) > 1 and k == runner]  # the best seen, and the two compared
        text += ("; already on test: " + ", ".join(f"`{k}` {pct(seen[k])}" for k in shown)
                 + (" (the chosen one's the best)" if top == chosen else f"; `{chosen}` none" if chosen not in seen else ""))
    if (top := last_epoch_leader(e)) not in (None, chosen):  # the same leader is said once, above the list
        last = e["val_last_mean"]
        text += f"; at the last epoch, which a refit keeps, `{top}` leads by {(last[top] - last[chosen]) / f.one_val:.1f} images"
    return text + "."  # the earlier recipes' refit scores, also seen before: recipe_trades


def section_comparison(f: Facts) -> list[str]:
    lines = ["## Step 5: comparing the models", ""]
    best = f.best_model()
    if not best:
        return lines + ["Not run yet.", ""]
    b, res = best
    lines += [f"The best model was named in issue #11's final stage, on validation: each model's final-stage recipe of its "
              f"validation-best run ({f.data['split']['train'] if f.data else 55000:,} training images, validation-best epoch; "
              "its seeds' mean ± std):", "",
              "| model | validation % | test % | epochs | minutes a run (mean over seeds) | verdict on validation |",
              "|---|---|---|---|---|---|"]
    for m in f.models:
        runs = f.recipe_runs(m)
        met = f.metrics.get(m)
        if not runs or not met:
            continue
        gap, _, tie = res[m]
        verdict = "best" if m == b else (f"tie ({gap * f.n_val:.1f} images behind)" if tie else f"{gap * f.n_val:.1f} images behind")
        lines.append(f"| {NAMES[m]} | {mean_std([r['best']['val_acc'] for r in runs])} | {mean_std([r['test']['acc'] for r in runs])} | "
                     f"{runs[0]['epochs']:g} | "
                     f"{statistics.mean(r['seconds'] for r in runs) / 60:.1f} | {verdict} |")
    ties = [NAMES[m] for m, (_, _, t) in res.items() if t and m != b]
    behind = [NAMES[m] for m, (_, _, t) in res.items() if not t]
    best_runs = f.recipe_runs(b)
    text = (f"**The best model is the {NAMES[b]}**: the highest mean validation accuracy over its seeds "
            f"({mean_std([r['best']['val_acc'] for r in best_runs])}%)")
    if behind:
        text += f", ahead of the {and_join(behind)} by more than the noise"
    if ties:
        text += (f"; the {and_join(ties)} tie{'s' if len(ties) == 1 else ''} it on validation (a gap within the noise), "
                 f"and the {NAMES[b]} has the better mean")
    lines += ["", text + "."] + comparison_notes(f, b) + recipes_summary(f)
    lines += ["", f1_note(f), ""]
    worst_auc = max(1 - met["auc_ovr_macro"] for met in f.metrics.values() if met)
    lines += [f"Macro ROC-AUC is within {worst_auc:.1e} of 1 for every model (first table); per digit, 1 − AUC, the distance "
              "from a perfect ranking:", "", "| model | worst digit (1 − AUC) | best digit (1 − AUC) |", "|---|---|---|"]
    for m in [*f.models, "ensemble"]:
        met = f.metrics.get(m)
        if not met:
            continue
        per = {int(k): 1 - v for k, v in met["auc_per_class"].items()}
        w = max(per, key=per.get)
        bb = min(per, key=per.get)
        lines.append(f"| {NAMES[m]} | {w} ({per[w]:.2e}) | {bb} ({per[bb]:.2e}) |")
    if (f.root / AUC_GAP_FIGURE).exists():
        lines += ["", figure(f.root, AUC_GAP_FIGURE, "1 - ROC-AUC per digit and model")]
    return lines + [""]


def user_mnist_check(f: Facts) -> dict | None:
    """benchmarks/user_images.py's MNIST check (all test digits through predict.py, with the file's
    calibration), when it was run with the calibration the file in weights/ has now (else None: stale)."""
    u = read_json(f.root / "benchmarks" / "results" / "user_images.json") or {}
    mc = u.get("mnist_check")
    cal = (f.cards.get(mc["model"]) or {}).get("calibration", {}) if mc else {}
    ran = u.get("calibration", {}).get(mc["model"], {}) if mc else {}
    return mc if mc and cal and all(ran.get(k) == cal.get(k) for k in ("temperature", "threshold")) else None


def section_plots(f: Facts) -> list[str]:
    lines = ["## Step 6: plots, features, tools", ""]
    cards = {m: f.cards[m] for m in f.models if f.cards.get(m)}
    captions = sorted({curves_caption(c) for c in cards.values()})
    if len(captions) > 1:  # some runs logged the un-smoothed training cross-entropy, older ones did not
        ce = [NAMES[m] for m, c in cards.items() if all("train_ce" in h for h in history_of(c))]
        eps = max(c["train_config"].get("label_smoothing", 0) for c in cards.values())
        captions = ["left: error rate, training (augmented batches, the epoch's running mean) and validation; right: "
                    f"plain cross-entropy (ε = 0; the training loss itself used ε = {eps:g}), validation, and training where the run logged it ({and_join(ce)})"]
    refit = " A refit's validation curve is in-sample." if any(c["train_config"].get("refit") for c in cards.values()) else ""
    lines += ["**Training curves** of each file in `weights/` (`weights/<model>.json`); "
              + captions[0] + f".{refit}", ""]
    for m in f.models:
        card = f.cards.get(m)
        if not card:
            continue
        tc = card["train_config"]
        lines += [f"{NAMES[m]} ({'a refit, ' if tc.get('refit') else ''}{tc['epochs']:g} epochs, seed {tc['seed']}, [card](weights/{m}.md)):", "",
                  figure(f.root, f"figures/curves_{m}.png", f"{NAMES[m]} training curves"), ""]
    lines += ["**ROC curves and confusion matrices** (`python test_model.py --weights weights/<model>.pt --out figures`). "
              f"The ROC axes are zoomed (every curve hugs the top-left corner): true positive rate from "
              f"{test_model.ROC_YMIN:g}; false positive rate symlog, linear below {test_model.ROC_LINTHRESH:g}:", ""]
    for m in f.models:
        if f.metrics.get(m):
            lines += [f"{NAMES[m]}: " + figure(f.root, f"figures/{m}_roc.png", f"{NAMES[m]} ROC") + " "
                      + figure(f.root, f"figures/{m}_confusion_matrix.png", f"{NAMES[m]} confusion matrix"), ""]
    if "convnet" in f.models:
        lines += ["**What the convolutions learned** (`python feature_visualization.py --weights weights/convnet.pt --digit 7`): "
                  "the ConvNet's first-layer filters and the maps they make of a test 7; the other nets' are in the appendix. "
                  + filters_words(f), "",
                  figure(f.root, "figures/convnet_conv1_filters.png", "ConvNet first-layer filters") + " "
                  + figure(f.root, "figures/convnet_conv1_maps.png", "ConvNet first-layer maps"), ""]
    cards = ", ".join(f"[{NAMES.get(m, m)}](weights/{m}.md)" for m in f.shipped)
    idx = read_json(f.root / "screenshots" / "index.json") or []
    lines += ["**Tools and files.** `test_model.py` scores any file in `weights/` (accuracy, F1, ROC-AUC, confusion "
              "matrix, worst mistakes); `predict.py` reads your image"
              + (f" (in-sample calibration for refits: it accepts {pct(mc['accepted'])}% of the {NAMES.get(mc['model'], mc['model'])}'s "
                 f"test digits, {pct(mc['accuracy_accepted'])}% of them right)" if (mc := user_mnist_check(f)) and f.file_recipe(mc["model"])
                 and not (f.cards.get(mc["model"]) or {}).get("calibration", {}).get("twin") else "")
              + f". Model cards: {cards}. "
              f"{len(idx)} screenshots of training and testing are in the [appendix]({APPENDIX}#screenshots); two of them:", ""]
    best = (f.best_model() or ("", {}))[0]
    for png, alt in ((f"screenshots/training-{best}.png", f"terminal output: training the {NAMES.get(best, best)}"),
                     (f"screenshots/test-{best}.png", f"terminal output: testing the {NAMES.get(best, best)}")):
        if (f.root / png).exists():
            lines += [figure(f.root, png, alt), ""]
    return lines



def filters_words(f: Facts) -> str:
    """What the ConvNet file's first-layer filters are, measured from its weights
    (feature_visualization.filter_orientations), against the same layer freshly initialized."""
    path = f.root / "weights" / "convnet.pt"
    if not path.exists():
        return ""
    model, ckpt = load_checkpoint(path)
    o = filter_orientations(conv_layers(model)["first_conv"].weight)
    with torch.random.fork_rng():  # the baseline: the layer as build_model initializes it, mean of 10 draws
        torch.manual_seed(0)
        init = statistics.mean(filter_orientations(conv_layers(build_model(ckpt["model"], **ckpt["model_config"]))["first_conv"].weight)
                               ["oriented"] for _ in range(10))
    return (("Most of its first-layer filters are oriented (edge or bar) detectors: " if o["oriented"] >= o["filters"] / 2 else
             "First-layer filters with one direction (edge or bar detectors): ")
            + f"{o['oriented']} of {o['filters']} (structure-tensor coherence ≥ {o['min_coherence']:g}; {init:.0f} at initialization, "
            "mean of 10 draws): " + and_join([f"{n} {k}" for k, n in o["by_direction"].items()])
            + ("; all four directions are covered." if all(o["by_direction"].values()) else "."))


def report_lines(f: Facts) -> list[str]:
    return (section_summary(f) + section_data(f) + section_models(f) + section_training(f) + section_optimizers(f)
            + section_comparison(f) + section_plots(f))
