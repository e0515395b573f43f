"""One training loop for every model of models.py.

    python train.py --model convnet                      # its default recipe (seconds)
    python train.py --model resnet --lr 0.001            # one run -> runs/resnet-lr0.001-s0/
    python train.py --model convnet --recipe best        # the study's final recipe: what weights/ ships
    python train.py --model convnet --lr-find            # LR range test
    python train.py --resume runs/convnet-lr0.2-s0       # continue a stopped run
    python train.py --config runs/convnet-lr0.1-s0/config.json --seed 1   # a run's settings again

The flow: CLI flags (generated from TrainConfig's fields) -> one TrainConfig (every setting,
defaults filled per model) -> train(config) -> run folder (config.json, history.csv, best.pt,
last.pt, curves.png, log.txt; runs.py writes them) -> weights/<model>.pt when the run beats
what is there on validation accuracy. A grid of models x LRs is the study's LR stage
(`python study.py --only lr`), not this script's.

Speed: the whole dataset in one tensor on the device, batches sliced and augmented with tensor ops,
bf16 autocast + channels_last on CPUs with bf16 instructions, AMP on CUDA (benchmarks/speed.py).
"""

import argparse
import dataclasses
import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from data import Augment, Data, DataError, augment, batches, load_data
from models import MODELS, RESNET_STEMS, CheckpointError, build_model, complete_config, read_checkpoint, save_atomic
from runs import (Dist, RunLog, add_dataclass_flags, checkpoint, confusion, dataclass_argv, distributed, eager, environment,
                  flag_text, log_epoch, log_header, macro_f1, open_run_dir, plot_curves, plot_lr_find, progress_bar, promote, resolve_device, resolve_precision, restore_last, save_last, skip_dynamo_import,
                  stop_on_signals, write_history)


# -----------------------------------------------------------------------------
# torch.optim's optimizers without the torch._dynamo import (runs.eager: ~1.4 s less start-up).
skip_dynamo_import()
OPTIMIZERS = {"sgd": eager(torch.optim.SGD), "adam": eager(torch.optim.Adam), "adamw": eager(torch.optim.AdamW),
              "adadelta": eager(torch.optim.Adadelta)}

# -----------------------------------------------------------------------------
# Configuration: one object per run, stored in config.json and in every checkpoint.

# Per-model recipes: what a flag left unset means for each model, chosen by measurement on the 2-core
# CPU (one-cycle SGD-Nesterov trained every BN network fastest; smoothing and shifts cost nothing per
# step). Evidence: README "Speed", benchmarks/results/, results/cells/, and these lines' git history.
RECIPES = {
    "dnn": dict(optimizer="sgd", lr=0.1, epochs=10),  # the cheap baseline, not tuned beyond one run
    "convnet": dict(optimizer="sgd", lr=0.1, epochs=1, batch_size=128),  # batch 128: more steps in one epoch paid off
    "resnet": dict(optimizer="sgd", lr=0.1, epochs=2),  # not tuned: minutes an epoch on 2 cores; lr 0.1 beat 0.3 short
    "fastresnet": dict(optimizer="sgd", lr=0.1, epochs=3, batch_size=128),  # ConvNet's recipe, longer
    # The speed benchmark's: EMA and a mild affine warp reached both targets earliest (benchmarks/results/trials.jsonl).
    "quicknet": dict(optimizer="sgd", lr=0.2, epochs=5, batch_size=128, ema=0.99, rotate=5.0, scale=0.05),
}
FALLBACK = dict(optimizer="sgd", lr=0.1, epochs=1.0, batch_size=256, ema=0.0, rotate=0.0, scale=0.0)  # models without a recipe (the reference nets)

# The study's final recipes, `--recipe best`: the settings `python study.py` chose on the validation
# split for its final runs; they train the shipped weights (minutes to an hour on 2 CPU cores). A test
# checks that they equal the study's choice from the committed results (study.best_recipe). Evidence:
# report.md, Step 5; report-appendix.md, "Accuracy targets and the runs made for them"; results/cells/*-final-*.json.
AFFINE = dict(rotate=10.0, scale=0.1)  # with the recipe's +-2 px shifts
BEST_RECIPES: dict[str, dict] = {
    "dnn": dict(optimizer="adam", lr=0.001, epochs=150, **AFFINE),  # the final stage's e150 attempt won on validation
    "convnet": dict(optimizer="adamw", lr=0.01, epochs=30, **AFFINE, elastic=34.0, elastic_sigma=6.0, model_config={"width": 64}),
    "resnet": dict(optimizer="sgd", lr=0.1, epochs=10, **AFFINE),  # ties with the e15 attempt go to this recipe
    "fastresnet": dict(optimizer="sgd", lr=0.1, epochs=30, **AFFINE),
}


