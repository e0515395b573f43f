"""Metric plots a run writes beside its files: the training curves and the LR range test.

    plot_curves(history, run_dir / "curves.png", title)   # train vs validation loss, accuracy, F1 per epoch
    plot_lr_find(lrs, losses, suggestion, title, png)     # the range test's loss against the LR

pyplot() is matplotlib on the file-only Agg backend, set in one place. Imports nothing of ours.
"""

import math
import os
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), set in one place."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Train vs validation loss, accuracy and macro-F1 per epoch."""
    if not history:
        return
    plt = pyplot()
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    plain = all(math.isfinite(float(h.get("train_ce", math.nan))) for h in history)  # runs from before train_ce: the optimised loss
    for ax, key, label in zip(axes, ("loss", "acc", "f1"), ("loss (CE)", "accuracy", "macro F1")):
        train_key = "train_ce" if key == "loss" and plain else f"train_{key}"
        ax.plot(ep, [float(h[train_key]) for h in history], "o-", label="train (augmented, running)")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float, title: str, out_png: str) -> str:
    """The LR range test's smoothed loss against the LR (log axis), the suggestion marked; returns out_png."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="r", ls="--", label=f"suggested {suggestion:.2g} (steepest)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(title)
    ax.legend()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out_png
