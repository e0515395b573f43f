"""The report's figures, drawn from recorded data by `python study_report.py --figures`, and the
terminal screenshots (screenshots/*.png from results/logs/*.txt, `--screenshots`).

    figures/curves_<model>.png          loss, accuracy and F1, training and validation, per epoch
    figures/features_<model>_layer<k>.png  what the first and second layers learned, with colour scales
    figures/study_lr.png, study_optimizers.png, study_regularization.png

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

from report_facts import NAMES, OPT_NAMES, ROOT, Study


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    pyplot().close(fig)
    return str(path.relative_to(path.parents[1]))


def curves(s: Study, m: str) -> str | None:
    """figures/curves_<m>.png: loss, accuracy and macro F1 per epoch, training and validation, from the
    run curve_source() names; a run without a validation split is drawn as training only."""
    src = s.curve_source(m)
    h = src["history"]
    if not h:
        return None
    plt = pyplot()
    ep = [x["epoch"] for x in h]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    held_out = src["kind"] != "train_only"
    loss, acc, f1 = axes
    loss.plot(ep, [x["train_loss"] for x in h], label=f"training (label smoothing {src['config'].get('label_smoothing', 0):g})")
    if all("train_ce" in x for x in h):
        loss.plot(ep, [x["train_ce"] for x in h], label="training (plain cross-entropy)")
    if held_out:
        loss.plot(ep, [x["val_loss"] for x in h], label="validation (plain cross-entropy)")
    loss.set_yscale("log")
    for ax, key, title in ((acc, "acc", "accuracy %"), (f1, "f1", "macro F1 %")):
        ys = [100 * x[f"train_{key}"] for x in h] + ([100 * x[f"val_{key}"] for x in h] if held_out else [])
        ax.plot(ep, [100 * x[f"train_{key}"] for x in h], label="training (augmented batches, running mean)")
        if held_out:
            ax.plot(ep, [100 * x[f"val_{key}"] for x in h], label="validation")
        low = sorted(ys)[len(ys) // 20]  # the first epochs' low values would squash the rest
        ax.set_ylim(max(low - 0.3, 0), 100.05)
        ax.set_title(title)
    loss.set_title("loss")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    c = src["config"]
    what = {"own": "the run that made this file (validation split held out)",
            "twin": f"seed {src.get('seed')} of the same recipe with the validation split held out (the file itself trained on all training images)",
            "train_only": "training only: this run trained on all training images, no validation split"}[src["kind"]]
    fig.suptitle(f"{NAMES.get(m, m)}, {OPT_NAMES.get(c['optimizer'], c['optimizer'])} lr {c['lr']:g}, {c['epochs']:g} epochs: {what}",
                 fontsize=9)
    return save(fig, s.root / "figures" / f"curves_{m}.png")


def panels(fig, grid, images, cmap: str, label: str, cols: int, first=None, symmetric: bool = False):
    """Draw images (N, H, W) in a sub-grid of fig on one shared colour scale, with its colour bar."""
    import numpy as np
    ims = [np.asarray(i, dtype=float) for i in images]
    v = max(abs(i).max() for i in ims) or 1.0
    lo, hi = (-v, v) if symmetric else (min(i.min() for i in ims), max(i.max() for i in ims))
    rows = math.ceil((len(ims) + (first is not None)) / cols)
    sub = grid.subgridspec(rows, cols, wspace=0.05, hspace=0.05)
    shown = None
    for k in range(rows * cols):
        ax = fig.add_subplot(sub[k // cols, k % cols])
        ax.axis("off")
        i = k - (first is not None)
        if first is not None and k == 0:
            ax.imshow(first, cmap="gray")
            ax.set_title("input", fontsize=7)
        elif 0 <= i < len(ims):
            shown = ax.imshow(ims[i], cmap=cmap, vmin=lo, vmax=hi)
    fig.colorbar(shown, ax=fig.axes[-rows * cols:], shrink=0.8, label=label)


def features(s: Study, m: str, digit: int = 7, n_maps: int = 32) -> list[str]:
    """figures/features_<m>_layer1.png and _layer2.png: each layer's filters (shared colour scale, 0 at
    the centre) and the maps they make of the first test image of `digit` (before BN and ReLU)."""
    import torch

    from data import load_raw, normalize
    from models import conv_layers, load_checkpoint
    model, ckpt = load_checkpoint(s.root / "weights" / f"{m}.pt")
    plt = pyplot()
    layers = conv_layers(model)
    if not layers:  # the DNN: its first layer's weight rows, as 28x28 images
        w = model.first_linear.weight.detach().float()[:n_maps].reshape(-1, 28, 28)
        fig = plt.figure(figsize=(10, 5.5))
        panels(fig, fig.add_gridspec(1, 1)[0], w, "RdBu_r", "weight", 8, symmetric=True)
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
    out = []
    for n, key in enumerate(("first_conv", "second_conv"), start=1):
        w = layers[key].weight.detach().float()  # (out, in, k, k)
        filt = w[:, 0] if w.shape[1] == 1 else w[:n_maps].mean(1)  # the second layer: mean over its inputs
        fmap = maps[key][:n_maps]
        h1, h2 = math.ceil(len(filt) / 16) / 16, math.ceil((len(fmap) + 1) / 11) / 11  # rows x panel height
        fig = plt.figure(figsize=(11, 11 * (h1 + h2) + 1))
        g = fig.add_gridspec(2, 1, height_ratios=[h1, h2])
        panels(fig, g[0], filt, "RdBu_r", "weight" if n == 1 else "weight (mean over input channels)", 16, symmetric=True)
        panels(fig, g[1], fmap, "viridis", "activation", 11, first=x[0, 0])
        fig.suptitle(f"{NAMES[m]}, layer {n}: {len(filt)} of {w.shape[0]} filters ({w.shape[2]}x{w.shape[3]}) and {len(fmap)} of "
                     f"their maps of a test {digit} ({fmap.shape[1]}x{fmap.shape[2]})")
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
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(variants) / cols), cols, figsize=(16, 2.9 * math.ceil(len(variants) / cols)),
                             sharex=True, sharey=True, squeeze=False)
    for ax, v in zip(axes.flat, variants):
        n = min(len(r["history"]) for r in v["records"])
        for key, style, label in (("train_acc", "--", "training (augmented batches)"), ("val_acc", "-", "validation")):
            mean = [statistics.mean(r["history"][i][key] for r in v["records"]) for i in range(n)]
            ax.plot(range(1, n + 1), [max(100 * (1 - a), 1e-3) for a in mean], style, label=label)
        ax.set_yscale("log")
        ax.set_title(v["variant"], fontsize=9)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.supxlabel("epoch")
    fig.supylabel("error % (log)")
    return save(fig, s.root / "figures" / "study_regularization.png")


def draw_figures(root: Path = ROOT) -> list[str]:
    s = Study(root)
    out = [study_lr(s), study_optimizers(s), study_regularization(s)] + [curves(s, m) for m in s.shipped]
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
