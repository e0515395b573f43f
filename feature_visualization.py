"""What the first two convolution layers learned: their filters, and the maps they make of one digit.

    python feature_visualization.py --weights weights/convnet.pt --digit 7      # -> runs/figures/
    python feature_visualization.py --weights runs/convnet-lr0.1-s0              # a run folder (its best.pt)
    python feature_visualization.py --weights weights/*.pt --index 0 --out figures/   # the report's figures

For each CNN (any model with `first_conv` / `second_conv`) it writes
    <name>_conv1_filters.png   every first-layer kernel (out, 1, k, k) as a small image
    <name>_conv2_filters.png   the second layer: for the first 16 output filters, their
                               kernels on the first 8 input channels, plus the mean over
                               *all* input channels in the last column
    <name>_conv1_maps.png      the input digit, then what each first-layer filter responds to
    <name>_conv2_maps.png      the same for the second layer
For the DNN: <name>_fc1_weights.png, the first layer's weight rows as 28x28 images.
For a CNN it also prints how many first-layer filters are edge detectors, and of which direction
(filter_orientations).
Feature maps are the convolution outputs (before BN and ReLU), captured with forward hooks.
"""

import argparse
import math
import sys
from pathlib import Path

import torch

from data import DataError, load_raw, normalize
from models import CheckpointError, conv_layers, load_checkpoint, weights_name
from plots import pyplot