def setting(default=None, help: str = "", **cli):
    """A TrainConfig field: its default, its --help text and argparse options (choices, nargs, flag)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Every setting of one run. `python train.py --help` lists a flag per field (made from this class)."""
    model: str = setting("convnet", f"one of {', '.join(MODELS)}")
    model_config: dict = setting({}, "build_model's keyword arguments as JSON, e.g. '{\"width\": 16}' "
                                     "(or --width, --dropout, --stem)")
    dataset: str = setting("mnist", choices=["mnist", "fashion-mnist"])
    data_dir: str | None = setting(None, "folder holding MNIST/raw/ (default: $DATA_DIR, else ./data)")
    lr: float | None = setting(None, "peak learning rate (default: the model's recipe)")
    epochs: float | None = setting(None, "epochs, fractions allowed: 0.5 = half an epoch (default: the model's recipe)")
    batch_size: int | None = setting(None, "the global batch (default: the model's recipe, 256 or 128)")
    optimizer: str | None = setting(None, "default: the model's recipe (sgd = Nesterov momentum)",
                                    choices=["sgd", "adam", "adamw", "adadelta"])
    momentum: float = setting(0.9, "SGD's momentum (Nesterov when > 0)")
    schedule: str = setting("onecycle", "onecycle = linear warmup, then linear decay to 0; step = x gamma each epoch",
                            choices=["onecycle", "cosine", "constant", "step"])
    warmup: float = setting(0.1, "fraction of all steps spent ramping the LR up from 0")
    gamma: float = setting(0.7, "the step schedule's factor per epoch")
    weight_decay: float = setting(5e-4, "on weights only, never on BN parameters or biases")
    label_smoothing: float = setting(0.1, "of the optimised cross-entropy (validation loss is plain CE)")
    augment: bool = setting(True, "random shifts (and rotation, scale, elastic distortion) of training images")
    translate: float = setting(2.0, "max random shift in pixels")
    rotate: float | None = setting(None, "max random rotation in degrees (default: the recipe's, 0 except QuickNet's)")
    scale: float | None = setting(None, "max random relative scale change, 0.1 = +-10% (default: the recipe's)")
    elastic: float = setting(0.0, "elastic distortion strength alpha in pixels (0 = off; Simard et al. used 34)")
    elastic_sigma: float = setting(4.0, "smoothness of the elastic displacement field in pixels")
    patience: int | None = setting(None, "early stopping: stop after this many epochs without a better val accuracy")
    ema: float | None = setting(None, "validate and save an exponential moving average of the weights with this decay "
                                      "per step (e.g. 0.999; 0 = off; default: the recipe's, off except QuickNet's)")
    seed: int = setting(0)
    deterministic: bool = setting(False, "deterministic algorithms only (bitwise-repeatable on CPU)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    precision: str = setting("auto", "auto: bf16 on CPUs with bf16 instructions and on CUDA, else fp32",
                             choices=["auto", "fp32", "bf16", "fp16"])
    channels_last: bool | None = setting(None, "NHWC memory layout (default: yes for CNNs)")
    limit_train: int | None = setting(None, "train on the first N training images only (quick runs, tests)")
    # Refit: train on train + validation (all 60,000 MNIST training images) for exactly `epochs`, with
    # a recipe and epoch count chosen on validation before. Nothing is left to choose on: the last
    # epoch is kept, the "val" columns are in-sample, and the run is never promoted into weights/.
    refit: bool = setting(False, "train on train + validation for exactly --epochs; keeps the last epoch, never promoted")
    # Off for runs that choose between recipes (study stage "recipes"): they are judged on validation
    # only, so the test set is not looked at for them at all (issue #25).
    score_test: bool = setting(True, "score the validation-best checkpoint on the test set at the end")
    out: str = setting("runs", "folder for run folders")
    run_name: str | None = setting(None, "name of the run folder under --out (default <model>-lr<lr>-s<seed>)")
    weights_dir: str | None = setting("weights", "where a run that beats the stored model on validation accuracy "
                                                 "is copied ('' = never)")
    eval_batch_size: int = setting(1000, "images per forward pass when evaluating")
    sync_bn: bool = setting(False, "under torchrun: BatchNorm statistics over the global batch (CUDA only)")

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from the model's recipe, so the run is fully described."""
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        recipe = {**FALLBACK, **RECIPES.get(self.model, {})}
        cfg = dataclasses.replace(self, **{k: v for k, v in recipe.items() if getattr(self, k) is None})
        # Every constructor argument written out (e.g. ResNet's stem): the run never depends on a default.
        cfg.model_config = complete_config(cfg.model, cfg.model_config)
        cfg.device = resolve_device(cfg.device)
        cfg.precision = resolve_precision(cfg.precision, cfg.device)
        if cfg.channels_last is None:
            cfg.channels_last = cfg.model != "dnn"
        cfg.run_name = cfg.run_name or run_name(cfg)
        return cfg


CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def run_name(cfg: TrainConfig) -> str:
    prefix = "" if cfg.dataset == "mnist" else f"{cfg.dataset}-"
    return f"{prefix}{cfg.model}-lr{cfg.lr:g}-s{cfg.seed}"


# -----------------------------------------------------------------------------
# The command line, generated from TrainConfig: a flag per field, and the reverse (config -> argv).

MODEL_CONFIG_FLAGS = {  # shortcuts into model_config
    "width": dict(type=int, help="model width (convnet, quicknet, resnet, fastresnet): model_config's width"),
    "dropout": dict(type=float, help="dropout rate (dnn, convnet, quicknet, fastresnet): model_config's dropout"),
    "stem": dict(choices=RESNET_STEMS, help="ResNet-18's stem (default 3x3s2; see models.RESNET_STEMS)")}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its default and help; --width/--dropout/--stem into model_config."""
    add_dataclass_flags(p, TrainConfig)
    for name, options in MODEL_CONFIG_FLAGS.items():
        p.add_argument(f"--{name}", **options)


def config_from_namespace(a: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
    shortcuts = {k: getattr(a, k) for k in MODEL_CONFIG_FLAGS if getattr(a, k, None) is not None}
    cfg.model_config = {**cfg.model_config, **shortcuts}
    return cfg


def config_argv(cfg: TrainConfig) -> list[str]:
    """The flags that make `cfg` again (every field that differs from its default): config -> argv,
    the reverse of parse_args + config_from_args. model_config's width, dropout, stem use their shortcuts."""
    mc = cfg.model_config
    short = [x for k in MODEL_CONFIG_FLAGS if mc.get(k) is not None for x in (f"--{k}", flag_text(mc[k]))]
    rest = {k: v for k, v in mc.items() if k not in MODEL_CONFIG_FLAGS or v is None}
    return short + dataclass_argv(dataclasses.replace(cfg, model_config=rest))


def autocast(cfg: TrainConfig):
    if cfg.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device_type=cfg.device.split(":")[0], dtype=dtype)


# -----------------------------------------------------------------------------
# Objective and metrics


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """CE = -sum_i y_i log(softmax(z)_i), averaged over the batch. logits: (B, K); target: (B,) class
    indices; y is the one-hot target smoothed to (1 - eps) * onehot + eps / K (label smoothing)."""
    log_p = torch.log_softmax(logits.float(), dim=-1)  # (B, K), computed in fp32 even under autocast
    k = logits.shape[-1]
    y = torch.full_like(log_p, label_smoothing / k)
    y.scatter_(1, target.unsqueeze(1), 1.0 - label_smoothing + label_smoothing / k)  # (B, K)
    return -(y * log_p).sum(dim=-1).mean()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> dict:
    """Loss (plain CE), accuracy and macro-F1 of `model` on (x, y), in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, conf = 0.0, torch.zeros(10, 10, dtype=torch.long)
    for xb, yb in batches(x, y, cfg.eval_batch_size):
        if cfg.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(cfg):
            logits = model(xb)
        loss_sum += float(cross_entropy(logits, yb)) * len(yb)
        conf += confusion(yb, logits.argmax(1), 10)
    model.train(was_training)
    n = int(conf.sum())
    return {"loss": loss_sum / max(n, 1), "acc": float(conf.diag().sum()) / max(n, 1), "f1": macro_f1(conf)}


# -----------------------------------------------------------------------------
# Optimizer and schedule


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay pulls weights toward 0; on BN scales/shifts and biases it only fights
    # the normalization, so those (the 1-D parameters) are left out.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return OPTIMIZERS["sgd"](groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer in OPTIMIZERS:
        return OPTIMIZERS[cfg.optimizer](groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd, adam, adamw or adadelta")


def lr_factor(step: int, total: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak LR at `step` (0-based) of `total`."""
    warm = int(cfg.warmup * total)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)  # 0 -> 1 after the warmup
    if cfg.schedule == "onecycle":
        return max(1.0 - progress, 0.0)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":  # pytorch/examples' StepLR(step_size=1 epoch, gamma)
        return cfg.gamma ** (step // steps_per_epoch)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose onecycle, cosine, constant or step")


# -----------------------------------------------------------------------------
# Randomness that a resumed run can replay exactly: the order of epoch e and the
# augmentation of step s are functions of (seed, e) and (seed, s) alone.


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * step + 1)


