"""The report's figures, drawn from recorded data by `python study_report.py --figures`, and the
terminal screenshots (screenshots/*.png from results/logs/*.txt, `--screenshots`).

    figures/curves_<model>.png          loss, accuracy and F1, training and validation, per epoch
    figures/features_<model>_layer<k>.png  what the first and second layers learned, with colour scales
    figures/study_lr.png, study_optimizers.png, study_regularization.png
    figures/models_roc_1-auc.png        1 - ROC-AUC per digit, every shipped model and the ensemble

The curves come from the runs' recorded histories (weights/<model>.json, results/cells/*.json); the
features from weights/<model>.pt and one MNIST test digit (DATA_DIR). Figures are committed; the
tests never redraw them.
"""

import json
import math
import os
import re
import statistics
import textwrap
from pathlib import Path

from plots import pyplot
from report_facts import NAMES, OPT_NAMES, ROOT, Study

DIGIT = 7  # the test digit whose feature maps the report shows
VALIDATION = "validation (held-out split, end of epoch)"


def save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return str(path.relative_to(path.parents[1]))


def curves(s: Study, m: str) -> str | None:
    """figures/curves_<m>.png: loss, and accuracy and macro F1 as error on a log axis, per epoch, training and
    validation, from the run curve_source() names; a run without a validation split is drawn as training only."""
    src = s.curve_source(m)
    h, c = src["history"], src["config"]
    if not h:
        return None
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    plt = pyplot()
    ep = [x["epoch"] for x in h]
    ce = all("train_ce" in x for x in h)  # the plain cross-entropy of the training batches: validation's quantity
    err = lambda key: [max(100 * (1 - x[key]), 1e-2) for x in h]  # noqa: E731  (no error at all: drawn at the floor)
    loss = "loss: cross-entropy (log)" if ce else f"loss (log): training's label-smoothed (ε {c.get('label_smoothing', 0):g}),\nvalidation's plain cross-entropy"
    shown = ((loss, [x["train_ce" if ce else "train_loss"] for x in h], [x["val_loss"] for x in h]),
             ("error % = 100 - accuracy (log)", err("train_acc"), err("val_acc")),
             ("100 - macro F1 % (log)", err("train_f1"), err("val_f1")))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    for ax, (title, train, val) in zip(axes, shown):  # the training curve: what the model saw while it trained
        ax.plot(ep, train, label=f"training: running mean over the epoch's {'augmented ' if c.get('augment') else ''}batches")
        if src["kind"] != "train_only":
            ax.plot(ep, val, label=VALIDATION)
        ax.set(yscale="log", xlabel="epoch")
        ax.set_title(title, fontsize=10)
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # labelled 0.1, 0.2, 0.5, 1, 2, 5 ... in plain numbers
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=9)
    what = {"own": "the run that made this file (validation split held out)",
            "twin": "the same recipe with the validation split held out (the file itself trained on all training images)",
            "train_only": "training only: this run trained on all training images, no validation split"}[src["kind"]]
    fig.suptitle(f"{NAMES.get(m, m)}, {OPT_NAMES.get(c['optimizer'], c['optimizer'])} lr {c['lr']:g}, {c['epochs']:g} epochs, seed {c['seed']}: {what}",
                 fontsize=9)
    return save(fig, s.root / "figures" / f"curves_{m}.png")


