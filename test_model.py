"""Score a checkpoint (or several, and their ensemble) on the official 10,000 MNIST test images.

    python test_model.py --weights weights/resnet.pt
    python test_model.py --weights runs/resnet-lr0.001-s0       # a run folder: its best.pt, and its own curves
    python test_model.py --weights weights/*.pt --out figures/      # + ensemble row, ROC, confusion, mistakes
    python test_model.py --weights weights/convnet.pt --json

Every metric comes from scikit-learn (classification_report, f1_score, roc_auc_score,
roc_curve, confusion_matrix) on the model's softmax probabilities. The test set is
only ever scored here and at the end of a run; the choices made after a test score
had been seen are listed in the report's appendix, "How the numbers were obtained".
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from data import DataError, load_raw, normalize
from models import CheckpointError, load_checkpoint, weights_name
from machine import resolve_device
from plots import pyplot

# -----------------------------------------------------------------------------
# Metrics on tensors, cheap enough for every training epoch (train.py); the test set's full metrics are sklearn's (metrics()).


def confusion(target: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    """(K, K) counts, rows = true class, columns = predicted."""
    return torch.bincount(target * k + pred, minlength=k * k).view(k, k).cpu()


def macro_f1(conf: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes that occur (as sklearn's f1_score(average='macro'))."""
    tp = conf.diag().double()
    support, predicted = conf.sum(1).double(), conf.sum(0).double()
    present = (support + predicted) > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    return float(f1[present].mean()) if present.any() else 0.0