# -----------------------------------------------------------------------------
# The step: one forward, backward and optimizer update. train() and lr_find() call it, and so do
# benchmarks/ and the study's throughput estimate.


def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
               scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch x (B, 1, 28, 28), y (B,) class indices: returns (loss, logits (B, 10)).

    The loss is the optimised one (CE with cfg.label_smoothing, fp32 even under autocast); with fp16
    the scaler scales it. The caller steps the LR schedule."""
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(cfg):
        logits = net(x)  # (B, 10)
    loss = cross_entropy(logits, y, cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return loss, logits


# -----------------------------------------------------------------------------
# Training


class Diverged(Exception):
    """The training loss is not finite."""


def run_length(cfg: TrainConfig, n: int) -> tuple[int, int, int]:
    """(batch size, steps per epoch, total steps) of a resolved config on n training images; the last
    partial batch of an epoch is dropped (each epoch drops different samples)."""
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs
    return bs, steps_per_epoch, max(1, round(cfg.epochs * steps_per_epoch))


def build_net(cfg: TrainConfig, dist: Dist, dev: torch.device):
    """(model, net, optimizer, ema): net is what the step calls (the model, or its DDP wrapper, which
    averages gradients); ema, with --ema, the moving average of the weights (BN statistics included)
    that is validated, chosen and saved: late in training it sits nearer the centre of the minimum
    that the noisy SGD iterates circle around."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **cfg.model_config)
    if cfg.sync_bn and dist.world > 1 and dev.type != "cuda":
        raise ValueError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm runs on GPUs only); drop it on CPU")
    if cfg.sync_bn and dist.world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        torch.manual_seed(cfg.seed * 1000 + dist.rank)  # same weights (DDP broadcast them), own dropout masks
    ema = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    return model, net, opt, ema