def panels(fig, top: float, images, cmap: str, label: str, cols: int, cell: float, first=None, symmetric: bool = False,
           titles=None) -> float:
    """Draw images (N, H, W) as square tiles `cell` inches wide, cols to a row, from `top` inches below the top of fig,
    on one shared colour scale with its colour bar at the right; first: the input image, in grey on its own scale.
    Returns the inches the rows take. save() crops the figure to what is drawn."""
    import numpy as np
    ims = [np.asarray(i, dtype=float) for i in images]
    v = max(abs(i).max() for i in ims) or 1.0
    lo, hi = (-v, v) if symmetric else (min(i.min() for i in ims), max(i.max() for i in ims))
    (w, h), dx, dy = fig.get_size_inches(), cell * 1.08, cell * (1.3 if titles else 1.08)
    tiles, skip = ([first] if first is not None else []) + ims, int(first is not None)
    for k, im in enumerate(tiles):
        ax = fig.add_axes(((k % cols) * dx / w, (h - top - (k // cols) * dy - cell) / h, cell / w, cell / h))
        ax.axis("off")
        if k < skip or titles:
            ax.set_title("input" if k < skip else titles[k - skip], fontsize=6, pad=2)
        shown = ax.imshow(im, cmap="gray", aspect="equal") if k < skip else ax.imshow(im, cmap=cmap, vmin=lo, vmax=hi, aspect="equal")
    height = math.ceil(len(tiles) / cols) * dy
    fig.colorbar(shown, cax=fig.add_axes(((cols * dx + 0.1) / w, (h - top - height + dy - cell) / h, 0.15 / w, (height - dy + cell) / h)),
                 label=label)
    return height


def features(s: Study, m: str, digit: int = DIGIT, n_maps: int = 31, n_filters: int = 16, n_kernels: int = 8) -> list[str]:
    """figures/features_<m>_layer1.png and _layer2.png: each layer's filters (shared colour scale, 0 at the centre; the
    second layer's as n_filters filters' kernels on their n_kernels strongest input channels, by L2 norm) and n_maps of
    the layer's maps of the first test image of `digit` (before BN and ReLU), all as square tiles."""
    import torch

    from data import load_raw, normalize
    from models import conv_layers, load_checkpoint
    model, ckpt = load_checkpoint(s.root / "weights" / f"{m}.pt")
    plt = pyplot()
    layers = conv_layers(model)
    if not layers:  # the DNN: its first layer's weight rows, as 28x28 images
        w = model.first_linear.weight.detach().float()[:n_maps + 1].reshape(-1, 28, 28)
        fig = plt.figure(figsize=(8 * 1.08 + 0.6, 5))
        panels(fig, 0.5, w, "RdBu_r", "weight", 8, 1.0, symmetric=True)
        fig.suptitle(f"{NAMES[m]}, first layer: {len(w)} of its {model.first_linear.out_features} units' weights over the image")
        return [save(fig, s.root / "figures" / f"features_{m}_layer1.png")]
    _, _, x_te, y_te, _ = load_raw("mnist", os.environ.get("DATA_DIR"), download=False, parts=("test",))
    i = int(torch.nonzero(y_te == digit)[0])
    norm = ckpt["normalization"]
    x = normalize(x_te[i:i + 1], norm["mean"], norm["std"]).reshape(1, 1, 28, 28).float()
    maps = {}
    hooks = [mod.register_forward_hook(lambda _m, _i, o, k=k: maps.__setitem__(k, o.detach().float()[0]))
             for k, mod in layers.items()]
    with torch.no_grad():
        model.eval()(x)
    for hk in hooks:
        hk.remove()
    out, cols, cell = [], 16, 0.55
    for n, key in enumerate(("first_conv", "second_conv"), start=1):
        w = layers[key].weight.detach().float()  # (out, in, k, k)
        fmap = maps[key][:n_maps]
        if w.shape[1] == 1:  # one input channel: the filters themselves
            filt, what, titles = w[:, 0], f"{len(w)} of {w.shape[0]} filters ({w.shape[2]}x{w.shape[3]})", None
        else:  # many: some filters, each as its kernels on its strongest input channels (f: filter, in: input channel)
            k = torch.linalg.vector_norm(w[:n_filters], dim=(2, 3)).argsort(dim=1, descending=True)[:, :n_kernels]  # (filters, k)
            filt = torch.stack([w[i, k[i]] for i in range(len(k))]).flatten(0, 1)  # (filters * k, kh, kw)
            what = (f"{len(k)} of {w.shape[0]} {w.shape[2]}x{w.shape[3]} filters, each on its {n_kernels} strongest of "
                    f"{w.shape[1]} input channels (f: filter, in: input channel)")
            titles = [f"f{i} in{int(c)}" for i in range(len(k)) for c in k[i]]
        fig, title = plt.figure(figsize=(cols * cell * 1.08 + 1.2, 12)), textwrap.fill(
            f"{NAMES[m]}, layer {n}: {what}; below, {len(fmap)} of the layer's maps of a test {digit} ({fmap.shape[1]}x{fmap.shape[2]})", 120)
        fig.suptitle(title, fontsize=9, y=1 - 0.1 / 12)
        h1 = panels(fig, top := 0.45 + 0.15 * title.count("\n"), filt, "RdBu_r", "weight", cols, cell, symmetric=True, titles=titles)
        panels(fig, top + h1 + 0.3, fmap, "viridis", "conv output\n(before BN and ReLU)", cols, cell, first=x[0, 0])
        out.append(save(fig, s.root / "figures" / f"features_{m}_layer{n}.png"))
    return out


def study_lr(s: Study) -> str | None:
    rows = s.lr_table()
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for r in rows:
        pts = [(c["lr"], 100 * (1 - c["acc"])) for c in r["grid"] if c["acc"] is not None]
        ax.plot(*zip(*pts), "o-" if r["optimizer"] == "sgd" else "s--", label=f"{NAMES[r['model']]}, {OPT_NAMES[r['optimizer']]}")
    ax.set(xscale="log", yscale="log", xlabel="peak learning rate", ylabel="validation error % (log)",
           title="Validation error per learning rate (seed 0, each row's own budget)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return save(fig, s.root / "figures" / "study_lr.png")


def study_optimizers(s: Study) -> str | None:
    table = s.optimizer_table()
    if not table:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4.2), squeeze=False)
    for ax, (m, t) in zip(axes[0], table.items()):
        for i, row in enumerate(t["rows"]):
            for dx, key, color, label in ((-0.12, "first", "C0", "at the sweep's LR"), (0.12, "fair", "C1", "at its own tuned LR")):
                if row.get(key):
                    vals = [100 * v for v in row[key]["values"]]
                    ax.plot([i + dx] * len(vals), vals, "o", color=color, alpha=0.6, label=label if i == 0 else None)
                    ax.errorbar([i + dx + 0.06], [statistics.mean(vals)], yerr=[statistics.pstdev(vals)], fmt="_", color=color, capsize=3)
        ax.set_xticks(range(len(t["rows"])), [OPT_NAMES[r["optimizer"]] for r in t["rows"]])
        ax.set(ylabel="validation accuracy % (dots: seeds)", title=NAMES[m])
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    return save(fig, s.root / "figures" / "study_optimizers.png")


def study_regularization(s: Study) -> str | None:
    """One panel per variant: training and validation error per epoch, mean over seeds, one shared log scale."""
    variants = s.regularization()
    if not variants:
        return None
    plt = pyplot()
    rows = math.ceil(len(variants) / 4)
    fig, axes = plt.subplots(rows, 4, figsize=(16, 2.9 * rows + 0.8), sharex=True, sharey=True, squeeze=False, layout="constrained")
    training = "training: running mean over the epoch's batches (augmented, unless the panel's title says not)"
    for ax, v in zip(axes.flat, variants):
        n = min(len(r["history"]) for r in v["records"])
        for key, style, label in (("train_acc", "--", training), ("val_acc", "-", VALIDATION)):
            mean = [statistics.mean(r["history"][i][key] for r in v["records"]) for i in range(n)]
            ax.plot(range(1, n + 1), [max(100 * (1 - a), 1e-3) for a in mean], style, label=label)
        ax.set_yscale("log")
        ax.set_title(v["variant"] + ("" if v["records"][0]["config"].get("augment") else " (training not augmented)"), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    spare = list(axes.flat)[len(variants):]  # the grid's empty panels: the first holds the legend
    for ax in spare:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    (spare or [axes[0, 0]])[0].legend(handles, [textwrap.fill(x, 42) for x in labels], loc="center", fontsize=10)
    c = variants[0]["records"][0]["config"]
    fig.suptitle(f"{NAMES[c['model']]} at width {c['model_config']['width']}, {OPT_NAMES[c['optimizer']]} lr {c['lr']:g}, "
                 f"{c['epochs']:g} epochs: training and validation error per variant, mean over seeds")
    fig.supxlabel("epoch")
    fig.supylabel("error % (log)")
    return save(fig, s.root / "figures" / "study_regularization.png")


def auc_gaps(s: Study) -> str | None:
    """figures/models_roc_1-auc.png: 1 - ROC-AUC per digit (one-vs-rest) on a log axis, one series per
    shipped model and the ensemble whose test metrics are recorded (figures/<model>_metrics.json). A digit
    with AUC exactly 1 is drawn hollow at the axis' floor, half the smallest gap N test images allow."""
    scored = [m for m in (*s.models, "quicknet", "ensemble") if (s.metrics.get(m) or {}).get("auc_per_class")]
    if not scored:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    digits = list(s.metrics[scored[0]]["auc_per_class"])
    floor = 0.5 / (s.metrics[scored[0]]["n"] ** 2 / 4)  # one wrongly ordered pair of at most N^2/4, halved
    for m in scored:
        met = s.metrics[m]
        gaps = [1 - met["auc_per_class"][d] for d in digits]
        name = NAMES[m] if m != "ensemble" else "ensemble of " + ", ".join(NAMES.get(w, w) for w in met["weights"].split("+"))
        line, = ax.plot(range(len(digits)), [g if g > 0 else math.nan for g in gaps], "o-", lw=1, ms=5,
                        label=f"{name}: macro {1 - met['auc_ovr_macro']:.1e}")
        zero = [i for i, g in enumerate(gaps) if g <= 0]
        ax.plot(zero, [floor] * len(zero), "o", mfc="none", color=line.get_color(), ms=7)
    ax.set(yscale="log", xlabel="digit (one-vs-rest)", ylabel="1 - AUC (log)",
           title="1 - ROC-AUC per digit on the test set: the fraction of (digit, other) pairs ranked wrongly")
    ax.set_xticks(range(len(digits)), digits)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, s.root / "figures" / "models_roc_1-auc.png")


def draw_figures(root: Path = ROOT) -> list[str]:
    s = Study(root)
    out = [study_lr(s), study_optimizers(s), study_regularization(s), auc_gaps(s)] + [curves(s, m) for m in s.shipped]
    from data import DataError
    for m in s.shipped:
        try:
            out += features(s, m) if m in s.models or m == "quicknet" else []
        except DataError as e:  # the feature maps need one MNIST test digit
            print(f"features of {m} not drawn: {e} (set DATA_DIR to the folder holding MNIST/raw/)")
    return [p for p in out if p]


# -----------------------------------------------------------------------------
# Screenshots: the recorded terminal output, rendered as a terminal would show it


def condense(text: str, max_lines: int) -> list[str]:
    """The log's lines that carry its point, at most max_lines: test_model's per-class tables and a
    printed JSON dump go first, then the middle lines."""
    lines = text.rstrip("\n").split("\n")
    for i, line in enumerate(lines):
        if line in ("[", "{"):
            lines = lines[:i] + ["(the same metrics printed as JSON: see the log file)"]
            break
    if len(lines) > max_lines:
        row = re.compile(r"^\s*(\d+|accuracy|macro avg|weighted avg)\s+[\d.\s]+$|^\s+precision\s+recall\s+f1-score\s+support$")
        lines = [ln for ln in lines if not row.match(ln)]
    if len(lines) > max_lines:
        head = max_lines // 3
        lines = lines[:head] + [f"... ({len(lines) - max_lines + 1} lines not shown) ..."] + lines[-(max_lines - head - 1):]
    return lines


def render_terminal(text: str, title: str, path: Path, max_lines: int = 70) -> None:
    plt = pyplot()
    lines = condense(text, max_lines)
    width = max(60, min(150, max(len(line) for line in lines)))
    lines = [line if len(line) <= width else line[:width - 1] + "…" for line in lines]
    title_lines = textwrap.wrap(title, width, subsequent_indent="    ", break_on_hyphens=False)
    top = 0.25 + 0.17 * len(title_lines)
    fig = plt.figure(figsize=(width * 0.075 + 0.4, len(lines) * 0.152 + top + 0.3))
    fig.patch.set_facecolor("#1e1e1e")
    fig.text(0.01, 1 - 0.15 / fig.get_figheight(), "\n".join(title_lines), color="#9cdcfe", family="monospace",
             fontsize=8.5, va="top", weight="bold", linespacing=1.25)
    fig.text(0.01, 1 - (top + 0.1) / fig.get_figheight(), "\n".join(lines), color="#d4d4d4", family="monospace",
             fontsize=8.5, va="top", linespacing=1.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor=fig.get_facecolor())
    plt.close(fig)


def render_screenshots(root: Path = ROOT) -> list[str]:
    """screenshots/<log name>.png for every results/logs/*.txt (the title is the command, the log's first
    line), screenshots/index.json, and screenshots/training-<model>.png: the run that made each file."""
    out = []
    for log in sorted((root / "results" / "logs").glob("*.txt")):
        first, _, rest = log.read_text().partition("\n")
        title = first[2:] if first.startswith("$ ") else log.stem
        render_terminal(rest, f"$ {title}", root / "screenshots" / f"{log.stem}.png")
        out.append({"png": f"screenshots/{log.stem}.png", "command": title, "log": f"results/logs/{log.name}"})
    (root / "screenshots" / "index.json").write_text(json.dumps(out, indent=1) + "\n")
    s = Study(root)
    for m in s.shipped:
        run = s.shipped_run(m)
        src = root / "screenshots" / f"{Path(run['log']).stem}.png" if run and run.get("log") else None
        if src is not None and src.exists():
            (root / "screenshots" / f"training-{m}.png").write_bytes(src.read_bytes())
            out.append({"png": f"screenshots/training-{m}.png"})
    return [o["png"] for o in out]
