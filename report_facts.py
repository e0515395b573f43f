"""The study's recorded results, read once and turned into the facts and tables the report's
templates print. Reads only recorded files: results/ (one JSON per training run in results/cells/,
the study's design in results/study_design.json, the recipes, the LR range test, the scorings),
figures/*_metrics.json (test_model.py), weights/*.json (each shipped file's record) and
benchmarks/results/. Imports models.py (floor 1) only, to count parameters and list layers.

Every number stays a number here (accuracies as fractions); the templates format them.
"""

import json
import math
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent
STUDY_MODELS = ("dnn", "convnet", "resnet", "fastresnet")
OURS = ("fastresnet", "quicknet")
NAMES = {"dnn": "DNN", "convnet": "ConvNet", "resnet": "ResNet-18", "fastresnet": "FastResNet (ours)",
         "quicknet": "QuickNet (ours)", "convnet-refit": "ConvNet, trained on all training images", "ensemble": "Ensemble"}
OPT_NAMES = {"sgd": "SGD-Nesterov", "adam": "Adam", "adamw": "AdamW", "adadelta": "Adadelta"}
# What makes two runs the same recipe (seed, run name, output folders and the refit flag aside).
RECIPE_KEYS = ("model", "model_config", "lr", "epochs", "batch_size", "optimizer", "schedule", "warmup", "weight_decay",
               "label_smoothing", "augment", "translate", "rotate", "scale", "elastic", "elastic_sigma", "ema")
# Flags of a recorded command that say where a run wrote, not how it trained: left out of the commands shown.
WHERE_FLAGS = ("--out", "--run-name", "--weights-dir")
# The image pipeline's settings for people's photos that were set on the robustness benchmark's images (made from test digits).
PIPELINE_SET_ON_TEST = ("predict.UPSAMPLE", "predict.dot_apart")
F1_SHOWN = 0.001  # the LR table shows macro F1 beside accuracy where they differ by more than a tenth of a point


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def mean_std(values: list[float]) -> dict:
    """{"mean", "std" (sample; 0 for one value), "n", "values"}."""
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def compare(groups: dict, one_image: float, k: float) -> dict:
    """{key: {"gap", "noise", "verdict": best | tie | behind}} for {key: mean_std(...)}: a gap to the best
    mean is a tie when it is at most k standard errors of the difference of the two means (from the
    seeds' spread) and never less than one image (one_image, as an accuracy)."""
    best = max(groups, key=lambda g: groups[g]["mean"])
    b = groups[best]
    out = {}
    for g, x in groups.items():
        se = math.sqrt(b["std"] ** 2 / b["n"] + x["std"] ** 2 / x["n"])
        gap, noise = b["mean"] - x["mean"], max(k * se, one_image)
        out[g] = {"gap": gap, "images": gap / one_image, "noise": noise,
                  "verdict": "best" if g == best else "tie" if gap <= noise + 1e-12 else "behind"}
    return out


def clean_command(command: str) -> str:
    """A recorded train.py command without the flags that only say where it wrote."""
    words, out, skip = command.split(), [], False
    for w in words:
        if skip:
            skip = False
        elif w in WHERE_FLAGS:
            skip = True
        else:
            out.append(w)
    return " ".join(out)


def history(rows: list[dict]) -> list[dict]:
    """A per-epoch history as floats (weights/*.json stores strings)."""
    return [{k: float(v) for k, v in h.items() if v not in ("", None)} for h in rows]