@dataclass
class Run:
    """One training run's moving parts (start_run builds them); train() drives it epoch by epoch."""
    cfg: TrainConfig
    record: dict  # config.json: the config and the run's facts (world_size, backend)
    dist: Dist
    dev: torch.device
    run_dir: Path
    log: RunLog
    data: Data
    tensors: tuple  # x_train (N, 1, 28, 28), y_train (N,), x_val, y_val, on dev
    model: nn.Module
    net: nn.Module
    ema: object
    opt: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler
    aug: Augment | None
    aug_seed: int
    bs: int
    steps_per_epoch: int
    total_steps: int
    t_start: float
    step: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_acc": -1.0})
    acc: dict | None = None  # running train metrics of the epoch in progress (kept in last.pt)
    t_epoch: float = 0.0
    elapsed_before: float = 0.0
    first_step_unix: float | None = None  # wall clock at the end of this process's first step (speed.py)

    def scored(self) -> nn.Module:
        """The weights that are evaluated and saved: with --ema, the average."""
        return self.ema.module if self.ema is not None else self.model

    def seconds(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start


def start_run(config: TrainConfig, data: Data | None, quiet: bool, resume: bool) -> Run:
    """Resolve the config, join torchrun if any, open the run folder, load the data onto the device,
    build model, optimizer, schedule and augmentation; continue last.pt when resuming."""
    cfg = config.resolved()
    dist = distributed(cfg.device)
    if cfg.batch_size % dist.world:
        raise ValueError(f"--batch-size {cfg.batch_size} (the global batch) must divide by the {dist.world} processes")
    record = {**dataclasses.asdict(cfg), "world_size": dist.world, "backend": dist.backend}
    run_dir = Path(cfg.out) / cfg.run_name
    # A setting missing from an older last.pt meant its default there (the recipe-resolved ones: FALLBACK's).
    old = {**{f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING},
           "world_size": 1, "backend": None, **FALLBACK}
    saved = open_run_dir(run_dir, record, dist, resume, old)
    log = RunLog(run_dir / "log.txt" if dist.main else None, quiet or not dist.main)
    if dist.main:
        (run_dir / "config.json").write_text(json.dumps({**record, "environment": environment(cfg.device)}, indent=2))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    t_start = time.perf_counter()
    data = data or load_data(cfg.dataset, cfg.data_dir)
    dev = torch.device("cuda", dist.local_rank) if dist.backend == "nccl" else torch.device(cfg.device)
    x_train, y_train = data.x_train, data.y_train
    if cfg.limit_train:
        x_train, y_train = x_train[:cfg.limit_train], y_train[:cfg.limit_train]
    if cfg.refit:  # (55,000 + 5,000, 1, 28, 28): the validation images become training images
        x_train, y_train = torch.cat([x_train, data.x_val]), torch.cat([y_train, data.y_val])
    tensors = (x_train.to(dev), y_train.to(dev), data.x_val.to(dev), data.y_val.to(dev))
    model, net, opt, ema = build_net(cfg, dist, dev)
    bs, steps_per_epoch, total_steps = run_length(cfg, len(x_train))
    if bs // dist.world < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"{cfg.model} has BatchNorm, which needs at least 2 images per batch and process; this run has "
                         f"{bs // dist.world}: raise --batch-size (and --limit-train) to {2 * dist.world} or more")  # not mid-run
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, steps_per_epoch, cfg))
    run = Run(cfg, record, dist, dev, run_dir, log, data, tensors, model, net, ema, opt, sched,
              torch.amp.GradScaler(cfg.device, enabled=cfg.precision == "fp16"),
              Augment(cfg.translate, cfg.rotate, cfg.scale, cfg.elastic, cfg.elastic_sigma) if cfg.augment else None,
              cfg.seed if dist.world == 1 else cfg.seed * 1000 + dist.rank,  # each rank warps its own samples
              bs, steps_per_epoch, total_steps, t_start)
    if saved is not None:
        restore_last(run, saved)
    log_header(run)
    return run


def train_epoch(run: Run, on_step, show_bar: bool) -> None:
    """Optimizer steps from run.step to the end of its epoch (or of the run), summing the running
    train metrics into run.acc. `on_step(step, weights)` is called after each step."""
    cfg, dist, (x_train, y_train, _, _) = run.cfg, run.dist, run.tensors
    epoch = run.step // run.steps_per_epoch
    epoch_end = min((epoch + 1) * run.steps_per_epoch, run.total_steps)
    order = epoch_order(len(x_train), cfg.seed, epoch).to(run.dev)
    zero = torch.zeros((), device=run.dev)
    run.acc = run.acc or {"loss": zero.clone(), "ce": zero.clone(), "conf": torch.zeros(10, 10, dtype=torch.long), "t": 0.0}
    run.acc.setdefault("ce", torch.full((), math.nan, device=run.dev))  # a last.pt from before train_ce: unknown
    run.t_epoch = time.perf_counter()
    n_epochs = math.ceil(run.total_steps / run.steps_per_epoch)
    bar = progress_bar(epoch_end - run.step, f"epoch {epoch + 1}/{n_epochs}", show_bar)
    while run.step < epoch_end:
        i = run.step - epoch * run.steps_per_epoch
        idx = order[i * run.bs:(i + 1) * run.bs][dist.rank::dist.world]  # this rank's share of the global batch
        x, y = x_train[idx], y_train[idx]  # (B, 1, 28, 28), (B,); B = batch / processes
        if run.aug:
            x = augment(x, run.aug, step_generator(run.aug_seed, run.step), run.data.background)
        loss, logits = train_step(run.net, run.opt, x, y, cfg, run.scaler)
        run.sched.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        run.step += 1
        run.first_step_unix = run.first_step_unix or time.time()
        run.acc["loss"] += loss.detach() * len(y)
        run.acc["ce"] += cross_entropy(logits.detach(), y) * len(y)  # unsmoothed, as val_loss: curves compare like with like
        run.acc["conf"] += confusion(y, logits.detach().argmax(1), 10)
        if on_step:
            on_step(run.step, run.scored())  # with --ema, the average: what would be validated and shipped
        if bar and (run.step % 10 == 0 or run.step == epoch_end):
            seen = int(run.acc["conf"].sum())
            bar.update(10 if run.step % 10 == 0 else run.step % 10)
            bar.set_postfix(loss=f"{float(run.acc['loss']) / seen:.4f}", acc=f"{float(run.acc['conf'].diag().sum()) / seen:.4f}",
                            img_s=f"{run.bs * bar.n / (time.perf_counter() - run.t_epoch):.0f}")
        if run.step % 50 == 0 and dist.all_sum(torch.tensor(float(not math.isfinite(float(loss.detach()))))) > 0:
            raise Diverged  # on every rank at once: one rank alone would leave the others waiting
    if bar:
        bar.close()