def _grid(images, path: Path, title: str, cols: int, cmap="gray", symmetric=False, labels=None, first=None):
    """images: (N, H, W) tensor, drawn on one colour scale (centred on 0 when symmetric) with its colour bar;
    first: an extra panel drawn before them in grey on its own scale (the input image)."""
    plt = pyplot()

    ims = [img.float().numpy() for img in images]
    v = max(abs(i).max() for i in ims) or 1.0
    lo, hi = (-v, v) if symmetric else (min(i.min() for i in ims), max(i.max() for i in ims))
    panels = ([first.float().numpy()] if first is not None else []) + ims
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1 + 1, rows * 1.2 + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, img) in enumerate(zip(axes.flat, panels)):
        if first is not None and i == 0:
            ax.imshow(img, cmap="gray")
        else:
            shown = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
        if labels is not None and i < len(labels):
            ax.set_title(labels[i], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.6, label="weight" if symmetric else "conv output (before BN and ReLU)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


@torch.no_grad()
def feature_maps(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"first_conv": (B, C1, H1, W1), "second_conv": (B, C2, H2, W2)}: the two conv layers'
    outputs (before BN and ReLU) for x (B, 1, 28, 28), and "logits" (B, K). {} maps for the DNN.

    The hooks live only for this one forward pass, so concurrent callers each need their own
    model or a lock around the call (serve.py holds one)."""
    maps = {}
    hooks = [m.register_forward_hook(lambda mod, inp, o, key=k: maps.__setitem__(key, o.detach().float().cpu()))
             for k, m in conv_layers(model).items()]
    try:
        maps["logits"] = model(x).float().cpu()
    finally:
        for h in hooks:
            h.remove()
    return maps


def feature_visualization(model_or_weights, image: torch.Tensor, out_dir, name: str | None = None) -> list[str]:
    """Plot the first/second conv filters and feature maps of `image` ((1, 28, 28) or (1, 1, 28, 28),
    normalized as in training). Returns the written paths."""
    if isinstance(model_or_weights, (str, Path)):
        model, _ = load_checkpoint(model_or_weights)
        name = name or weights_name(model_or_weights)
    else:
        model = model_or_weights.eval()
        name = name or type(model).__name__.lower()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = image.reshape(1, 1, 28, 28).float().to(next(model.parameters()).device)
    layers = conv_layers(model)
    paths = []
    if not layers:  # the DNN: what each first-layer unit looks for in pixel space
        w = model.first_linear.weight.detach().cpu()[:64].reshape(-1, 28, 28)  # (64, 28, 28)
        return [_grid(w, out / f"{name}_fc1_weights.png", f"{name}: first 64 of {model.first_linear.out_features} "
                      f"first-layer weight rows as 28x28 images", cols=8, cmap="RdBu_r", symmetric=True)]

    maps = feature_maps(model, x)

    w1 = layers["first_conv"].weight.detach().float().cpu()  # (C1, 1, k, k)
    paths.append(_grid(w1[:, 0], out / f"{name}_conv1_filters.png",
                       f"{name}: first conv, all {w1.shape[0]} filters ({w1.shape[2]}x{w1.shape[3]})",
                       cols=8, cmap="RdBu_r", symmetric=True))
    w2 = layers["second_conv"].weight.detach().float().cpu()  # (C2, C1, k, k)
    n_out, n_in = min(16, w2.shape[0]), min(8, w2.shape[1])
    panels = torch.cat([w2[:n_out, :n_in], w2[:n_out].mean(1, keepdim=True)], dim=1)  # (n_out, n_in + 1, k, k)
    paths.append(_grid(panels.reshape(-1, *w2.shape[2:]), out / f"{name}_conv2_filters.png",
                       f"{name}: second conv, filters 0-{n_out - 1} (rows) on input channels 0-{n_in - 1}; "
                       f"last column = mean over all {w2.shape[1]} inputs", cols=n_in + 1, cmap="RdBu_r", symmetric=True))
    for key, label in (("first_conv", "conv1"), ("second_conv", "conv2")):
        fmap = maps[key][0]  # (C, H, W)
        shown = fmap[:32]
        paths.append(_grid(shown, out / f"{name}_{label}_maps.png",
                           f"{name}: input, then {len(shown)} of {fmap.shape[0]} {label} feature maps ({fmap.shape[1]}x{fmap.shape[2]})",
                           cols=8, cmap="viridis", first=x[0, 0].cpu(), labels=["input"] + [f"#{i}" for i in range(len(shown))]))
    return paths


# edge directions, in degrees from the image's x axis (y pointing down), binned 45 degrees wide
DIRECTIONS = {"horizontal": 0, "diagonal (down-right)": 45, "vertical": 90, "diagonal (up-right)": 135}


def filter_orientations(kernels: torch.Tensor, min_coherence: float = 0.5) -> dict:
    """What a bank of first-layer filters responds to, from their weights alone.

    kernels: (C, k, k) or (C, 1, k, k), any float dtype. For each filter the structure tensor
    J = sum over the kernel of [gx gx, gx gy; gx gy, gy gy] (gx, gy: torch.gradient, central
    differences inside, one-sided on the border) gives the dominant gradient direction 0.5 * atan2(2 Jxy, Jxx - Jyy) and the
    coherence (l1 - l2) / (l1 + l2) of its eigenvalues: 1 for a pure edge, 0 for no preferred
    direction (Bigun & Granlund 1987, "Optimal orientation detection of linear symmetry"; Jahne,
    "Digital Image Processing", ch. 13). The edge runs across that gradient. balance = |sum w| /
    sum |w|: 0 when positive and negative weights cancel (the filter answers changes of ink, not
    flat ink), 1 when every weight has one sign.

    Returns {"filters": C, "oriented": how many have coherence >= min_coherence, "min_coherence",
    "by_direction": {name in DIRECTIONS: count of the oriented ones}, "median_balance"}.
    Raises ValueError for kernels that are not (C, k, k) or (C, 1, k, k) with k >= 2.
    """
    w = kernels.detach().float().cpu()
    if w.dim() == 4 and w.shape[1] == 1:
        w = w[:, 0]
    if w.dim() != 3 or min(w.shape[1:]) < 2:
        raise ValueError(f"filter_orientations: expected (C, k, k) or (C, 1, k, k) kernels with k >= 2, got {tuple(kernels.shape)}")
    gy, gx = torch.gradient(w, dim=(1, 2))
    jxx, jyy, jxy = (gx * gx).sum((1, 2)), (gy * gy).sum((1, 2)), (gx * gy).sum((1, 2))
    coherence = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy).clamp_min(1e-12)
    edge = (torch.rad2deg(0.5 * torch.atan2(2 * jxy, jxx - jyy)) + 90) % 180  # the edge runs across the gradient
    oriented = coherence >= min_coherence
    nearest = ((edge[oriented] + 22.5) % 180 // 45).long()  # 0: horizontal, 1: 45 degrees, 2: vertical, 3: 135 degrees
    balance = w.sum((1, 2)).abs() / w.abs().sum((1, 2)).clamp_min(1e-12)
    return {"filters": w.shape[0], "oriented": int(oriented.sum()), "min_coherence": min_coherence,
            "by_direction": {name: int((nearest == i).sum()) for i, name in enumerate(DIRECTIONS)},
            "median_balance": float(balance.median())}


def pick_test_image(ckpt: dict, data_dir=None, index: int | None = None, digit: int | None = None):
    """(image (1, 28, 28) normalized for this checkpoint, label, index) from the official test set."""
    dataset = (ckpt.get("train_config") or {}).get("dataset", "mnist")
    _, _, x_te, y_te, _ = load_raw(dataset, data_dir, download=True)
    if digit is not None:
        hits = torch.nonzero(y_te == digit).flatten()
        if not len(hits):
            raise DataError(f"no test image of class {digit}; pick a class between 0 and 9")
        index = int(hits[0])
    index = index or 0
    if not 0 <= index < len(y_te):
        raise DataError(f"--index {index} is outside the test set (0..{len(y_te) - 1})")
    norm = ckpt["normalization"]
    return normalize(x_te[index:index + 1], norm["mean"], norm["std"])[0], int(y_te[index]), index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Plot the first and second conv layers' filters and feature maps of trained models.")
    p.add_argument("--weights", nargs="+", required=True, help="checkpoints (.pt) or run folders (their best.pt) written by train.py")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--index", type=int, help="test-set image to show (default 0)")
    g.add_argument("--digit", type=int, help="use the first test image of this digit")
    p.add_argument("--out", default="runs/figures", help="output folder (default: runs/figures, git-ignored; the report's figures are in figures/)")
    p.add_argument("--data-dir", help="folder holding MNIST/raw/ (default: $DATA_DIR, else ./data)")
    a = p.parse_args(argv)
    try:
        for w in a.weights:
            model, ckpt = load_checkpoint(w)
            image, label, index = pick_test_image(ckpt, a.data_dir, a.index, a.digit)
            paths = feature_visualization(model, image, a.out, name=weights_name(w))
            print(f"{w}: test image #{index} (label {label}) -> " + ", ".join(paths))
            if layers := conv_layers(model):
                o = filter_orientations(layers["first_conv"].weight)
                print(f"  first-layer filters: {o['oriented']} of {o['filters']} have one edge direction (coherence >= "
                      f"{o['min_coherence']:g}): " + ", ".join(f"{n} {k}" for k, n in o["by_direction"].items())
                      + f"; median |sum w| / sum |w| {o['median_balance']:.2f}")
    except (CheckpointError, DataError) as e:
        sys.exit(f"error: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