# The ROC figure's zoom (study_report's Step 6 caption reads these): true positive rate from ROC_YMIN up,
# false positive rate on a symlog axis, linear below ROC_LINTHRESH.
ROC_YMIN = 0.9
ROC_LINTHRESH = 1e-3


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Softmax probabilities (N, K) in fp32, eval mode. x: (N, 1, 28, 28), normalized."""
    model.eval()
    device = next(model.parameters()).device
    channels_last = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(model(xb).float(), dim=1).cpu())
    return torch.cat(out).numpy()


TTA_SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))  # (dy, dx) in pixels: the image and its 4 one-pixel shifts


def shifted(x: torch.Tensor, dy: int, dx: int, background: float) -> torch.Tensor:
    """x (N, 1, 28, 28) moved by (dy, dx) pixels; what comes in from outside is blank paper."""
    if dy == dx == 0:
        return x
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    padded = torch.nn.functional.pad(x, (p, p, p, p), value=background)
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


def predict_proba_tta(model: torch.nn.Module, x: torch.Tensor, background: float) -> np.ndarray:
    """Test-time augmentation: the mean softmax over TTA_SHIFTS. Reported beside, never instead of,
    the plain accuracy: it costs 5x the inference."""
    return np.mean([predict_proba(model, shifted(x, dy, dx, background)) for dy, dx in TTA_SHIFTS], axis=0)


def metrics(y_true: np.ndarray, proba: np.ndarray, class_names=None) -> dict:
    """Accuracy, F1, per-class precision/recall/F1/support, confusion matrix and ROC-AUC.

    AUC is one-vs-rest on the probabilities: macro (mean of the per-class AUCs) and
    micro (all K binary problems pooled into one curve). y_true: (N,) labels 0..K-1; proba: (N, K).
    one_minus_auc_*: 1 - AUC, the fraction of wrongly ordered (positive, negative) pairs.
    """
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, roc_auc_score
    from sklearn.preprocessing import label_binarize

    k = proba.shape[1]
    labels = list(range(k))
    names = [str(c) for c in (class_names or labels)]
    y_pred = proba.argmax(1)
    onehot = label_binarize(y_true, classes=labels)  # (N, K)
    report = classification_report(y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "auc_ovr_macro": float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)),
        "auc_micro": float(roc_auc_score(onehot, proba, average="micro")),
        "auc_per_class": {n: float(roc_auc_score(onehot[:, i], proba[:, i])) for i, n in enumerate(names)},
        # 1 - AUC: the fraction of (positive, negative) pairs ranked wrongly, what separates models at AUC ~ 0.9999
        "one_minus_auc_per_class": {n: 1.0 - float(roc_auc_score(onehot[:, i], proba[:, i])) for i, n in enumerate(names)},
        "one_minus_auc_ovr_macro": 1.0 - float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels)),
        "one_minus_auc_micro": 1.0 - float(roc_auc_score(onehot, proba, average="micro")),
        "per_class": {n: {m: float(report[n][m]) for m in ("precision", "recall", "f1-score", "support")} for n in names},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "report_text": classification_report(y_true, y_pred, labels=labels, target_names=names, digits=4, zero_division=0),
    }


def run_record(weights) -> dict | None:
    """For a run folder (train.py's): its own history.csv, curves.png and best epoch, as recorded by the run;
    None for a checkpoint file."""
    run = Path(weights)
    if not (run.is_dir() and (run / "history.csv").is_file()):
        return None
    import csv
    with open(run / "history.csv") as f:
        history = list(csv.DictReader(f))
    best = max(history, key=lambda h: float(h["val_acc"])) if history else {}
    return {"history": str(run / "history.csv"), "curves": str(run / "curves.png") if (run / "curves.png").exists() else None,
            "epochs": float(history[-1]["epoch"]) if history else 0.0, "best_epoch": float(best["epoch"]) if best else None,
            "val_acc": float(best["val_acc"]) if best else None}


def load_test_set(ckpt: dict, data_dir=None) -> tuple[torch.Tensor, np.ndarray, tuple]:
    """The official test images, normalized as the checkpoint's model was trained: (N,1,28,28), (N,)."""
    from data import DATASETS
    dataset = (ckpt.get("train_config") or {}).get("dataset", "mnist")
    _, _, x_te, y_te, _ = load_raw(dataset, data_dir, download=True, parts=("test",))
    norm = ckpt["normalization"]
    return normalize(x_te, norm["mean"], norm["std"]), y_te.numpy(), DATASETS[dataset].class_names


def test_model(weights, data_dir=None, device="auto", out_dir=None, tta: bool = False) -> dict:
    """Load `weights`, predict the test set, return metrics (and save plots under out_dir).
    tta: also score the mean over TTA_SHIFTS, as result["tta"] (accuracy, F1 macro)."""
    t0 = time.perf_counter()
    model, ckpt = load_checkpoint(weights, resolve_device(device))
    x, y, class_names = load_test_set(ckpt, data_dir)
    t1 = time.perf_counter()
    proba = predict_proba(model, x)
    result = {"weights": str(weights), "model": ckpt["model"], **metrics(y, proba, class_names),
              "seconds": time.perf_counter() - t0, "inference_seconds": time.perf_counter() - t1,
              "val_acc": ckpt["metrics"].get("val_acc")}
    if tta:
        from sklearn.metrics import accuracy_score, f1_score
        norm = ckpt["normalization"]
        p_tta = predict_proba_tta(model, x, -norm["mean"] / norm["std"])
        result["tta"] = {"shifts": [list(t) for t in TTA_SHIFTS], "accuracy": float(accuracy_score(y, p_tta.argmax(1))),
                         "f1_macro": float(f1_score(y, p_tta.argmax(1), average="macro"))}
        result["_proba_tta"] = p_tta
    if run := run_record(weights):
        result["run"] = run
    if out_dir:
        result["figures"] = save_figures(y, proba, x, Path(out_dir), weights_name(weights), class_names, result)
        if run and run["curves"]:  # the run's own training curves beside the test figures
            import shutil
            result["figures"].append(str(shutil.copyfile(run["curves"], Path(out_dir) / f"{weights_name(weights)}_curves.png")))
    result["_proba"] = proba  # kept for ensembles; dropped before printing
    return result


def mean_softmax(probas: list[np.ndarray]) -> np.ndarray:
    """An ensemble's probabilities: k members' softmax outputs, each (n, 10), averaged -> (n, 10).
    The mean of probabilities, not of logits (the members' temperatures differ)."""
    return np.mean(probas, axis=0)


def ensemble(results: list[dict], y: np.ndarray, class_names, x=None, out_dir=None) -> dict:
    """The averaged softmax of several models (mean_softmax), scored like one model."""
    proba = mean_softmax([r["_proba"] for r in results])
    result = {"weights": "+".join(weights_name(r["weights"]) for r in results), "model": "ensemble", **metrics(y, proba, class_names)}
    if all("_proba_tta" in r for r in results):
        from sklearn.metrics import accuracy_score, f1_score
        p_tta = mean_softmax([r["_proba_tta"] for r in results])
        result["tta"] = {"shifts": results[0]["tta"]["shifts"], "accuracy": float(accuracy_score(y, p_tta.argmax(1))),
                         "f1_macro": float(f1_score(y, p_tta.argmax(1), average="macro"))}
    if out_dir is not None:
        result["figures"] = save_figures(y, proba, x, Path(out_dir), "ensemble", class_names, result)
    result["_proba"] = proba
    return result


# -----------------------------------------------------------------------------
# ROC curves. Every AUC shown (legend, terminal, report) is metrics()' number in one format.

AUC_DIGITS = 6  # the report's model table and _print show AUCs to 6 decimals


def fmt_auc(value: float) -> str:
    return f"{value:.{AUC_DIGITS}f}"


def _one_sided_tpr(fpr: np.ndarray, tpr: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ROC curve (roc_curve's points, FPR non-decreasing, from 0 to 1) read at x: (TPR just left of x,
    TPR just right of x). They differ only where the curve rises vertically at x; elsewhere both are the
    linear interpolation between the curve's points on either side."""
    fu, first = np.unique(fpr, return_index=True)  # each FPR value's lowest TPR (its first point)
    last = np.r_[first[1:] - 1, len(fpr) - 1]  # and its highest (its last point)
    j = np.clip(np.searchsorted(fu, x, side="right") - 1, 0, len(fu) - 1)  # the curve's FPR value <= x
    at = fu[j] == x
    k = np.minimum(j + 1, len(fu) - 1)
    w = np.where(at | (k == j), 0.0, (x - fu[j]) / np.where(k == j, 1.0, fu[k] - fu[j]))
    between = tpr[last[j]] + w * (tpr[first[k]] - tpr[last[j]])  # from x's left neighbour's top to its right one's bottom
    return np.where(at, tpr[first[j]], between), np.where(at, tpr[last[j]], between)


def roc_curves(y: np.ndarray, proba: np.ndarray) -> dict:
    """One-vs-rest ROC curves of a K-class scorer. y: (N,) labels 0..K-1; proba: (N, K) scores; every
    class needs positives and negatives in y (else ValueError, as roc_auc_score raises).

    Returns {"classes": [(fpr, tpr)] per class, "micro": (fpr, tpr), "macro": (fpr, tpr)}. Per class
    and micro (the K binary problems pooled) are sklearn.metrics.roc_curve's. Macro is the pointwise
    mean TPR of the class curves at the union of their FPR points (scikit-learn's ROC example), with
    both one-sided values at every FPR where some class curve rises vertically, so the mean is exact
    between the points: its area (trapezoids) is the mean of the class AUCs, roc_auc_score(average=
    "macro"), and at every FPR it lies between the lowest and the highest class curve."""
    from sklearn.metrics import roc_curve

    k = proba.shape[1]
    onehot = (np.asarray(y)[:, None] == np.arange(k)).astype(int)  # (N, K)
    if (onehot.sum(0) == 0).any() or (onehot.sum(0) == len(y)).any():
        raise ValueError("ROC needs positives and negatives of every class; classes without either: "
                         f"{[i for i in range(k) if onehot[:, i].sum() in (0, len(y))]}")
    classes = [tuple(roc_curve(onehot[:, i], proba[:, i])[:2]) for i in range(k)]
    grid = np.unique(np.concatenate([f for f, _ in classes]))  # every class curve's FPR points
    sides = [_one_sided_tpr(f, t, grid) for f, t in classes]
    left, right = np.mean([s[0] for s in sides], axis=0), np.mean([s[1] for s in sides], axis=0)
    macro = (np.repeat(grid, 2), np.stack([left, right], axis=1).ravel())  # (x, left), (x, right) for each x
    micro = tuple(roc_curve(onehot.ravel(), proba.ravel())[:2])
    return {"classes": classes, "micro": micro, "macro": macro}


def roc_figure(y: np.ndarray, proba: np.ndarray, m: dict, stem: str, class_names):
    """The ROC figure: each class, micro and macro; legend AUCs are m's (metrics()) in fmt_auc."""
    plt = pyplot()

    curves = roc_curves(y, proba)
    names = [str(c) for c in class_names]
    fig, ax = plt.subplots(figsize=(7, 6))
    for name, (fpr, tpr) in zip(names, curves["classes"]):
        ax.plot(fpr, tpr, lw=1, label=f"{name} (AUC {fmt_auc(m['auc_per_class'][name])})")
    ax.plot(*curves["micro"], "k--", lw=2, label=f"micro-average (AUC {fmt_auc(m['auc_micro'])})")
    ax.plot(*curves["macro"], "k:", lw=2, label=f"macro-average (AUC {fmt_auc(m['auc_ovr_macro'])})")
    ax.set_xscale("symlog", linthresh=ROC_LINTHRESH)  # every curve hugs the top-left corner: zoom on small FPR
    ax.set_xlim(0, 1)
    ax.set_ylim(ROC_YMIN, 1.001)
    ax.set_xlabel("false positive rate (symlog)")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, one-vs-rest: {stem}")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def auc_gap_figure(results: list[dict], path: Path) -> str:
    """1 - AUC per class on a log axis, one series per scored model: what separates models whose AUCs
    all round to 0.9999. results: metrics() dicts with "weights" (names the series) and "auc_per_class"
    (figures/*_metrics.json work, old ones too). A class with AUC exactly 1 has no place on a log
    axis: it is drawn hollow at the axis' floor, half the smallest 1 - AUC that N test images allow."""
    plt = pyplot()

    names = list(results[0]["auc_per_class"])
    n = results[0]["n"]
    floor = 0.5 / (n * n / 4)  # one wrongly ordered pair of P x (N - P) <= N^2 / 4 pairs, halved
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, r in enumerate(results):
        gaps = np.array([1.0 - r["auc_per_class"][c] for c in names])
        label = weights_name(r["weights"]) if r.get("model") != "ensemble" else "ensemble (mean softmax)"
        line, = ax.plot(range(len(names)), np.where(gaps > 0, gaps, np.nan), "o-", lw=1, ms=5,
                        label=f"{label}: macro {1.0 - r['auc_ovr_macro']:.2e}", zorder=3)
        zero = np.nonzero(gaps <= 0)[0]
        if len(zero):
            ax.plot(zero, np.full(len(zero), floor), "o", mfc="none", color=line.get_color(), ms=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("class (one-vs-rest)")
    ax.set_ylabel("1 - AUC (log)")
    ax.set_title("1 - ROC-AUC per class: the fraction of (positive, negative) pairs ranked wrongly")
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


# -----------------------------------------------------------------------------
# Figures


def save_figures(y: np.ndarray, proba: np.ndarray, x: torch.Tensor, out: Path, stem: str, class_names,
                 m: dict | None = None) -> list[str]:
    """<stem>_roc.png, <stem>_confusion_matrix.png and (with x) <stem>_mistakes.png under out. m: the
    metrics() of (y, proba), computed here when not given; the ROC legend shows its AUCs."""
    plt = pyplot()
    from matplotlib.colors import LogNorm
    from sklearn.metrics import confusion_matrix

    out.mkdir(parents=True, exist_ok=True)
    k = proba.shape[1]
    paths = []

    # ROC: one-vs-rest per class, plus micro (pooled) and macro (mean of the class curves)
    m = m if m is not None else metrics(y, proba, class_names)
    paths.append(_save(roc_figure(y, proba, m, stem, class_names), out / f"{stem}_roc.png"))

    # Confusion matrix: counts and row-normalized (recall per class on the diagonal)
    cm = confusion_matrix(y, proba.argmax(1), labels=list(range(k)))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, mat, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], cm / cm.sum(1, keepdims=True), "row-normalized", ".3f")):
        # log colour scale: the few errors stay visible next to ~1,000 correct per class (zeros stay blank)
        ax.imshow(np.ma.masked_equal(mat, 0), cmap="Blues", norm=LogNorm(vmin=mat[mat > 0].min(), vmax=mat.max()))
        for r in range(k):
            for c in range(k):
                v = mat[r, c]
                if v:
                    ax.text(c, r, format(v, fmt), ha="center", va="center", fontsize=6 if fmt != "d" else 7,
                            color="white" if r == c else "black")
        ax.set_xticks(range(k), class_names, rotation=45 if len(str(class_names[0])) > 2 else 0)
        ax.set_yticks(range(k), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion ({title})")
    fig.suptitle(stem)
    paths.append(_save(fig, out / f"{stem}_confusion_matrix.png"))

    # The most confidently wrong test images
    if x is not None:
        pred = proba.argmax(1)
        wrong = np.nonzero(pred != y)[0]
        wrong = wrong[np.argsort(-proba[wrong, pred[wrong]])][:24]
        if len(wrong):
            cols = 8
            rows = (len(wrong) + cols - 1) // cols
            fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.7), squeeze=False)
            for ax in axes.flat:
                ax.axis("off")
            for ax, i in zip(axes.flat, wrong):
                ax.imshow(x[i, 0].numpy(), cmap="gray")
                ax.set_title(f"#{i} true {class_names[y[i]]}\npred {class_names[pred[i]]} {proba[i, pred[i]]:.2f}", fontsize=7)
            fig.suptitle(f"Most confidently wrong of {len(np.nonzero(pred != y)[0])} errors: {stem}")
            paths.append(_save(fig, out / f"{stem}_mistakes.png"))
    return paths