def end_epoch(run: Run) -> dict:
    """The epoch's history row: its running train metrics over every rank and the validation metrics."""
    conf = run.dist.all_sum(run.acc["conf"])  # (K, K): the epoch's training predictions of every rank
    seen = int(conf.sum())
    train_loss = float(run.dist.all_sum(run.acc["loss"])) / seen
    if not math.isfinite(train_loss):
        raise Diverged
    # Rank 0's model is the one that is saved, so rank 0 measures it and tells the others:
    # without --sync-bn the ranks' BN running statistics differ slightly.
    x_val, y_val = run.tensors[2:]
    val = run.dist.broadcast(evaluate(run.scored(), x_val, y_val, run.cfg) if run.dist.main else None)
    row = {"epoch": round(run.step / run.steps_per_epoch, 4), "step": run.step, "lr": run.opt.param_groups[0]["lr"],
           "train_loss": train_loss, "train_acc": float(conf.diag().sum()) / seen,
           "train_f1": macro_f1(conf), "val_loss": val["loss"], "val_acc": val["acc"], "val_f1": val["f1"],
           "seconds": run.acc["t"] + time.perf_counter() - run.t_epoch,
           "train_ce": float(run.dist.all_sum(run.acc["ce"])) / seen}
    run.history.append(row)
    run.acc = None
    log_epoch(run.log, row)
    return row


def train(config: TrainConfig, data: Data | None = None, on_step=None, quiet: bool = False, resume: bool = False) -> dict:
    """Train one model; returns {"status", "run_dir", "config", "history", "best", "test", "seconds", ...}.

    status: finished, stopped_early (cfg.patience) or diverged (the loss is not finite). resume: continue
    the run folder's last.pt when it holds a run of this same config. `on_step(step, model)` runs after
    every optimizer step (speed.py evaluates there). ValueError: settings that cannot train; DataError."""
    run = start_run(config, data, quiet, resume)
    cfg, status, show_bar = run.cfg, "finished", not quiet and run.dist.main and sys.stderr.isatty()
    run.model.train()
    try:
        while run.step < run.total_steps:
            train_epoch(run, on_step, show_bar)
            row = end_epoch(run)
            if row["val_acc"] > run.best["val_acc"] or cfg.refit:
                run.best = {"val_acc": row["val_acc"], "val_f1": row["val_f1"], "val_loss": row["val_loss"], "epoch": row["epoch"]}
                if run.dist.main:
                    save_atomic(checkpoint(run.scored(), run.record, run.data.normalization, row["epoch"], run.best),
                                run.run_dir / "best.pt")
            if run.dist.main:
                write_history(run.run_dir / "history.csv", run.history)
            save_last(run, None)
            since_best = sum(1 for h in run.history if h["epoch"] > run.best["epoch"])
            if cfg.patience is not None and since_best >= cfg.patience and run.step < run.total_steps:
                status = "stopped_early"
                run.log(f"early stop: no better val accuracy for {cfg.patience} epochs")
                break
    except Diverged:
        status = "diverged"
        run.log(f"diverged at step {run.step}: the loss is not finite (lr {cfg.lr:g} is too high for {cfg.model})")
    except KeyboardInterrupt:
        if run.dist.world > 1:  # the ranks stopped at different steps: keep the last epoch's last.pt, saved by all
            run.log(f"\ninterrupted; continue from the last finished epoch with: torchrun ... train.py --resume {run.run_dir}")
            raise
        if run.acc is not None:
            run.acc["t"] += time.perf_counter() - run.t_epoch
        save_last(run, run.acc)
        plot_curves(run.history, run.run_dir / "curves.png", f"{cfg.run_name} (interrupted)")
        run.log(f"\ninterrupted at step {run.step}/{run.total_steps}; continue with: python train.py --resume {run.run_dir}")
        raise
    return finish(run, status)


