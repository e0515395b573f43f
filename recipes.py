"""Every named recipe, as data: what `python train.py --recipe NAME` trains and what the study runs.

    python train.py --recipe resnet            # ResNet-18's quick default (minutes on a 2-core CPU)
    python train.py --recipe convnet-best      # the study's validation-chosen recipe for the ConvNet
    python train.py --recipe convnet-e60       # a candidate the study compared on validation
    python train.py --list-recipes             # every name below, with its settings

A recipe is a dict of TrainConfig fields (train.py), keyed by model:
  DEFAULTS    each model's quick default: what a flag left unset means for it (`python train.py --model M`);
  FINAL       the study's final recipe, the settings its final stage chose on the validation split;
  ATTEMPTS    changes to FINAL trained beside it in the final stage ("seeds": fewer seeds where costly);
  CANDIDATES  changes to FINAL compared on validation in the recipe stage;
  BEST        which of FINAL and its ATTEMPTS won on validation in the final stage: `<model>-best`.
The recipe stage refits its chosen candidate on all 60,000 training images (`--recipe dnn-elastic6-e300
--refit`); weights/<model>.json names the run and settings each shipped file was made with.
The study names its cells from these (study_cells.py); a test checks FINAL and BEST against the
study's choices from the committed results, and trains every recipe here for a few steps.
Imports nothing of ours.
"""

# Models without their own default (the reference nets) train with BASE.
BASE = dict(optimizer="sgd", lr=0.1, epochs=1.0, batch_size=256, ema=0.0, rotate=0.0, scale=0.0)

# Quick defaults, chosen by measurement on a 2-core CPU: one-cycle SGD-Nesterov trained the BN
# networks fastest at these budgets (benchmarks/results/, results/lr_table.csv).
DEFAULTS = {
    "dnn": dict(optimizer="sgd", lr=0.1, epochs=10),
    "convnet": dict(optimizer="sgd", lr=0.1, epochs=1, batch_size=128),  # batch 128: more steps in one epoch paid off
    # Adam: the homework's command gives LR 0.001, where SGD underfits ResNet-18 in two epochs and Adam
    # does not (results/lr_table.csv, ResNet-18 rows); SGD at 0.1 is the study's final recipe. One epoch:
    # what the command gives per seed, and in how long, is in benchmarks/results/defaults.json.
    "resnet": dict(optimizer="adam", lr=0.001, epochs=1),
    "fastresnet": dict(optimizer="sgd", lr=0.1, epochs=3, batch_size=128),
    # EMA and a mild affine warp reached both of the speed benchmark's targets earliest (benchmarks/results/trials.jsonl).
    "quicknet": dict(optimizer="sgd", lr=0.2, epochs=5, batch_size=128, ema=0.99, rotate=5.0, scale=0.05),
}

AFFINE = dict(rotate=10.0, scale=0.1)  # with the default +-2 px shifts
ELASTIC6 = dict(elastic=34.0, elastic_sigma=6.0)  # Simard et al.'s strength, a smoother field than their sigma 4

# The final stage's recipes: optimizer and LR from the optimizer comparison (DNN, ConvNet) or the LR
# table (ResNets), augmentation and the ConvNet's width from the regularization stage, longer training.
FINAL = {
    "dnn": dict(optimizer="adam", lr=0.001, epochs=60, **AFFINE),
    "convnet": dict(optimizer="adamw", lr=0.01, epochs=30, **AFFINE, model_config={"width": 64}),
    "resnet": dict(optimizer="sgd", lr=0.1, epochs=10, **AFFINE),
    "fastresnet": dict(optimizer="sgd", lr=0.1, epochs=30, **AFFINE),
}
FINAL_SEEDS = (0, 1, 2)

ATTEMPTS = {
    # Ciresan et al. (2010) trained MLPs with elastic fields smoother than Simard's sigma 4; at sigma 4 the
    # ConvNet's training accuracy stalled in the regularization stage.
    "dnn": {"elastic6": dict(ELASTIC6),
            "e150": {"epochs": 150},  # ~3 s an epoch: 2.5x the schedule, the same one-cycle shape
            "elastic6-e150": {**ELASTIC6, "epochs": 150}},  # Ciresan et al.'s MLPs had both
    # Validate and ship an exponential moving average of the weights (a ~1,000-step horizon).
    "convnet": {"ema": {"ema": 0.999},
                "elastic6": dict(ELASTIC6)},
    # ResNet-18's validation-best epoch was the last or the one before on every seed: 1.5x the schedule,
    # ~36 min a seed on 2 CPU cores, so two seeds.
    "resnet": {"e15": {"epochs": 15, "seeds": (0, 1)}},
}

BEST = {"dnn": "e150", "convnet": "elastic6", "resnet": "final", "fastresnet": "final"}

CANDIDATES = {
    # The ConvNet one stage deeper (models.ConvNet's `blocks`: a residual block after the stem and each
    # conv-pool stage), ~2.4x the cost of an epoch; and the final recipe for longer.
    "convnet": {"res1-e15": {"model_config": {"width": 64, "blocks": 1}, "epochs": 15},
                "res1-elastic6-e15": {"model_config": {"width": 64, "blocks": 1}, "epochs": 15, **ELASTIC6},
                "e60": {"epochs": 60},
                "res1-e30": {"model_config": {"width": 64, "blocks": 1}, "epochs": 30},
                "res1-e60": {"model_config": {"width": 64, "blocks": 1}, "epochs": 60}},
    "resnet": {"e30": {"epochs": 30}},
    # The DNN longer, and one hidden layer deeper; batch 512 at twice the LR halves the steps.
    "dnn": {"elastic6-e300": {**ELASTIC6, "epochs": 300, "batch_size": 512, "lr": 0.002},
            "deep3-elastic6-e300": {"model_config": {"hidden": [1024, 1024, 1024]}, **ELASTIC6,
                                    "epochs": 300, "batch_size": 512, "lr": 0.002}},
}


def changes(model: str, name: str) -> dict:
    """An attempt's or candidate's changes to FINAL[model], without a seed list ({} for "final")."""
    change = {**ATTEMPTS.get(model, {}), **CANDIDATES.get(model, {})}.get(name, {})
    return {k: v for k, v in change.items() if k != "seeds"}


def default(model: str) -> dict:
    """The settings a flag left unset takes for `model`: BASE under the model's DEFAULTS."""
    return {**BASE, **DEFAULTS.get(model, {})}


def registry() -> dict[str, dict]:
    """{name: the recipe's TrainConfig fields, model included}: every model's default (its name), and
    for the studied models `<model>-final`, `<model>-best` and `<model>-<attempt or candidate>`."""
    out = {m: {"model": m, **r} for m, r in DEFAULTS.items()}
    for m, final in FINAL.items():
        out[f"{m}-final"] = {"model": m, **final}
        for name in [*ATTEMPTS.get(m, {}), *CANDIDATES.get(m, {})]:
            out[f"{m}-{name}"] = {"model": m, **final, **changes(m, name)}
        out[f"{m}-best"] = {"model": m, **final, **changes(m, BEST[m])}
    return out


def recipe(name: str) -> dict:
    """The named recipe's TrainConfig fields. KeyError with every name when there is none."""
    every = registry()
    if name not in every:
        raise KeyError(f"no recipe {name!r}; the recipes are: {', '.join(every)}")
    return dict(every[name])
