"""The study's figures (figures/study_*.png, figures/curves_<model>.png) and the terminal
screenshots (screenshots/*.png from results/logs/*.txt), drawn from the recorded results.
Imported by study_report.py only."""

import json
import math
import re
import statistics
import textwrap
from pathlib import Path

import study
from report_facts import (
    Facts, NAMES, OPT_NAMES, ROOT, fair_tables, history_of, optim_groups, reg_groups, results_of, run_words,
    write_text
)
from runs import pyplot

# -----------------------------------------------------------------------------
# Figures (drawn by the study's report stage and `--figures`; the markdown only links them)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    pyplot().close(fig)


def mean_curve(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """Per-epoch mean of history[key] over the records (seeds), on the epochs all of them have."""
    n = min(len(r["history"]) for r in records)
    epochs = [records[0]["history"][i]["epoch"] for i in range(n)]
    return epochs, [statistics.mean(r["history"][i][key] for r in records) for i in range(n)]


def figure_lr(f: Facts) -> str | None:
    """Validation error per LR on a log axis, so ResNet-18's 50% and the ConvNet's 0.5% both show."""
    s = f.s
    rows = [r for r in results_of(s, study.lr_cells(s)) if r["tags"].get("kind", "grid") == "grid"]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for m, opt in study.lr_rows(s):
        pts = sorted((r["tags"]["lr"], r) for r in rows if r["tags"]["model"] == m and r["tags"]["optimizer"] == opt)
        if not pts:
            continue
        ok = [(lr, 100 * (1 - r["best"]["val_acc"])) for lr, r in pts if r["status"] != "diverged"]
        line, = ax.plot([p[0] for p in ok], [p[1] for p in ok], "o-" if opt == "sgd" else "s--", label=f"{NAMES[m]}, {OPT_NAMES[opt]}")
        bad = [lr for lr, r in pts if r["status"] == "diverged"]
        if bad:
            ax.plot(bad, [100] * len(bad), "x", color=line.get_color(), ms=9)
    ax.set_xscale("log")
    plain_log_axis(ax)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation error % (log; lower is better)")
    ax.set_title(f"LR sweep: validation error per LR (x = diverged); 1 image = {100 * f.one_val:.2f}%")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, f.root / "figures" / "study_lr.png")
    return "figures/study_lr.png"


def figure_optimizers(f: Facts) -> str | None:
    """Each seed's validation accuracy per optimizer (dots), the mean and its ±1 std: the spread shows the ties."""
    groups = optim_groups(f)
    fair = fair_tables(f)
    if not groups:
        return None
    plt = pyplot()
    models = [m for m in study.OPTIM_MODELS if m in groups]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        for i, opt in enumerate(OPT_NAMES):
            for dx, recs, color, label in ((-0.12, groups[m].get(opt, []), "C0", "first comparison (LR from the sweep)"),
                                           (0.12, [], "C1", "each optimizer's own tuned LR")):
                vals = [100 * r["best"]["val_acc"] for r in recs]
                if fair.get(m):
                    row = next((r for r in fair[m]["rows"] if r["optimizer"] == opt), None)
                    if dx > 0 and row:
                        vals = [100 * v for v in row["val"]]
                if not vals:
                    continue
                ax.plot([i + dx] * len(vals), vals, "o", color=color, alpha=0.6, ms=5, label=label if i == 0 else None)
                mu = statistics.mean(vals)
                sd = statistics.stdev(vals) if len(vals) > 1 else 0
                ax.errorbar([i + dx + 0.06], [mu], yerr=[sd], fmt="_", color=color, ms=14, capsize=3)
        ax.set_xticks(range(len(OPT_NAMES)), [OPT_NAMES[o] for o in OPT_NAMES])
        lo, hi = ax.get_ylim()
        ax.set_ylabel("validation accuracy % (dots: seeds; bar: mean ± std)")
        ax.set_title(f"{NAMES[m]}: one validation image = {100 * f.one_val:.2f} points")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="lower left")
    _save(fig, f.root / "figures" / "study_optimizers.png")
    return "figures/study_optimizers.png"


ERROR_FLOOR = 1e-3  # % : where a log axis draws an error of 0 (a training set fitted exactly)