def architecture(card: dict) -> dict:
    """{"params", "madds", "layers": [part with output shape, ...]} of the model a card records, built
    from its model_config by models.py (random weights: only the shapes are read)."""
    import torch

    from models import build_model, count_params, probe
    model = build_model(card["model"], **(card.get("model_config") or {}))
    parts, rows, madds = [], [], [0]
    for child in model.children():
        if isinstance(child, torch.nn.Sequential) and all(not list(c.children()) for c in child.children()):
            parts += list(child.children())
        else:
            parts.append(child)
    parts = [p for p in parts if not isinstance(p, torch.nn.Identity) and not (isinstance(p, torch.nn.Dropout) and p.p == 0)]

    def count(mod, _i, out):
        if isinstance(mod, torch.nn.Conv2d):
            madds[0] += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            madds[0] += mod.in_features * mod.out_features

    def name(mod) -> str:
        if isinstance(mod, torch.nn.Conv2d):
            return f"conv {mod.kernel_size[0]}x{mod.kernel_size[1]}" + (f"/{mod.stride[0]}" if mod.stride[0] > 1 else "")
        kids = list(mod.children())
        short = {"MaxPool2d": "pool", "BatchNorm2d": "BN", "BatchNorm1d": "BN", "AdaptiveAvgPool2d": "avgpool"}
        if not kids:
            return short.get(type(mod).__name__, type(mod).__name__)
        kinds = [type(c).__name__ for c in kids]
        if isinstance(mod, torch.nn.Sequential) and all(not list(c.children()) for c in kids):
            return "-".join(name(c) for c in kids).replace("conv 3x3-", "conv-")
        if isinstance(mod, torch.nn.Sequential) and len(set(kinds)) == 1:
            return f"{len(kinds)}×{kinds[0]}"
        return "[" + ", ".join(name(c) for c in kids) + "]" if isinstance(mod, torch.nn.Sequential) else type(mod).__name__

    def shape(mod, _i, out):
        text = name(mod)
        rows.append(text if text in ("BN", "ReLU", "Dropout", "Flatten") else text + " " + "x".join(map(str, out.shape[1:])))

    hooks = {m: count for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    probe(model, hooks)
    probe(model, {p: shape for p in parts})
    merged = []  # BN, ReLU, Dropout, Flatten joined to their neighbours: "BN-ReLU"
    for text in rows:
        plain = text in ("BN", "ReLU", "Dropout", "Flatten")
        if plain and merged and merged[-1][1]:
            merged[-1] = (merged[-1][0] + "-" + text, True)
        else:
            merged.append((text, plain))
    maps = [r.rsplit(" ", 1)[1] for r in rows if " " in r and r.rsplit(" ", 1)[1].count("x") == 2]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][:2]
    field = None
    if len(convs) == 2:  # the input window one unit of the first and of the second conv layer sees
        k1, s1, k2 = convs[0].kernel_size[0], convs[0].stride[0], convs[1].kernel_size[0]
        field = {"first": k1, "second": k1 + (k2 - 1) * s1, "inputs": convs[1].in_channels}
    return {"params": count_params(model), "madds": madds[0], "layers": [t for t, _ in merged],
            "maps": [m.split("x", 1)[1] for m in maps], "field": field}