def _save(fig, path: Path) -> str:
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


# -----------------------------------------------------------------------------


def _print(r: dict) -> None:
    print(f"== {r['weights']} ({r['model']})")
    print(r["report_text"])
    print(f"accuracy {r['accuracy']:.4f} | F1 macro {r['f1_macro']:.4f}, weighted {r['f1_weighted']:.4f} | "
          f"ROC-AUC OvR macro {fmt_auc(r['auc_ovr_macro'])}, micro {fmt_auc(r['auc_micro'])} | n={r['n']}"
          + (f" | {r['inference_seconds']:.2f}s inference" if "inference_seconds" in r else ""))
    if "run" in r:
        run = r["run"]
        print(f"training: {run['epochs']:g} epochs, best on validation epoch {run['best_epoch']:g} ({run['val_acc']:.4f}); "
              f"history {run['history']}" + (f", curves {run['curves']}" if run["curves"] else ""))
    if "tta" in r:
        print(f"with test-time augmentation ({len(r['tta']['shifts'])} shifts, reported apart): accuracy {r['tta']['accuracy']:.4f} | "
              f"F1 macro {r['tta']['f1_macro']:.4f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Evaluate checkpoints on the official MNIST test set (10,000 images).")
    p.add_argument("--weights", nargs="+", required=True, help="one or more .pt files or train.py run folders (their best.pt); several also give the ensemble (mean softmax)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw/ (default: $DATA_DIR, else ./data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="save <name>_roc.png, <name>_confusion_matrix.png, <name>_mistakes.png and <name>_metrics.json here "
                                 "(several --weights: also models_roc_1-auc.png, 1 - AUC per class and model)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation: the mean over the image and its 4 one-pixel shifts")
    a = p.parse_args(argv)
    try:
        results = [test_model(w, a.data_dir, a.device, a.out, a.tta) for w in a.weights]
        if len(results) > 1:
            _, ckpt = load_checkpoint(a.weights[0])
            x, y, names = load_test_set(ckpt, a.data_dir)
            results.append(ensemble(results, y, names, x, a.out))
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    if a.out and len(results) > 1:  # every model scored here and their ensemble, side by side
        results[-1]["figures"].append(auc_gap_figure(results, Path(a.out) / "models_roc_1-auc.png"))
    for r in results:
        r.pop("_proba")
        r.pop("_proba_tta", None)
        if a.out:
            Path(a.out, f"{weights_name(r['weights']) if r['model'] != 'ensemble' else 'ensemble'}_metrics.json").write_text(
                json.dumps({k: v for k, v in r.items() if k != "report_text"}, indent=2))
    if a.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "report_text"} for r in results] if len(results) > 1
                         else {k: v for k, v in results[0].items() if k != "report_text"}, indent=2))
    else:
        for r in results:
            _print(r)
        if len(results) > 1:
            print("\n| model | accuracy | F1 macro | AUC macro | AUC micro |\n|---|---|---|---|---|")
            for r in results:
                print(f"| {r['weights']} | {r['accuracy']:.4f} | {r['f1_macro']:.4f} | {fmt_auc(r['auc_ovr_macro'])} | {fmt_auc(r['auc_micro'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
