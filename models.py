"""Every network of the study, built layer by layer from torch.nn, plus the checkpoint format.

Read top to bottom: small parts (conv-BN-ReLU), then blocks (BasicBlock), then the
nets, then the registry (`MODELS`, `build_model`) and the checkpoint helpers. Every
CNN exposes `first_conv` and `second_conv`, so feature visualization needs no
per-model code. Input everywhere: (B, 1, 28, 28), normalized; output: (B, 10) logits.

Nothing here imports torchvision; tests compare our ResNet-18 with torchvision's.
"""

import inspect
import io
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

# -----------------------------------------------------------------------------
# Small parts


def conv_bn(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias: BN follows) -> BN -> ReLU, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def conv_pool_bn(c_in: int, c_out: int) -> nn.Sequential:
    """Conv 3x3 -> MaxPool 2 -> BN -> ReLU.

    Pooling *before* BN and ReLU gives the same function class (max-pool commutes with
    the monotone per-channel BN+ReLU up to BN's sign) at a quarter of the BN/ReLU cost:
    on a 2-core CPU the elementwise layers are a large share of a small CNN's time.
    """
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flat_features(features: nn.Module, input_size=(1, 1, 28, 28)) -> int:
    """How many values `features` outputs per image: computed, never written down (no 9216)."""
    was_training = features.training
    with torch.no_grad():
        n = features.eval()(torch.zeros(input_size)).flatten(1).shape[1]
    features.train(was_training)
    return n


# -----------------------------------------------------------------------------
# The fully-connected baseline