def finish(run: Run, status: str) -> dict:
    """Curves, the test score of the validation-best checkpoint, weights/ and result.json; the result dict."""
    cfg, dist = run.cfg, run.dist
    seconds = run.seconds()
    result = {"status": status, "run_dir": str(run.run_dir), "config": run.record, "history": run.history,
              "best": run.best, "test": None, "seconds": seconds, "environment": environment(cfg.device),
              "first_step_unix": run.first_step_unix}
    if dist.world > 1:
        # DDP keeps the parameters equal on every rank; check it rather than trust it.
        sums = dist.gather(float(sum(p.detach().double().sum() for p in run.model.parameters())))
        result["ranks_in_sync"] = all(x == sums[0] for x in sums)
        if not result["ranks_in_sync"]:
            run.log(f"warning: the {dist.world} processes ended with different weights (sums {sums})")
    if not dist.main:
        return result
    plot_curves(run.history, run.run_dir / "curves.png", cfg.run_name)
    best_path = run.run_dir / "best.pt"
    if status != "diverged" and best_path.exists():
        tested = ""
        if cfg.score_test:  # only the checkpoint chosen on validation is ever scored on the test set
            best_ckpt = read_checkpoint(best_path)
            run.scored().load_state_dict(best_ckpt["state_dict"])
            test = evaluate(run.scored(), run.data.x_test.to(run.dev), run.data.y_test.to(run.dev), cfg)
            result["test"] = {"acc": test["acc"], "f1": test["f1"], "loss": test["loss"]}
            best_ckpt["metrics"].update(test_acc=test["acc"], test_f1=test["f1"])
            save_atomic(best_ckpt, best_path)
            tested = f" | test acc {test['acc']:.4f}, macro-F1 {test['f1']:.4f}"
        run.log(f"best epoch {run.best['epoch']:g}: val acc {run.best['val_acc']:.4f}{tested or ' | test not scored'} | {seconds:.1f}s")
        if not cfg.refit:  # a refit has no validation accuracy to compare: it is shipped by hand, labelled
            promote(best_path, cfg, run.data.genuine, run.log)
    (run.run_dir / "result.json").write_text(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return result


# -----------------------------------------------------------------------------
# LR range test (Smith 2015; fastai's lr_find): raise the LR exponentially every step
# and watch the loss; a good peak LR sits where the loss falls fastest.


def lr_find(config: TrainConfig, data: Data | None = None, start: float = 1e-5, end: float = 10.0,
            steps: int = 200, out_png: str | None = None) -> dict:
    """{"lrs", "losses" (smoothed training loss), "suggested_lr" (steepest descent), "min_loss_lr"[, "png"]}."""
    cfg = config.resolved()
    data = data or load_data(cfg.dataset, cfg.data_dir)
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **cfg.model_config).to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, dataclasses.replace(cfg, lr=start))
    n, bs = len(data.x_train), cfg.batch_size
    lrs, losses, smooth, best = [], [], 0.0, math.inf
    order = epoch_order(n, cfg.seed, 0)
    for s in range(steps):
        lr = start * (end / start) ** (s / (steps - 1))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = order[(s * bs) % (n - bs + 1):][:bs]
        loss, _ = train_step(model, opt, data.x_train[idx].to(dev), data.y_train[idx].to(dev), cfg)
        smooth = 0.9 * smooth + 0.1 * float(loss.detach())
        value = smooth / (1 - 0.9 ** (s + 1))  # bias-corrected running mean
        if not math.isfinite(value) or value > 4 * best:
            break
        best = min(best, value)
        lrs.append(lr)
        losses.append(value)
    # Steepest descent of the smoothed loss in log-LR, ignoring the noisy first tenth.
    lo = max(1, len(lrs) // 10)
    slopes = [(losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1])) for i in range(lo, len(lrs) - 1)]
    suggestion = lrs[lo + min(range(len(slopes)), key=slopes.__getitem__)] if slopes else lrs[len(lrs) // 2]
    result = {"lrs": lrs, "losses": losses, "suggested_lr": suggestion, "min_loss_lr": lrs[losses.index(min(losses))]}
    if out_png:
        result["png"] = plot_lr_find(lrs, losses, suggestion, f"LR range test: {cfg.model}, {cfg.optimizer}", out_png)
    return result


# -----------------------------------------------------------------------------
# Command line


DIVERGED_EXIT = 3  # `python train.py`'s exit status when the loss stopped being finite


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a model of models.py on MNIST (or run an LR range test). Every "
                                            "TrainConfig field is a flag; unset ones come from the model's recipe.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_flags(p)
    p.add_argument("--config", metavar="JSON", help="start from the settings in a run's config.json (or a weights card); "
                                                    "flags given override them")
    p.add_argument("--recipe", choices=["default", "best"], default="default",
                   help="best: the study's validation-chosen final recipe (train.BEST_RECIPES; long); flags given override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--lr-find", action="store_true", help="run the LR range test instead of training and plot it")
    a = p.parse_args(argv)
    # Which flags were typed (a flag equal to its default still counts): parse again with no defaults.
    for action in p._actions:
        action.default = argparse.SUPPRESS
    a.explicit = set(vars(p.parse_args(argv)))
    return a


def fill_untyped(a: argparse.Namespace, settings: dict) -> None:
    """Set each of `settings` (TrainConfig fields) in `a` unless its flag was typed; model_config's
    width, dropout and stem count as their own flags."""
    for key, value in settings.items():
        if key == "model_config":
            if "model_config" not in a.explicit:
                a.model_config = {**a.model_config, **{k: v for k, v in value.items() if k not in MODEL_CONFIG_FLAGS}}
            for k in MODEL_CONFIG_FLAGS:
                if k in value and k not in a.explicit:
                    setattr(a, k, value[k])
        elif key not in a.explicit:
            setattr(a, key, value)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig: the flags typed, over --recipe best's settings, over --config's, over the defaults."""
    if a.config:
        try:
            stored = json.loads(Path(a.config).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--config {a.config}: not a readable JSON file ({e}); give a run folder's config.json")
        stored = stored.get("train_config", stored)  # a weights card holds it under train_config
        fill_untyped(a, {k: v for k, v in stored.items() if k in CONFIG_FIELDS - {"run_name"}})  # the name follows the settings
    if a.recipe == "best":
        if a.model not in BEST_RECIPES:
            raise ValueError(f"no best recipe for {a.model} yet (train.BEST_RECIPES has {', '.join(BEST_RECIPES) or 'none'}); "
                             "drop --recipe best to use its default recipe")
        fill_untyped(a, BEST_RECIPES[a.model])
    return config_from_namespace(a)


def main(argv=None) -> int:
    a = parse_args(argv)
    stop_on_signals()  # `kill` and a background job's SIGINT stop a run like Ctrl-C: last.pt is saved
    try:
        if a.resume:
            run = Path(a.resume)
            if not (run / "last.pt").exists():
                sys.exit(f"error: {run / 'last.pt'} not found; --resume takes a run folder that holds last.pt")
            stored = {k: v for k, v in read_checkpoint(run / "last.pt")["train_config"].items() if k in CONFIG_FIELDS}
            cfg = dataclasses.replace(TrainConfig(**stored), out=str(run.parent), run_name=run.name)
            return DIVERGED_EXIT if train(cfg, resume=True)["status"] == "diverged" else 0
        if a.model == "all":
            sys.exit("error: train.py trains one model; every model over a grid of LRs is the study's LR stage: "
                     "python study.py --only lr")
        cfg = config_from_args(a)
        if a.lr_find:
            r = lr_find(cfg, out_png=str(Path(cfg.out) / f"lr_find-{cfg.model}.png"))
            print(f"{cfg.model}: suggested lr {r['suggested_lr']:.3g} (steepest loss descent); loss lowest at "
                  f"{r['min_loss_lr']:.3g}; plot {r['png']}")
            return 0
        if train(cfg)["status"] == "diverged":
            return DIVERGED_EXIT  # the log says where; the study records the run as diverged
    except (DataError, CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        return 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