def figure_regularization(f: Facts) -> str | None:
    """One small panel per variant: training and validation error (same quantity, same axis) per epoch, mean of seeds."""
    by = reg_groups(f)
    if not by:
        return None
    plt = pyplot()
    n = len(by)
    cols = 4
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.9 * rows), sharex=True, sharey=True, squeeze=False)
    top = 0.0
    for ax, (v, rs) in zip(axes.flat, by.items()):
        ep, tr = mean_curve(rs, "train_acc")
        _, va = mean_curve(rs, "val_acc")
        ax.plot(ep, [max(100 * (1 - x), ERROR_FLOOR) for x in tr], "--", color="C0", label="train (augmented batches)")
        ax.plot(ep, [max(100 * (1 - x), ERROR_FLOOR) for x in va], "-", color="C1", lw=1.8, label="validation")
        top = max(top, 100 * (1 - min(min(tr), min(va))))
        plain_log_axis(ax)
        ax.set_title(f"{v}: last-epoch gap {100 * (tr[-1] - va[-1]):+.2f} pts", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylim(ERROR_FLOOR / 2, 1.5 * top)  # shared: every panel on the same scale
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("error % (log)")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    seeds = len(next(iter(by.values())))
    fig.suptitle(f"ConvNet, {study.REG_EPOCHS} epochs, mean of {seeds} seeds per variant; gap = train accuracy - validation accuracy; "
                 f"an error of 0 is drawn at {ERROR_FLOOR:g}%")
    _save(fig, f.root / "figures" / "study_regularization.png")
    return "figures/study_regularization.png"


def plain_log_axis(ax) -> None:
    """A log y axis labelled 0.3, 1, 3 (not 3x10^-1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: ""))


def figure_curves(f: Facts, m: str) -> str | None:
    """figures/curves_<m>.png from the card's history: the same quantity for training and validation."""
    card = f.cards.get(m)
    hist = history_of(card) if card else []
    if not hist:
        return None
    plt = pyplot()
    ep = [h["epoch"] for h in hist]
    kept = card["metrics"].get("epoch")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.plot(ep, [max(100 * (1 - h["train_acc"]), ERROR_FLOOR) for h in hist], "-", label="training (augmented, running)")
    a.plot(ep, [max(100 * (1 - h["val_acc"]), ERROR_FLOOR) for h in hist], "-", label="validation")
    plain_log_axis(a)
    a.set_ylabel("error % (log)")
    a.set_title("error rate = 100 - accuracy")
    if all("train_ce" in h for h in hist):
        b.plot(ep, [h["train_ce"] for h in hist], "-", label="training CE (no smoothing)")
        b.plot(ep, [h["val_loss"] for h in hist], "-", label="validation CE")
        b.set_title("cross-entropy, the same loss for both")
    else:
        b.plot(ep, [h["val_loss"] for h in hist], "-", color="C1", label="validation CE")
        b.set_title("validation cross-entropy (no comparable training loss)")
    b.set_ylabel("cross-entropy")
    for ax in (a, b):
        if kept:
            ax.axvline(kept, color="grey", ls=":", lw=1, label=f"kept: epoch {kept:g} (best validation)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(run_words(card["train_config"]), fontsize=9)
    _save(fig, f.root / "figures" / f"curves_{m}.png")
    return f"figures/curves_{m}.png"


def draw_figures(root: Path = ROOT) -> list[str]:
    f = Facts(root)
    out = [figure_lr(f), figure_optimizers(f), figure_regularization(f)]
    out += [figure_curves(f, m) for m in f.shipped]
    return [p for p in out if p]


# -----------------------------------------------------------------------------
# Screenshots: the recorded terminal output, rendered as a terminal would show it


def screen_name(x: dict, members: int) -> str:
    """A scored entry's short name: the weights file, or 'ENSEMBLE of N files' for the mean softmax."""
    w = x.get("weights")
    if x.get("model") == "ensemble" or (isinstance(w, str) and "+" in w):
        return f"ENSEMBLE of the {members} files above"
    return Path(w).name if isinstance(w, str) else str(x.get("model", "?"))


def condense(text: str, max_lines: int) -> list[str]:
    """The log's lines that carry its point, at most max_lines: a printed JSON dump is dropped (the
    summary lines above it say the same), then test_model's per-class tables, then the middle epochs."""
    lines = text.rstrip("\n").split("\n")
    for i, line in enumerate(lines):
        if line in ("[", "{"):  # test_model.py --json: its list of metrics, one object per file and the ensemble last
            try:
                scored = json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                scored = None
            scored = scored if isinstance(scored, list) else [scored] if isinstance(scored, dict) else []
            table = ["model | accuracy | F1 macro | ROC-AUC macro | with TTA"] + [
                f"{screen_name(x, len(scored) - 1)} | {x.get('accuracy', float('nan')):.4f} | "
                f"{x.get('f1_macro', float('nan')):.4f} | {x.get('auc_ovr_macro', float('nan')):.6f} | "
                f"{(x.get('tta') or {}).get('accuracy', float('nan')):.4f}" for x in scored if isinstance(x, dict)]
            lines = lines[:i] + ["(printed as JSON; its numbers, one row per file, the ensemble last:)"] + table
            break
    if len(lines) > max_lines:
        report_row = re.compile(r"^\s*(\d+|accuracy|macro avg|weighted avg)\s+[\d.\s]+$|^\s+precision\s+recall\s+f1-score\s+support$")
        keep = [ln for ln in lines if not report_row.match(ln)]
        if len(keep) < len(lines):
            lines = [ln for i, ln in enumerate(keep) if not (ln == "" and i and keep[i - 1] == "")]
            lines.append("... (per-class precision/recall tables not shown: see the log file) ...")
    if len(lines) > max_lines:  # keep the start (command, header) and the end (result)
        head = max_lines // 3
        lines = lines[:head] + [f"... ({len(lines) - max_lines + 1} lines not shown) ..."] + lines[-(max_lines - head - 1):]
    return lines


def render_terminal(text: str, title: str, path: Path, max_lines: int = 70) -> None:
    plt = pyplot()
    lines = condense(text, max_lines)
    width = max(60, min(150, max(len(line) for line in lines)))
    lines = [line if len(line) <= width else line[:width - 1] + "…" for line in lines]
    title_lines = textwrap.wrap(title, width, subsequent_indent="    ", break_on_hyphens=False)
    top = 0.25 + 0.17 * len(title_lines)  # inches taken by the title
    fig = plt.figure(figsize=(width * 0.075 + 0.4, len(lines) * 0.152 + top + 0.3))
    fig.patch.set_facecolor("#1e1e1e")
    fig.text(0.01, 1 - 0.15 / fig.get_figheight(), "\n".join(title_lines), color="#9cdcfe", family="monospace", fontsize=8.5,
             va="top", weight="bold", linespacing=1.25)
    fig.text(0.01, 1 - (top + 0.1) / fig.get_figheight(), "\n".join(lines), color="#d4d4d4", family="monospace", fontsize=8.5,
             va="top", linespacing=1.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor=fig.get_facecolor())
    plt.close(fig)


def render_screenshots(root: Path = ROOT) -> list[str]:
    """screenshots/<log name>.png for every results/logs/*.txt; the title is the command (the log's first line)."""
    out = []
    for log in sorted((root / "results" / "logs").glob("*.txt")):
        text = log.read_text()
        first, _, rest = text.partition("\n")
        title = first[2:] if first.startswith("$ ") else log.stem
        png = root / "screenshots" / f"{log.stem}.png"
        render_terminal(rest, f"$ {title}", png)
        out.append({"png": f"screenshots/{png.name}", "command": title, "log": f"results/logs/{log.name}"})
    write_text(root / "screenshots" / "index.json", [json.dumps(out, indent=1)])
    f = Facts(root)
    for m in f.shipped:  # the run that made each file, under a plain name the report can show
        run = f.shipped_run(m)
        src = root / "screenshots" / f"{Path(run['log']).stem}.png" if run and run.get("log") else None
        if src is not None and src.exists():
            (root / "screenshots" / f"training-{m}.png").write_bytes(src.read_bytes())
            out.append({"png": f"screenshots/training-{m}.png"})
    return [o["png"] for o in out]