class DNN(nn.Module):
    """784 -> 1024 -> 1024 -> 10 by default: [Linear -> BN -> ReLU -> Dropout] per hidden layer.

    1,865,738 parameters at the default sizes. No convolution: every pixel is an
    independent input, so shift-invariance must come from augmentation.
    """

    def __init__(self, hidden: tuple[int, ...] = (1024, 1024), dropout: float = 0.2,
                 in_features: int = 28 * 28, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]  # (B, 1, 28, 28) -> (B, 784)
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    @property
    def first_linear(self) -> nn.Linear:
        return self.features[1]

    def forward(self, x):
        return self.fc(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN, added to the (projected) input, then ReLU."""

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:  # the shortcut must match shape: 1x1 conv + BN
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


# -----------------------------------------------------------------------------
# A classic CNN, sized for a 2-core CPU


class ConvNet(nn.Module):
    """Strided 5x5 stem, two conv-pool stages, a linear head on the flattened 3x3 maps.

        (B,1,28,28) -stem 5x5/2-> (B,32,14,14) -conv,pool-> (B,64,7,7) -conv,pool-> (B,128,3,3)
        -flatten, dropout-> (B,1152) -fc-> (B,10)

    Why this shape: the first layer at full 28x28 resolution is where a naive CNN spends
    its time (pytorch/examples' 32->64 conv at 26x26 is ~14 M multiply-adds per image).
    A stride-2 5x5 stem sees the same receptive field and leaves every later conv at
    14x14 or less: ~7.5 M multiply-adds per image in all. The head keeps *where* each
    feature fired (flatten) rather than pooling it away: in one-epoch runs that was worth
    ~0.3 points of accuracy over a global max or average pool. 104,938 parameters at width 32.

    blocks > 0 makes it deeper without changing a shape: that many residual BasicBlocks (two
    3x3 conv-BN, identity shortcut) after the stem, after layer1 and after layer2, at 14x14,
    7x7 and 3x3. blocks=1 is 9 conv layers, like the small residual CNNs behind the best
    fixed-schedule MNIST results; blocks=0 is the net
    above, with the same state-dict keys as before the option existed.
    """

    def __init__(self, width: int = 32, dropout: float = 0.1, num_classes: int = 10, blocks: int = 0):
        super().__init__()
        w = width
        self.stem = conv_bn(1, w, kernel_size=5, stride=2)
        self.layer1 = conv_pool_bn(w, 2 * w)
        self.layer2 = conv_pool_bn(2 * w, 4 * w)
        # Empty when blocks=0: an empty nn.Sequential is the identity and holds no parameters.
        self.res0, self.res1, self.res2 = (nn.Sequential(*[BasicBlock(c, c) for _ in range(blocks)]) for c in (w, 2 * w, 4 * w))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(flat_features(nn.Sequential(self.stem, self.layer1, self.layer2)), num_classes)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stem[0]

    @property
    def second_conv(self) -> nn.Conv2d:
        return self.layer1[0]

    def forward(self, x):
        x = self.res2(self.layer2(self.res1(self.layer1(self.res0(self.stem(x))))))  # (B, 4w, 3, 3)
        return self.fc(self.dropout(x.flatten(1)))  # (B, 10)


class QuickNet(ConvNet):
    """ConvNet at width 16 plus one 3x3 conv on the 3x3 maps: the speed benchmark's net.

        (B,1,28,28) -stem 5x5/2-> (B,16,14,14) -conv,pool-> (B,32,7,7) -conv,pool-> (B,64,3,3)
        -conv 3x3-> (B,64,3,3) -flatten-> (B,576) -fc-> (B,10)

    Why: on 2 CPU cores the time to 99.5% is set by multiply-adds per image times the
    epochs it takes. Width 16 costs ~1.8 M multiply-adds per image in the two stages,
    a quarter of ConvNet's 7.5 M, and the extra conv where the maps are 3x3 adds only
    0.33 M but lets every output see the whole digit before the linear head. The evidence
    that this conv leaves a margin above 99.5% which ConvNet at width 16 lacked, at equal
    epochs: the recipe trials, benchmarks/results/trials.jsonl (benchmarks/trials.py). No
    dropout: in short runs it cost time and did not help. 66,426 parameters at width 16.
    """

    def __init__(self, width: int = 16, dropout: float = 0.0, num_classes: int = 10):
        super().__init__(width, dropout, num_classes)
        self.head = conv_bn(4 * width, 4 * width)  # keeps the (B, 4w, 3, 3) shape, so fc is unchanged

    def forward(self, x):
        x = self.head(self.layer2(self.layer1(self.stem(x))))  # (B, 4w, 3, 3)
        return self.fc(self.dropout(x.flatten(1)))  # (B, 10)


# -----------------------------------------------------------------------------
# ResNet-18 (He et al., 2016), small-image variant, torchvision's layer names


def make_stage(block, c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` blocks; the first one changes width and (with stride 2) halves the resolution."""
    return nn.Sequential(block(c_in, c_out, stride), *[block(c_out, c_out) for _ in range(blocks - 1)])


# The stem is a design choice, not part of "ResNet-18": it sets the resolution every later
# stage works at, and so the cost. Every checkpoint records it (the stride changes no
# tensor shape, so a file could otherwise load silently into a different network).
#   name          stem                               layer1..layer4 maps   fwd GFLOP/img (width 64)
#   "3x3s1"       3x3 conv, stride 1 (CIFAR-style)   28, 14, 7, 4          0.91
#   "3x3s2"       3x3 conv, stride 2                 14, 7, 4, 2           0.23
#   "7x7s2pool"   7x7/2 conv + 3x3/2 max-pool        7, 4, 2, 1            0.06 (torchvision's ImageNet stem)
RESNET_STEMS = ("3x3s2", "3x3s1", "7x7s2pool")
# What every ResNet checkpoint written before the stem became an option was built with.
LEGACY_RESNET_STEM = "3x3s1"


class ResNet(nn.Module):
    """ResNet for 28x28 input with a choice of stem (see RESNET_STEMS); default "3x3s2":

        (B,1,28,28) -conv1 3x3/2,bn1,relu-> (B,w,14,14) -layer1-> (B,w,14,14) -layer2-> (B,2w,7,7)
        -layer3-> (B,4w,4,4) -layer4-> (B,8w,2,2) -avgpool-> (B,8w) -fc-> (B,10)

    ImageNet's 7x7/2 stem and max-pool shrink 28x28 to 7x7 before the first block;
    the stride-1 3x3 stem keeps 28x28 and costs 4x the default's multiply-adds.
    """

    def __init__(self, layers=(2, 2, 2, 2), width: int = 64, block=BasicBlock, num_classes: int = 10, in_channels: int = 1,
                 stem: str = "3x3s2"):
        super().__init__()
        if stem not in RESNET_STEMS:
            raise ValueError(f"unknown ResNet stem {stem!r}; choose one of {', '.join(RESNET_STEMS)}")
        self.stem = stem
        widths = [width * 2 ** i for i in range(len(layers))]  # 64-128-256-512 at width 64
        k, s = (7, 2) if stem == "7x7s2pool" else (3, 2 if stem == "3x3s2" else 1)
        self.conv1 = nn.Conv2d(in_channels, width, k, stride=s, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        # torchvision's name; no parameters, so the state-dict keys are the same with or without it
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "7x7s2pool" else nn.Identity()
        c_in = width
        for i, (c_out, blocks) in enumerate(zip(widths, layers)):
            self.add_module(f"layer{i + 1}", make_stage(block, c_in, c_out, blocks, stride=1 if i == 0 else 2))
            c_in = c_out
        self.stages = [getattr(self, f"layer{i + 1}") for i in range(len(layers))]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # No zero-init of each block's last BN (torchvision's zero_init_residual): measured
        # here, it left ResNet-18 at ~30% train accuracy after 78 steps, against 76% without.

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.conv1

    @property
    def second_conv(self) -> nn.Conv2d:
        return self.layer1[0].conv1

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return self.fc(self.avgpool(x).flatten(1))


class ResNet18(ResNet):
    """ResNet-18: BasicBlock x (2, 2, 2, 2). 11,172,810 parameters at width 64 with a 3x3 stem
    (torchvision's 11,181,642 less the difference of the stem: 3x3x1 instead of 7x7x3 input
    kernels; 11,175,370 with the 7x7 stem). `width=16` gives a 16-32-64-128 variant with
    701,178 parameters, ~16x cheaper."""

    def __init__(self, width: int = 64, num_classes: int = 10, stem: str = "3x3s2"):
        super().__init__(layers=(2, 2, 2, 2), width=width, num_classes=num_classes, stem=stem)


# -----------------------------------------------------------------------------
# Our own model


class Residual(nn.Module):
    """x + f(x), with f = conv-BN-ReLU -> conv-BN whose last BN scale starts at 0, so the
    block starts as the identity and the net trains from the first step like its plain
    counterpart (Goyal et al., 2017). The ReLU after the sum is the caller's."""

    def __init__(self, channels: int):
        super().__init__()
        self.f = nn.Sequential(conv_bn(channels, channels),
                               nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.f[2].weight)

    def forward(self, x):
        return x + self.f(x)


class FastResNet(nn.Module):
    """A small residual CNN meant to beat ResNet-18 on MNIST in accuracy *and* speed.

        (B,1,28,28) -stem 5x5/2-> (B,w,14,14) -conv,pool-> (B,2w,7,7) -residual-> (B,2w,7,7)
        -conv,pool-> (B,4w,3,3) -residual-> (B,4w,3,3) -flatten, dropout, fc-> (B,10)

    The argument: ResNet-18 spends most of its multiply-adds at 14x14 and above with up
    to 512 channels, capacity that 28x28 digits cannot use. This net keeps ResNet's ideas
    (identity shortcuts, BN after every conv, zero-initialized residual branches) but puts
    the depth where the maps are small, at a fraction of the multiply-adds (`python
    models.py` prints both), with 7 convolutions on the deepest path. Stem, stage
    order (conv-pool-BN-ReLU) and head (flatten, as position matters in a centred digit)
    are ConvNet's, each measured there. 474,346 parameters at width 32.
    """

    def __init__(self, width: int = 32, dropout: float = 0.1, num_classes: int = 10):
        super().__init__()
        w = width
        self.stem = conv_bn(1, w, kernel_size=5, stride=2)
        self.layer1 = nn.Sequential(conv_pool_bn(w, 2 * w), Residual(2 * w), nn.ReLU(inplace=True))
        self.layer2 = nn.Sequential(conv_pool_bn(2 * w, 4 * w), Residual(4 * w), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(flat_features(nn.Sequential(self.stem, self.layer1, self.layer2)), num_classes)

    @property
    def first_conv(self) -> nn.Conv2d:
        return self.stem[0]

    @property
    def second_conv(self) -> nn.Conv2d:
        return self.layer1[0][0]

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))  # (B, 4w, 3, 3)
        return self.fc(self.dropout(x.flatten(1)))  # (B, 10)


# -----------------------------------------------------------------------------
# Reference recipes' networks, rebuilt here so the speed benchmark can train them in our
# own loop (they are not part of the study's comparison).


class PytorchExampleNet(nn.Module):
    """pytorch/examples mnist/main.py: conv32 -> conv64 -> max-pool -> dropout .25 -> fc 128 -> dropout .5 -> fc 10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)  # (B,32,26,26)
        self.conv2 = nn.Conv2d(32, 64, 3)  # (B,64,24,24), pooled to (B,64,12,12)
        self.features = nn.Sequential(self.conv1, nn.ReLU(), self.conv2, nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Dropout(0.25), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(flat_features(self.features), 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes))

    first_conv = property(lambda self: self.conv1)
    second_conv = property(lambda self: self.conv2)

    def forward(self, x):
        return self.head(self.features(x))


class KerasExampleNet(nn.Module):
    """Keras "Simple MNIST convnet": conv32 -> pool -> conv64 -> pool -> dropout .5 -> fc 10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)  # (B,32,26,26) -> pool (B,32,13,13)
        self.conv2 = nn.Conv2d(32, 64, 3)  # (B,64,11,11) -> pool (B,64,5,5)
        self.features = nn.Sequential(self.conv1, nn.ReLU(), nn.MaxPool2d(2), self.conv2, nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Flatten(), nn.Dropout(0.5))
        self.fc = nn.Linear(flat_features(self.features), num_classes)  # 64 * 5 * 5 = 1600 inputs

    first_conv = property(lambda self: self.conv1)
    second_conv = property(lambda self: self.conv2)

    def forward(self, x):
        return self.fc(self.features(x))


# -----------------------------------------------------------------------------
# Registry

MODELS = {
    "dnn": DNN,
    "convnet": ConvNet,
    "resnet": ResNet18,
    "fastresnet": FastResNet,
    "quicknet": QuickNet,
    "pytorch-example": PytorchExampleNet,
    "keras-example": KerasExampleNet,
}
STUDY_MODELS = ("dnn", "convnet", "resnet", "fastresnet")  # what `--model all` trains and the report compares


def list_models(study_only: bool = False) -> list[str]:
    return list(STUDY_MODELS if study_only else MODELS)


def build_model(name: str, **config) -> nn.Module:
    """build_model("resnet", width=16) -> ResNet18(width=16)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**config)


def complete_config(name: str, config: dict | None = None) -> dict:
    """`config` with every constructor default written out: complete_config("resnet") ->
    {"width": 64, "num_classes": 10, "stem": "3x3s2"}. Checkpoints store this, so a file
    never depends on a default that a later version of this file may change."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    params = inspect.signature(MODELS[name].__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty}
    unknown = set(config or {}) - set(params)
    if unknown:
        raise ValueError(f"{name} takes no option {', '.join(sorted(unknown))}; it takes {', '.join(defaults)}")
    return {**defaults, **(config or {})}


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """{"first_conv": ..., "second_conv": ...} for CNNs, {} for the DNN."""
    return {k: getattr(model, k) for k in ("first_conv", "second_conv") if hasattr(model, k)}


def probe(model: nn.Module, hooks: dict, input_size=(1, 1, 28, 28)) -> None:
    """One forward pass of zeros (shape `input_size`) in eval mode with no_grad, with forward hooks
    {module: hook(module, inputs, output)} attached for the pass only; the training mode is restored."""
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def summary(model: nn.Module, input_size=(1, 1, 28, 28)) -> str:
    """A Keras-style table: every leaf layer, its output shape and parameter count."""
    rows = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, _inputs, output):
        rows.append((names[module], type(module).__name__, tuple(output.shape[1:]),
                     sum(p.numel() for p in module.parameters(recurse=False))))

    probe(model, {m: hook for m in model.modules() if not list(m.children())}, input_size)
    lines = [f"{'layer':<28}{'type':<18}{'output shape':<18}{'params':>10}", "-" * 74]
    lines += [f"{n:<28}{t:<18}{str(s):<18}{p:>10,}" for n, t, s, p in rows]
    total = count_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines += ["-" * 74, f"total params: {total:,} (trainable {trainable:,})"]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Checkpoints: one format for runs/*/best.pt, last.pt and weights/*.pt.
# A dict of tensors and plain Python values, loadable with torch.load(weights_only=True):
#   model, model_config, state_dict, train_config, metrics, normalization, epoch


class CheckpointError(Exception):
    """A checkpoint that cannot be used, phrased as one line naming the file and the fix."""


CHECKPOINT_KEYS = ("model", "model_config", "state_dict", "normalization")


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temp file in the same folder, then rename: a crash or Ctrl-C never
    leaves a half-written file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def checkpoint(model: nn.Module, record: dict, normalization: dict, epoch: float, metrics: dict, **extra) -> dict:
    """A checkpoint dict: the weights, the run's record (its TrainConfig as a dict, plus facts such as
    world_size) and the normalization it was trained with; load_checkpoint rebuilds the net."""
    return {"model": record["model"], "model_config": dict(record["model_config"]), "state_dict": model.state_dict(),
            "train_config": dict(record), "metrics": dict(metrics), "normalization": normalization, "epoch": epoch, **extra}


RUN_CHECKPOINT = "best.pt"  # a run folder's validation-best checkpoint: what a run folder means as --weights


def weights_name(path: str | os.PathLike) -> str:
    """How a checkpoint is named in figures and tables: a run folder by its name, a file by its stem."""
    return Path(path).name if Path(path).is_dir() else Path(path).stem


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict, read with weights_only=True (a pickle that would run code is refused). A run
    folder (train.py's, holding best.pt) stands for its best.pt."""
    path = Path(path)
    if path.is_dir() and (path / RUN_CHECKPOINT).is_file():
        path = path / RUN_CHECKPOINT
    if path.is_dir():
        found = sorted(q.name for q in path.glob("*.pt"))
        raise CheckpointError(f"{path}: is a folder; pass one checkpoint file" + (
            f" in it ({', '.join(found[:4])}{', ...' if len(found) > 4 else ''})" if found else " (.pt)"))
    if not path.is_file():
        near = sorted(q.name for q in path.parent.glob("*.pt")) if path.parent.is_dir() else []
        raise CheckpointError(f"{path}: no such file; " + (f"checkpoints in {path.parent}: {', '.join(near[:6])}"
                                                           f"{', ...' if len(near) > 6 else ''}" if near else
                                                           "train one with `python train.py --model convnet`"))
    try:
        with open(path, "rb") as f:
            ckpt = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        if "GLOBAL" in str(e) or "global" in str(e).split("WeightsUnpickler error:")[-1]:  # a class or function: code
            raise CheckpointError(f"{path}: refused, it holds objects other than weights (a pickle that could run code); "
                                  f"use a checkpoint written by train.py") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); "
                              f"pass a .pt file written by train.py") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a checkpoint of this repository (needs keys {', '.join(CHECKPOINT_KEYS)}; "
                              f"has {have}); pass a .pt file written by train.py")
    return ckpt


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def strip_wrapper_prefixes(state_dict: dict) -> dict:
    """The state dict with the prefixes that wrappers add removed from every key, repeatedly
    (a compiled DDP model saves "module._orig_mod.conv1.weight"): a prefix is removed only
    when every key has it, so a model with a submodule really named "module" is left alone."""
    out = dict(state_dict)
    while out:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in out)), None)
        if prefix is None:
            break
        out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def load_checkpoint(path: str | os.PathLike, device="cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode with the checkpoint's weights, the checkpoint dict)."""
    ckpt = read_checkpoint(path)
    name = ckpt["model"]
    if name not in MODELS:
        raise CheckpointError(f"{path}: names model {name!r}, which models.py does not define "
                              f"(known: {', '.join(MODELS)}); use a checkpoint of a known model")
    config = dict(ckpt["model_config"])
    if name == "resnet" and "stem" not in config:
        # Written before the stem was an option (and recorded): every such file has the 3x3 stride-1 stem.
        config["stem"] = LEGACY_RESNET_STEM
    try:
        model = build_model(name, **config)
    except TypeError as e:
        raise CheckpointError(f"{path}: its model_config does not fit {name!r} ({e})") from None
    own = model.state_dict()
    given = strip_wrapper_prefixes(ckpt["state_dict"])
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    misshaped = [k for k in own if k in given and tuple(given[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        examples = "; ".join(f"{what} e.g. {keys[0]}" for what, keys in
                             (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", misshaped)) if keys)
        raise CheckpointError(f"{path}: its state dict does not fit {name!r}: {len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(misshaped)} wrongly shaped keys ({examples}); "
                              f"was it trained with another model config?")
    model.load_state_dict(given)
    return model.to(device).eval(), ckpt


if __name__ == "__main__":
    for name in MODELS:
        model = build_model(name)
        role = "study model" if name in STUDY_MODELS else "reference recipe (benchmark only)"
        print(f"\n== {name}: {type(model).__name__}, {count_params(model):,} parameters ({role})")
        print(summary(model))