class Study:
    """The recorded study, read once: raw records as attributes, facts as methods."""

    def __init__(self, root: Path = ROOT):
        self.root = root
        res = root / "results"
        self.data = read_json(res / "data_step1.json") or {}
        self.design = read_json(res / "study_design.json") or {}
        self.recipes = read_json(res / "final_recipes.json") or {}
        self.lr_find = read_json(res / "lr_find.json") or {}
        self.evaluation = read_json(res / "evaluation.json") or {}
        self.runs = {p.stem: json.loads(p.read_text()) for p in sorted((res / "cells").glob("*.json"))}
        have = sorted(p.stem for p in (root / "weights").glob("*.json") if p.with_suffix(".pt").exists())
        self.shipped = [m for m in (*STUDY_MODELS, "quicknet") if m in have] + [m for m in have if m not in (*STUDY_MODELS, "quicknet")]
        self.models = [m for m in STUDY_MODELS if m in self.shipped]
        self.cards = {m: read_json(root / "weights" / f"{m}.json") for m in self.shipped}
        self.metrics = {m: read_json(root / "figures" / f"{m}_metrics.json") for m in (*self.shipped, "ensemble")}
        trials = root / "benchmarks" / "results" / "trials.jsonl"
        self.trials = [json.loads(line) for line in trials.read_text().splitlines() if line.strip()] if trials.exists() else []
        split = self.data.get("split", {})
        self.one_val = 1 / split["val"] if split.get("val") else None
        self.one_test = 1 / split["test"] if split.get("test") else None
        self.tie_k = self.design.get("fair_optimizers", {}).get("tie_standard_errors", 2.0)

    # -- runs --------------------------------------------------------------------------------------
    def baseline(self, model: str, opt: str, lr: float, epochs: float, seed: int) -> dict | None:
        """The LR-sweep / optimizer-comparison run of these settings (no variant), None if not run."""
        for r in self.runs.values():
            t = r["tags"]
            if (t.get("variant") == "baseline" and t["model"] == model and t["optimizer"] == opt and t["seed"] == seed
                    and math.isclose(t["lr"], lr) and r["config"]["epochs"] == epochs):
                return r
        return None

    def val(self, r: dict | None) -> float | None:
        return r["best"]["val_acc"] if r and r["status"] != "diverged" else None

    def twin(self, config: dict) -> dict | None:
        """The lowest-seed run of the same recipe with a held-out validation split (not a refit)."""
        same = [r for r in self.runs.values() if not r["config"].get("refit") and r.get("history")
                and all(r["config"].get(k) == config.get(k) for k in RECIPE_KEYS)]
        return min(same, key=lambda r: (r["tags"]["seed"], r["name"]), default=None)

    def shipped_run(self, m: str) -> dict | None:
        card = self.cards[m]
        return self.runs.get((card.get("made_from") or {}).get("cell") or card["train_config"].get("run_name"))

    def shipped_file(self, m: str) -> dict:
        """What made weights/<m>.pt: its run's name, seed, epochs, training images (all | train), the recipe or
        final-stage variant it belongs to, and of_recipe: whether it is one of the seeds Step 2's mean is over (a
        seed of the chosen recipe, or, without a recipe stage, of the runs the mean comes from)."""
        c, run = self.cards[m]["train_config"], self.shipped_run(m)
        tags = run["tags"] if run else {}
        return {"run": c.get("run_name"), "seed": c["seed"], "epochs": c["epochs"], "images": "all" if c.get("refit") else "train",
                "label": tags.get("candidate") or tags.get("attempt") or ("final" if tags.get("kind") == "final" else None),
                "kind": tags.get("kind"), "of_recipe": self.file_is_recipe_seed(m) or m not in (self.recipes.get("models") or {})}

    def candidates(self, m: str) -> int:
        """How many full-length recipes of model m were compared on validation: the recipe stage's candidates,
        else the final stage's variants."""
        e = (self.recipes.get("models") or {}).get(m)
        if e and e.get("val"):
            return len(e["val"])
        return len({r["tags"].get("attempt") for r in self.runs.values() if r["tags"].get("kind") == "final"
                    and r["tags"]["model"] == m and not r["config"].get("refit")})

    def later(self) -> dict:
        """{run name: (the recipe seed's first run, which training of that seed: 2, 3, ...)} for the later
        trainings with the same settings and seed that results/final_recipes.json lists under a seed's
        "later" (chosen recipes and earlier ones)."""
        chosen = [r for e in (self.recipes.get("models") or {}).values() for r in (e, *e.get("earlier", []))]
        return {y["cell"]: (x["cell"], k + 2) for r in chosen for x in r.get("seeds", [])
                for k, y in enumerate(x.get("later", []))}

    # -- Step 2 ----------------------------------------------------------------------------------
    def file_is_recipe_seed(self, m: str) -> bool:
        """Whether weights/<m>.pt is one of the chosen recipe's seeds (its first run or a later one)."""
        e = (self.recipes.get("models") or {}).get(m) or {}
        run = self.shipped_run(m)
        names = {y["cell"] for x in e.get("seeds", []) for y in (x, *x.get("later", []))}
        return bool(e.get("done") and run and run["name"] in names)

    def seed_scores(self, m: str, of_file: bool = False) -> dict | None:
        """The test accuracies over seeds of the model's chosen recipe (retrained on all training images, each
        seed's first score) where the recipe stage has one, else (and with of_file, unless the file is one of
        those seeds) of the recipe that made weights/<m>.pt (held-out validation, validation-best epoch),
        else the file alone."""
        e = (self.recipes.get("models") or {}).get(m)
        if e and e.get("done") and e.get("seeds") and not of_file or self.file_is_recipe_seed(m):
            return {**mean_std([x["test_acc"] for x in e["seeds"]]), "images": "all", "recipe": e.get("candidate")}
        run = self.shipped_run(m)
        if run:
            same = [r["test"]["acc"] for r in self.runs.values() if r["tags"].get("variant") == run["tags"].get("variant")
                    and r["tags"]["model"] == m and r.get("test") and r["config"].get("refit") == run["config"].get("refit")]
            if same:
                return {**mean_std(same), "images": "all" if run["config"].get("refit") else "train", "recipe": None}
        met = self.metrics.get(m)
        return {**mean_std([met["accuracy"]]), "images": "train", "recipe": None} if met else None

    def accuracy_table(self) -> list[dict]:
        rows = []
        for m in [m for m in self.shipped if m in (*STUDY_MODELS, *OURS)]:
            arch = architecture(self.cards[m])
            rows.append({"model": m, "name": NAMES[m], **arch, "seeds": self.seed_scores(m), "file": self.metrics.get(m)})
        return rows

    # -- Step 4 ----------------------------------------------------------------------------------
    def grid_best_lr(self, m: str, opt: str, lrs: list[float], epochs: float, seed: int = 0) -> float | None:
        scored = [(self.val(self.baseline(m, opt, lr, epochs, seed)), lr) for lr in lrs]
        scored = [(v, lr) for v, lr in scored if v is not None]
        return max(scored)[1] if scored else None

    def optimizer_table(self) -> dict:
        """Per model of the comparison: each optimizer at the sweep's LR (the choice) and at its own tuned LR."""
        d, fair = self.design.get("optimizers", {}), self.design.get("fair_optimizers", {})
        grid, out = self.design.get("lr_grid", {}), {}
        for m in d.get("models", []):
            if m not in self.models:
                continue
            ep = grid["epochs"][m]
            lr_sgd, lr_adam = (self.grid_best_lr(m, o, grid["lrs"], ep) for o in ("sgd", "adam"))
            first = {"sgd": lr_sgd, "adam": lr_adam, "adamw": lr_adam, "adadelta": d["adadelta_lr"]}
            rows, g1, g2 = {}, {}, {}
            for opt in fair.get("optimizers", []):
                v1 = [self.val(self.baseline(m, opt, first[opt], ep, s)) for s in d["seeds"]]
                tuned = self.grid_best_lr(m, opt, fair["lrs"], ep, fair["tune_seed"])
                v2 = [self.val(self.baseline(m, opt, tuned, ep, s)) for s in fair["seeds"]] if tuned else []
                if v1 and None not in v1:
                    g1[opt] = mean_std(v1)
                if v2 and None not in v2:
                    g2[opt] = mean_std(v2)
                rows[opt] = {"optimizer": opt, "lr": first[opt], "tuned_lr": tuned}
            c1 = compare(g1, self.one_val, self.tie_k) if g1 else {}
            c2 = compare(g2, self.one_val, self.tie_k) if g2 else {}
            for opt, row in rows.items():
                row.update(first=g1.get(opt), first_cmp=c1.get(opt), fair=g2.get(opt), fair_cmp=c2.get(opt))
            chosen = (self.cards.get(m) or {}).get("train_config", {}).get("optimizer")
            out[m] = {"rows": list(rows.values()), "epochs": ep, "chosen": chosen,
                      "fair_best": next((o for o, c in c2.items() if c["verdict"] == "best"), None),
                      "first_best": next((o for o, c in c1.items() if c["verdict"] == "best"), None)}
        return out

    def seed_spread(self) -> float | None:
        """The largest std of validation accuracy over seeds among the optimizer comparisons' groups."""
        spreads = [x[k]["std"] for t in self.optimizer_table().values() for x in t["rows"] for k in ("first", "fair") if x.get(k)]
        return max(spreads) if spreads else None

    # -- Step 5 ----------------------------------------------------------------------------------
    def lr_table(self) -> list[dict]:
        """The homework's grid: per (model, optimizer) row, the validation accuracy and F1 at each LR (seed 0)."""
        g = self.design.get("lr_grid")
        if not g:
            return []
        rows = []
        for m, opt in [(m, o) for o in ("sgd", "adam") for m in self.models]:
            at = [self.baseline(m, opt, lr, g["epochs"][m], g["seed"]) for lr in g["lrs"]]
            if not any(at):
                continue
            vals = [self.val(r) for r in at]
            best = max((v for v in vals if v is not None), default=None)
            extra = sorted((r["tags"]["lr"], self.val(r)) for r in self.runs.values()
                           if r["tags"].get("variant") == "baseline" and r["tags"]["model"] == m and r["tags"]["optimizer"] == opt
                           and r["tags"]["seed"] == g["seed"] and r["config"]["epochs"] == g["epochs"][m]
                           and not any(math.isclose(r["tags"]["lr"], lr) for lr in g["lrs"]))
            found = self.lr_find.get(f"{m}-{opt}")
            rows.append({"model": m, "optimizer": opt, "epochs": g["epochs"][m], "best": best,
                         "grid": [{"lr": lr, "acc": v, "f1": r["best"]["val_f1"] if v is not None else None,
                                    "f1_differs": v is not None and abs(v - r["best"]["val_f1"]) > F1_SHOWN,
                                    "diverged": bool(r) and v is None} for lr, v, r in zip(g["lrs"], vals, at)],
                         "extra": [{"lr": lr, "acc": v} for lr, v in extra],
                         "suggested": float(f"{found['suggested_lr']:.0e}") if found else None})
            best_lr = next((c["lr"] for c in rows[-1]["grid"] if c["acc"] is not None and c["acc"] == best), None)
            rows[-1]["below"] = bool(found and best_lr and rows[-1]["suggested"] < best_lr)
            # an LR off the grid did as well (the same count of validation images right) or better
            rows[-1]["off_grid"] = any(x["acc"] is not None and round(x["acc"] / self.one_val) >= round(best / self.one_val)
                                       for x in rows[-1]["extra"]) if best is not None else False
        return rows

    def best_model(self) -> dict | None:
        """Per study model, its chosen recipe's held-out validation accuracies (the runs with a validation
        split) and its seeds' test scores; the best model is the best validation mean (compare())."""
        rows = {}
        for m in self.models:
            e = (self.recipes.get("models") or {}).get(m)
            run = self.shipped_run(m)
            if e and e.get("done"):
                v = e["val"][e["candidate"]]
                config = e["recipe"]
            elif run:
                same = [r for r in self.runs.values() if r["tags"].get("variant") == run["tags"].get("variant")
                        and r["tags"]["model"] == m and not r["config"].get("refit")]
                v, config = [r["best"]["val_acc"] for r in same], run["config"]
            else:
                continue
            if not v:  # no run of this recipe held the validation split out
                continue
            xeon = [r["seconds"] / r["epochs"] for r in self.runs.values() if r["tags"].get("kind") == "final"
                    and r["tags"]["model"] == m and not r["config"].get("refit") and r.get("hardware") == self.final_machine()]
            rows[m] = {"model": m, "val": mean_std(v), "test": self.seed_scores(m), "config": config, "candidates": self.candidates(m),
                       "augmentation": [config.get(k) for k in ("augment", "translate", "rotate", "scale", "elastic", "elastic_sigma")],
                       "recipe": e.get("candidate") if e else None, "epoch_minutes": statistics.mean(xeon) / 60 if xeon else None}
        if not rows:
            return None
        verdicts = compare({m: r["val"] for m, r in rows.items()}, self.one_val, self.tie_k)
        for m, r in rows.items():
            r["cmp"] = verdicts[m]
        return {"rows": list(rows.values()), "best": next(m for m, c in verdicts.items() if c["verdict"] == "best")}

    def final_machine(self) -> str | None:
        """The one machine every final-stage run trained on (their times compare), else None."""
        hw = {r.get("hardware") for r in self.runs.values() if r["tags"].get("kind") == "final"}
        return hw.pop() if len(hw) == 1 else None

    def regularization(self) -> list[dict]:
        """Per variant of the over/underfitting study: its overrides, and over seeds the last epoch's training
        accuracy and the best validation accuracy."""
        d = self.design.get("regularization", {})
        out = []
        for v, overrides in d.get("variants", {}).items():
            rs = [r for r in self.runs.values() if r["tags"]["model"] == d["model"]
                  and r["tags"].get("variant") == ("reg" if v == "baseline" else v) and r["config"]["epochs"] == d["epochs"]]
            if rs:
                out.append({"variant": v, "overrides": overrides, "train": mean_std([r["history"][-1]["train_acc"] for r in rs]),
                            "val": mean_std([r["best"]["val_acc"] for r in rs]), "records": rs})
        return out

    # -- Step 6 ----------------------------------------------------------------------------------
    def curve_source(self, m: str) -> dict:
        """Which recorded run a model's training curves show: its own run when it had a validation split,
        else the same recipe's held-out run (lowest seed), else its own training curve alone."""
        card = self.cards[m]
        if not card["train_config"].get("refit"):
            return {"kind": "own", "config": card["train_config"], "history": history(card.get("history", []))}
        twin = self.twin(card["train_config"])
        if twin:
            return {"kind": "twin", "config": twin["config"], "history": twin["history"], "seed": twin["tags"]["seed"]}
        return {"kind": "train_only", "config": card["train_config"], "history": history(card.get("history", []))}

    def test_use(self) -> dict:
        """How often the test set was scored: at the end of training runs, scorings of saved files
        (a test-time-augmentation pass counted as a second), and the speed benchmark's trial curves."""
        passes = lambda c: c["models_scored"] * (2 if "--tta" in c.get("command", "").split() else 1)  # noqa: E731
        ev = self.evaluation
        commands = ev.get("commands", []) + [c for e in ev.get("earlier", []) for c in e["commands"]]
        scored = {w for c in ev.get("commands", []) for w in c["command"].split() if w.endswith(".pt")}
        extra = [m for m in self.shipped if self.metrics.get(m) and f"weights/{m}.pt" not in scored]
        for p in sorted((self.root / "results").glob("*.json")):
            d = read_json(p) if p.name != "evaluation.json" else None
            if isinstance(d, dict) and isinstance(d.get("commands"), list) and all("models_scored" in c for c in d["commands"]):
                commands += d["commands"]
        runs = sum(1 for r in self.runs.values() if r.get("test"))
        files = sum(passes(c) for c in commands) + len(extra)
        trial_points = sum(len(t.get("curve", [])) for t in self.trials)
        return {"runs": runs, "files": files, "trials": len(self.trials), "trial_points": trial_points,
                "total": runs + files + trial_points}

    def after_test(self) -> dict:
        """The choices made after a test score was seen, as data: the final stage's extra variants, the
        recipes chosen after an earlier recipe's refits were scored, the shipped files kept after a
        comparison on test, and the recipe ensemble's changes."""
        variants = {}
        for r in self.runs.values():
            a = r["tags"].get("attempt")
            if a and a != "refit" and r["tags"].get("kind") == "final":
                variants.setdefault(r["tags"]["model"], set()).add(a)
        recipes = []
        for m, e in (self.recipes.get("models") or {}).items():
            seen = [x["candidate"] for x in e.get("earlier", []) if x.get("seeds")]
            if seen:
                recipes.append({"model": m, "chosen": e["candidate"], "after": seen})
        kept = [{"model": m, "recipe": e.get("candidate")} for m, e in (self.recipes.get("models") or {}).items()
                if (e.get("shipped") or {}).get("decided_after_test")]
        out = {"variants": {m: sorted(v) for m, v in variants.items()}, "recipes": recipes, "kept": kept,
               "ensemble_changed": len(self.recipes.get("ensembles_scored") or []) > 1, "trials": bool(self.trials),
               "pipeline": list(PIPELINE_SET_ON_TEST)}
        out["count"] = (len(out["variants"]) + len(recipes) + len(kept) + out["ensemble_changed"] + out["trials"]
                        + bool(out["pipeline"]))
        return out

    def user_images(self, m: str, worst: int = 3) -> dict | None:
        """benchmarks/user_images.py's digits this model reads least often and the non-digits it refuses least."""
        d = read_json(self.root / "benchmarks" / "results" / "user_images.json")
        if not d or m not in d.get("models", []):
            return None
        conds = [{"name": k, "note": c.get("note", ""), "n": c.get("n"), "kind": c["kind"], **c["models"][m]}
                 for k, c in d["conditions"].items() if m in c.get("models", {})]
        digits = sorted((c for c in conds if c["kind"] != "none"), key=lambda c: (c["right"], c["name"]))[:worst]
        return {"digits": digits, "none": sorted((c for c in conds if c["kind"] == "none"), key=lambda c: c["refused"])}

    def confusions(self, m: str, k: int = 3) -> list[tuple[int, int, int]]:
        cm = (self.metrics.get(m) or {}).get("confusion_matrix") or []
        pairs = [(cm[i][j], i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i][j]]
        return [(i, j, n) for n, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2]))[:k]]
