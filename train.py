"""One training loop for every model of models.py, and a loop over models x learning rates x seeds.

    python train.py --model resnet --lr 0.001                      # one run -> runs/resnet-lr0.001-s0/
    python train.py --model dnn convnet resnet --lr 0.1 0.01 0.001 0.0001   # every pair; a summary table
    python train.py --model all                                    # every studied model at its default recipe
    python train.py --recipe convnet-best                          # any recipe of recipes.py (--list-recipes)
    python train.py --model convnet --lr-find                      # LR range test
    python train.py --resume runs/convnet-lr0.1-s0                 # continue a stopped run

Settings are resolved in one place (settings()): the flags typed, over --recipe's, over --config's,
over the model's default recipe (recipes.py), over TrainConfig's defaults. One TrainConfig per run
-> train(config) -> its run folder (config.json, history.csv, best.pt, last.pt, curves.png, log.txt,
result.json) -> weights/<model>.pt when the run beats the file there on validation accuracy. Run
again, a finished run is skipped and a stopped one continues.

Speed: the whole dataset in one tensor on the device, batches sliced and augmented with tensor ops,
bf16 autocast + channels_last on CPUs with bf16 instructions, AMP on CUDA (benchmarks/speed.py).
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

import recipes
from data import Augment, Data, DataError, augment, batches, load_data
from models import (MODELS, RESNET_STEMS, STUDY_MODELS, CheckpointError, build_model, checkpoint, complete_config, count_params,
                    read_checkpoint, save_atomic)
from machine import distributed, environment, resolve_device, resolve_precision, stop_on_signals
from plots import plot_curves, plot_lr_find, pyplot
from runs import RunLog, open_run_dir, progress_bar, promote, same_settings, write_history
from test_model import confusion, macro_f1

ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# torch.optim without torch._dynamo: importing the compiler takes ~1.4 s, half of
# `python train.py`'s start-up, and plain (eager) training never uses it. torch.optim
# imports it twice over: each step() runs in a wrapper that imports it to insert compiler
# graph breaks, and four Optimizer methods are wrapped in torch._disable_dynamo, whose
# first call imports it to mark them "never compile". tests/test_train.py checks that a
# run imports no torch._dynamo and that these optimizers take exactly torch.optim's steps.


def skip_dynamo_import() -> None:
    """Mark the four wrapped Optimizer methods the way torch/_compile.py caches its own
    result after the import: the method itself. Outside torch.compile nothing changes;
    a torch whose wrapper looks different is left alone (then it just costs the import)."""
    if "torch._dynamo" in sys.modules:
        return
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict"):
        method = getattr(torch.optim.Optimizer, name, None)
        inner = getattr(method, "__wrapped__", None)
        if inner is not None and method.__code__.co_filename.endswith("_compile.py"):
            setattr(inner, "__dynamo_disable", inner)


def eager(cls: type) -> type:
    """torch.optim's `cls` with its step() called directly under no_grad: the same update
    (torch's own code), minus the wrapper that imports torch._dynamo for graph breaks."""
    raw_step = getattr(cls.step, "__wrapped__", None)
    if raw_step is None:  # another torch: keep its step as it is
        return cls

    def step(self, closure=None):
        with torch.no_grad():
            return raw_step(self, closure)

    return type(cls.__name__, (cls,), {"step": step, "__doc__": cls.__doc__})


skip_dynamo_import()
OPTIMIZERS = {"sgd": eager(torch.optim.SGD), "adam": eager(torch.optim.Adam), "adamw": eager(torch.optim.AdamW),
              "adadelta": eager(torch.optim.Adadelta)}

# The recipes live in recipes.py; these names are kept for the report's readers.
RECIPES, FALLBACK = recipes.DEFAULTS, recipes.BASE
BEST_RECIPES = {m: {k: v for k, v in recipes.recipe(f"{m}-best").items() if k != "model"} for m in recipes.FINAL}

# -----------------------------------------------------------------------------
# Configuration: one object per run, stored in config.json and in every checkpoint.


def setting(default=None, help: str = "", **cli):
    """A TrainConfig field: its default, its --help text and argparse options (choices)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


RECIPE = "the model's recipe"  # what a None default means


@dataclass
class TrainConfig:
    """Every setting of one run. `python train.py --help` lists a flag per field (made from this class)."""
    model: str = setting("convnet", f"one or more of {', '.join(MODELS)}, or all ({', '.join(STUDY_MODELS)})")
    model_config: dict = setting({}, "build_model's keyword arguments as JSON, e.g. '{\"width\": 16}' "
                                     "(or --width, --dropout, --stem)")
    dataset: str = setting("mnist", choices=["mnist", "fashion-mnist"])
    data_dir: str | None = setting(None, "folder holding MNIST/raw/ (default: $DATA_DIR, else ./data)")
    lr: float | None = setting(None, f"peak learning rate; several: one run each (default: {RECIPE})")
    epochs: float | None = setting(None, f"epochs, fractions allowed: 0.5 = half an epoch (default: {RECIPE})")
    batch_size: int | None = setting(None, f"the global batch (default: {RECIPE}, 256 or 128)")
    optimizer: str | None = setting(None, f"sgd = Nesterov momentum (default: {RECIPE})",
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
    rotate: float | None = setting(None, f"max random rotation in degrees (default: {RECIPE}, 0 except QuickNet's)")
    scale: float | None = setting(None, f"max random relative scale change, 0.1 = +-10% (default: {RECIPE})")
    elastic: float = setting(0.0, "elastic distortion strength alpha in pixels (0 = off; Simard et al. used 34)")
    elastic_sigma: float = setting(4.0, "smoothness of the elastic displacement field in pixels")
    patience: int | None = setting(None, "early stopping: stop after this many epochs without a better val accuracy (default: off)")
    ema: float | None = setting(None, "validate and save an exponential moving average of the weights with this decay "
                                      f"per step, e.g. 0.999; 0 = off (default: {RECIPE}, off except QuickNet's)")
    seed: int = setting(0, "several: one run each")
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
    # Off for runs that choose between recipes: judged on validation only, they never look at the test set.
    score_test: bool = setting(True, "score the validation-best checkpoint on the test set at the end")
    out: str = setting("runs", "folder for run folders")
    run_name: str | None = setting(None, "name of the run folder under --out (default: <model>-lr<lr>-s<seed>, with -e<epochs> and -n<images> when not the model's default)")
    weights_dir: str | None = setting("weights", "where a run that beats the stored model on validation accuracy "
                                                 "is copied ('' = never)")
    eval_batch_size: int = setting(1000, "images per forward pass when evaluating")
    sync_bn: bool = setting(False, "under torchrun: BatchNorm statistics over the global batch (CUDA only)")

    def resolved(self) -> "TrainConfig":
        """A copy with every None filled from the model's default recipe, so the run is fully described."""
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        recipe = recipes.default(self.model)
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
    """<model>-lr<lr>-s<seed>, then -e<epochs> and -n<images> where the budget is not the model's default,
    so a quick try never lands in (and clears) the folder of a full-length run."""
    prefix = "" if cfg.dataset == "mnist" else f"{cfg.dataset}-"
    default_epochs = recipes.DEFAULTS.get(cfg.model, recipes.BASE)["epochs"]
    budget = (f"-e{cfg.epochs:g}" if cfg.epochs != default_epochs else "") + (f"-n{cfg.limit_train}" if cfg.limit_train else "")
    return f"{prefix}{cfg.model}-lr{cfg.lr:g}-s{cfg.seed}{budget}"


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


def build_net(cfg: TrainConfig, dist, dev: torch.device):
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


def train_tensors(cfg: TrainConfig, data: Data, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """(x_train (N, 1, 28, 28), y_train (N,), x_val, y_val) on the device: the first --limit-train
    training images; with --refit the validation images join the training images."""
    x_train, y_train = data.x_train, data.y_train
    if cfg.limit_train:
        x_train, y_train = x_train[:cfg.limit_train], y_train[:cfg.limit_train]
    if cfg.refit:  # (55,000 + 5,000, 1, 28, 28)
        x_train, y_train = torch.cat([x_train, data.x_val]), torch.cat([y_train, data.y_val])
    return x_train.to(dev), y_train.to(dev), data.x_val.to(dev), data.y_val.to(dev)


def new_sums(dev: torch.device) -> dict:
    """An epoch's running training sums: loss and plain CE (times images), confusion counts, seconds before a resume."""
    zero = torch.zeros((), device=dev)
    return {"loss": zero.clone(), "ce": zero.clone(), "conf": torch.zeros(10, 10, dtype=torch.long), "t": 0.0}


def sums_on(sums: dict | None, dev: torch.device) -> dict | None:
    """A last.pt's running sums (loaded onto the CPU) moved onto the run's device, where the loop adds
    to them; the confusion matrix stays on the CPU, where the loop keeps it."""
    return {k: v.to("cpu" if k == "conf" else dev) if torch.is_tensor(v) else v for k, v in sums.items()} if sums else sums


def epoch_row(step: int, steps_per_epoch: int, lr: float, sums: dict, val: dict, seconds: float, dist) -> dict:
    """The epoch's history row: its running training metrics summed over every rank, and the validation metrics."""
    conf = dist.all_sum(sums["conf"])  # (K, K): the epoch's training predictions of every rank
    seen = int(conf.sum())
    train_loss = float(dist.all_sum(sums["loss"])) / seen
    if not math.isfinite(train_loss):
        raise Diverged
    return {"epoch": round(step / steps_per_epoch, 4), "step": step, "lr": lr, "train_loss": train_loss,
            "train_acc": float(conf.diag().sum()) / seen, "train_f1": macro_f1(conf), "val_loss": val["loss"],
            "val_acc": val["acc"], "val_f1": val["f1"], "seconds": seconds, "train_ce": float(dist.all_sum(sums["ce"])) / seen}


def train(config: TrainConfig, data: Data | None = None, on_step=None, quiet: bool = False, resume: bool = False) -> dict:
    """Train one model; returns {"status", "run_dir", "config", "history", "best", "test", "seconds", ...}.

    status: finished, stopped_early (cfg.patience) or diverged (the loss is not finite). resume: continue
    the run folder's last.pt when it holds a run of this same config. `on_step(step, model)` runs after
    every optimizer step (speed.py evaluates there). ValueError: settings that cannot train; DataError."""
    cfg = config.resolved()
    dist = distributed(cfg.device)
    if cfg.batch_size % dist.world:
        raise ValueError(f"--batch-size {cfg.batch_size} (the global batch) must divide by the {dist.world} processes")
    record = {**dataclasses.asdict(cfg), "world_size": dist.world, "backend": dist.backend}
    run_dir = Path(cfg.out) / cfg.run_name
    saved = open_run_dir(run_dir, record, dist, resume, OLD_DEFAULTS)
    log = RunLog(run_dir / "log.txt" if dist.main else None, quiet or not dist.main)
    if dist.main:
        (run_dir / "config.json").write_text(json.dumps({**record, "environment": environment(cfg.device)}, indent=2))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    t_start = time.perf_counter()
    data = data or load_data(cfg.dataset, cfg.data_dir)
    dev = torch.device("cuda", dist.local_rank) if dist.backend == "nccl" else torch.device(cfg.device)
    x_train, y_train, x_val, y_val = train_tensors(cfg, data, dev)
    model, net, opt, ema = build_net(cfg, dist, dev)
    scored = ema.module if ema is not None else model  # what is validated and saved: with --ema, the average
    bs, steps_per_epoch, total_steps = run_length(cfg, len(x_train))
    if bs // dist.world < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ValueError(f"{cfg.model} has BatchNorm, which needs at least 2 images per batch and process; this run has "
                         f"{bs // dist.world}: raise --batch-size (and --limit-train) to {2 * dist.world} or more")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, steps_per_epoch, cfg))
    scaler = torch.amp.GradScaler(cfg.device, enabled=cfg.precision == "fp16")
    aug = Augment(cfg.translate, cfg.rotate, cfg.scale, cfg.elastic, cfg.elastic_sigma) if cfg.augment else None
    aug_seed = cfg.seed if dist.world == 1 else cfg.seed * 1000 + dist.rank  # each rank warps its own samples
    step, history, best, sums, seconds_before = 0, [], {"val_acc": -1.0}, None, 0.0
    if saved is not None:
        step, history, best, sums, seconds_before = restore_last(saved, model, ema, opt, sched, scaler, dist, dev)
        log(f"resumed {run_dir} at step {step}/{total_steps}")
    log_header(log, cfg, model, dist, len(x_train), bs, steps_per_epoch, total_steps)
    seconds = lambda: seconds_before + time.perf_counter() - t_start  # noqa: E731

    def save_last(sums):  # everything to continue exactly: weights, optimizer, schedule, RNG, history, the epoch's sums
        state = dict(optimizer=opt.state_dict(), scheduler=sched.state_dict(), scaler=scaler.state_dict(), step=step,
                     history=history, best=best, epoch_acc=sums, seconds=seconds())
        write_last(run_dir / "last.pt", checkpoint(scored, record, data.normalization, step / steps_per_epoch, best, **state),
                   model, ema, cfg, dist)

    status, first_step_unix, show_bar = "finished", None, not quiet and dist.main and sys.stderr.isatty()
    model.train()
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
            order = epoch_order(len(x_train), cfg.seed, epoch).to(dev)
            sums = sums or new_sums(dev)
            sums.setdefault("ce", torch.full((), math.nan, device=dev))  # a last.pt from before train_ce: unknown
            t_epoch = time.perf_counter()
            bar = progress_bar(epoch_end - step, f"epoch {epoch + 1}/{math.ceil(total_steps / steps_per_epoch)}", show_bar)
            while step < epoch_end:  # the step
                i = step - epoch * steps_per_epoch
                idx = order[i * bs:(i + 1) * bs][dist.rank::dist.world]  # this rank's share of the global batch
                x, y = x_train[idx], y_train[idx]  # (B, 1, 28, 28), (B,); B = batch / processes
                if aug:
                    x = augment(x, aug, step_generator(aug_seed, step), data.background)
                loss, logits = train_step(net, opt, x, y, cfg, scaler)
                sched.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                first_step_unix = first_step_unix or time.time()
                sums["loss"] += loss.detach() * len(y)
                sums["ce"] += cross_entropy(logits.detach(), y) * len(y)  # unsmoothed, as val_loss: curves compare like with like
                sums["conf"] += confusion(y, logits.detach().argmax(1), 10)
                if on_step:
                    on_step(step, scored)
                if bar:
                    show_progress(bar, step, epoch_end, sums, bs, t_epoch)
                if step % 50 == 0 and dist.all_sum(torch.tensor(float(not math.isfinite(float(loss.detach()))))) > 0:
                    raise Diverged  # on every rank at once: one rank alone would leave the others waiting
            if bar:
                bar.close()
            # Rank 0's model is the one saved, so rank 0 validates it and tells the others (BN statistics differ per rank).
            val = dist.broadcast(evaluate(scored, x_val, y_val, cfg) if dist.main else None)
            row = epoch_row(step, steps_per_epoch, opt.param_groups[0]["lr"], sums, val,
                            sums["t"] + time.perf_counter() - t_epoch, dist)
            history.append(row)
            sums = None
            log_epoch(log, row)
            if row["val_acc"] > best["val_acc"] or cfg.refit:
                best = {"val_acc": row["val_acc"], "val_f1": row["val_f1"], "val_loss": row["val_loss"], "epoch": row["epoch"]}
                if dist.main:
                    save_atomic(checkpoint(scored, record, data.normalization, row["epoch"], best), run_dir / "best.pt")
            if dist.main:
                write_history(run_dir / "history.csv", history)
            save_last(None)
            since_best = sum(1 for h in history if h["epoch"] > best["epoch"])
            if cfg.patience is not None and since_best >= cfg.patience and step < total_steps:
                status = "stopped_early"
                log(f"early stop: no better val accuracy for {cfg.patience} epochs")
                break
    except Diverged:
        status = "diverged"
        log(f"diverged at step {step}: the loss is not finite (lr {cfg.lr:g} is too high for {cfg.model})")
    except KeyboardInterrupt:
        if dist.world > 1:  # the ranks stopped at different steps: keep the last epoch's last.pt, saved by all
            log(f"\ninterrupted; continue from the last finished epoch with: torchrun ... train.py --resume {run_dir}")
            raise
        if sums is not None:
            sums["t"] += time.perf_counter() - t_epoch
        save_last(sums)
        plot_curves(history, run_dir / "curves.png", f"{cfg.run_name} (interrupted)")
        log(f"\ninterrupted at step {step}/{total_steps}; continue with: python train.py --resume {run_dir}")
        raise
    result = {"status": status, "run_dir": str(run_dir), "config": record, "history": history, "best": best, "test": None,
              "seconds": seconds(), "environment": environment(cfg.device), "first_step_unix": first_step_unix}
    return finish(result, cfg, scored, model, data, dev, dist, log)


def finish(result: dict, cfg: TrainConfig, scored: nn.Module, model: nn.Module, data: Data, dev, dist, log: RunLog) -> dict:
    """Curves, the test score of the validation-best checkpoint, weights/, result.json and what to do next."""
    run_dir = Path(result["run_dir"])
    if dist.world > 1:
        # DDP keeps the parameters equal on every rank; check it rather than trust it.
        sums = dist.gather(float(sum(p.detach().double().sum() for p in model.parameters())))
        result["ranks_in_sync"] = all(x == sums[0] for x in sums)
        if not result["ranks_in_sync"]:
            log(f"warning: the {dist.world} processes ended with different weights (sums {sums})")
    if not dist.main:
        return result
    plot_curves(result["history"], run_dir / "curves.png", cfg.run_name)
    best_path, best = run_dir / "best.pt", result["best"]
    if result["status"] != "diverged" and best_path.exists():
        tested = " | test not scored"
        if cfg.score_test:  # only the checkpoint chosen on validation is ever scored on the test set
            best_ckpt = read_checkpoint(best_path)
            scored.load_state_dict(best_ckpt["state_dict"])
            test = evaluate(scored, data.x_test.to(dev), data.y_test.to(dev), cfg)
            result["test"] = {"acc": test["acc"], "f1": test["f1"], "loss": test["loss"]}
            best_ckpt["metrics"].update(test_acc=test["acc"], test_f1=test["f1"])
            save_atomic(best_ckpt, best_path)
            tested = f" | test acc {test['acc']:.4f}, macro-F1 {test['f1']:.4f}"
        log(f"best epoch {best['epoch']:g}: val acc {best['val_acc']:.4f}{tested} | {result['seconds']:.1f}s")
        # a refit has no validation accuracy to compare: never promoted
        result["weights"] = "kept: a refit is never compared on validation" if cfg.refit else promote(best_path, cfg, data.genuine)
        log(next_steps(run_dir, cfg, result["weights"]))
    (run_dir / "result.json").write_text(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return result


def next_steps(run_dir: Path, cfg: TrainConfig, weights: str | None) -> str:
    """What to run next on this run's checkpoint, and what became of weights/<model>.pt."""
    lines = [f"checkpoint: {run_dir / 'best.pt'}",
             f"  python test_model.py --weights {run_dir}",
             f"  python feature_visualization.py --weights {run_dir}"]
    if weights:
        lines.append(f"{cfg.weights_dir}/{cfg.model}.pt {weights}" if cfg.weights_dir else weights)
    return "\n".join(lines)


OLD_DEFAULTS = {**{f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING},
                "world_size": 1, "backend": None, **recipes.BASE}  # a setting missing from an older last.pt meant this


def write_last(path: Path, ckpt: dict, model: nn.Module, ema, cfg: TrainConfig, dist) -> None:
    """last.pt, by rank 0; under torchrun every rank calls it (their RNG states are gathered)."""
    rng_ranks = dist.gather(torch.get_rng_state()) if dist.world > 1 else None
    if not dist.main:
        return
    ckpt["rng_cpu"] = torch.get_rng_state()
    if rng_ranks is not None:
        ckpt["rng_cpu_ranks"] = rng_ranks
    if ema is not None:  # the raw weights and the average's own state, to continue both exactly
        ckpt["raw_state_dict"] = model.state_dict()
        ckpt["ema_state"] = ema.state_dict()
    if cfg.device.startswith("cuda"):
        ckpt["rng_cuda"] = torch.cuda.get_rng_state()
    save_atomic(ckpt, path)


def restore_last(saved: dict, model, ema, opt, sched, scaler, dist, dev) -> tuple:
    """Continue from a last.pt: weights, optimizer, schedule, scaler and RNG restored in place; returns
    (step, history, best, the epoch's running sums, seconds spent before)."""
    model.load_state_dict(saved["raw_state_dict"] if ema is not None else saved["state_dict"])
    if ema is not None:
        ema.load_state_dict(saved["ema_state"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng_cpu_ranks"][dist.rank] if dist.world > 1 else saved["rng_cpu"])
    if "rng_cuda" in saved and dev.type == "cuda":
        torch.cuda.set_rng_state(saved["rng_cuda"])
    return saved["step"], saved["history"], saved["best"], sums_on(saved["epoch_acc"], dev), saved["seconds"]


def log_header(log: RunLog, cfg: TrainConfig, model: nn.Module, dist, n: int, bs: int, steps_per_epoch: int,
               total: int) -> None:
    """A run's first lines: model, optimizer, budget, device, data; then the epoch table's header."""
    log(f"{cfg.model}: {count_params(model):,} params | {cfg.optimizer} lr {cfg.lr:g} "
        f"{cfg.schedule} | {cfg.epochs:g} epochs = {total:,} step{'s' * (total != 1)} of {bs} ({steps_per_epoch:,} an epoch) | {cfg.device} {cfg.precision}"
        f"{' channels_last' if cfg.channels_last else ''} | aug {'on' if cfg.augment else 'off'} | seed {cfg.seed} | {n:,} train images"
        + (f" | {dist.world} processes ({dist.backend}{', sync BN' if cfg.sync_bn else ''}), {bs // dist.world} images each per step"
           if dist.world > 1 else ""))
    if cfg.refit:
        log("refit: training on train + validation; the val columns are in-sample and the last epoch is kept (never promoted)")
    log(f"{'epoch':>5} {'end lr':>9} {'train_loss':>10} {'train_acc':>9} {'train_f1':>8} {'val_loss':>8} {'val_acc':>7} {'val_f1':>6} {'time':>6}")


def loss_text(loss: float, width: int) -> str:
    """A loss in `width` characters: 4 decimals, or 3 significant digits once it is too big for them (a run diverging)."""
    return f"{loss:>{width}.4f}" if abs(loss) < 10 ** (width - 6) else f"{loss:>{width}.3g}"


def log_epoch(log: RunLog, row: dict) -> None:
    """One row of the epoch table that log_header heads (end lr: the rate the schedule has reached when the
    epoch ends, the next step's)."""
    log(f"{row['epoch']:>5g} {row['lr']:>9.2e} {loss_text(row['train_loss'], 10)} {row['train_acc']:>9.4f} {row['train_f1']:>8.4f} "
        f"{loss_text(row['val_loss'], 8)} {row['val_acc']:>7.4f} {row['val_f1']:>6.4f} {row['seconds']:>5.1f}s")


def show_progress(bar, step: int, epoch_end: int, sums: dict, bs: int, t_epoch: float) -> None:
    if step % 10 == 0 or step == epoch_end:
        seen = int(sums["conf"].sum())
        bar.update(10 if step % 10 == 0 else step % 10)
        bar.set_postfix(loss=f"{float(sums['loss']) / seen:.4f}", acc=f"{float(sums['conf'].diag().sum()) / seen:.4f}",
                        img_s=f"{bs * bar.n / (time.perf_counter() - t_epoch):.0f}")


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
# Before a run: what the LR table measured for this model, optimizer and LR

LR_TABLE = ROOT / "results" / "lr_table.csv"
WORSE_BY = 0.005  # validation accuracy this far under the row's best (25 of 5,000 images): worth a word


def lr_advice(cfg: TrainConfig, table: Path = LR_TABLE) -> str | None:
    """One line when the study's LR table (results/lr_table.csv: each model and optimizer over the homework's
    LRs, seed 0, validation) found this LR to diverge or to train clearly worse than the row's best; None otherwise."""
    if not table.exists():
        return None
    with open(table) as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == cfg.model and r["optimizer"] == cfg.optimizer and r["kind"] == "grid"]
    acc = {float(r["lr"]): (float(r["val_acc"]) if r["status"] != "diverged" else -1.0) for r in rows}
    if cfg.lr not in acc or len(acc) < 2:
        return None
    best = max(acc, key=lambda lr: (acc[lr], lr))
    epochs = f"{float(rows[0]['epochs']):g}"
    if acc[cfg.lr] < 0:
        said = "diverged"
    elif acc[best] - acc[cfg.lr] > WORSE_BY:
        said = f"{'underfit' if cfg.lr < best else 'trained worse'} ({100 * acc[cfg.lr]:.2f}% validation)"
    else:
        return None
    return (f"note: the LR table (results/lr_table.csv, {epochs} epochs) found {cfg.model} with {cfg.optimizer} at lr {cfg.lr:g} "
            f"{said}; lr {best:g} did better ({100 * acc[best]:.2f}%)")


# -----------------------------------------------------------------------------
# Many runs: every model x LR x seed through train(), skipping finished runs, then one table


SUMMARY_FIELDS = ["model", "optimizer", "lr", "seed", "epochs", "status", "val_acc", "test_acc", "test_f1", "seconds", "checkpoint"]


def finished_run(cfg: TrainConfig) -> dict | None:
    """The result.json of a run of these same settings that finished (or diverged) in its folder, else None."""
    r = cfg.resolved()
    run_dir = Path(r.out) / r.run_name
    if not (run_dir / "result.json").exists():
        return None
    result = json.loads((run_dir / "result.json").read_text())
    record = json.loads(json.dumps({**dataclasses.asdict(r), "world_size": 1, "backend": None}))  # as result.json holds it
    return result if same_settings(result["config"], record, OLD_DEFAULTS) else None


def summary_row(r: dict) -> dict:
    c, test = r["config"], r.get("test") or {}
    best = Path(r["run_dir"]) / "best.pt"
    return {"model": c["model"], "optimizer": c["optimizer"], "lr": c["lr"], "seed": c["seed"], "epochs": c["epochs"],
            "status": r["status"], "val_acc": r["best"].get("val_acc") if r["best"].get("val_acc", -1) >= 0 else None,
            "test_acc": test.get("acc"), "test_f1": test.get("f1"), "seconds": round(r["seconds"], 1),
            "checkpoint": str(best) if best.exists() and r["status"] != "diverged" else None}


def write_summary(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """summary.csv (SUMMARY_FIELDS) and summary.png (validation and test accuracy against the LR, a line per
    model and optimizer) in `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        w.writerows(rows)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, key, title in zip(axes, ("val_acc", "test_acc"), ("validation", "test")):
        for m, opt in dict.fromkeys((r["model"], r["optimizer"]) for r in rows):
            pts = sorted((r["lr"], r[key]) for r in rows if (r["model"], r["optimizer"]) == (m, opt) and r[key] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", label=f"{m} ({opt})")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(f"{title} accuracy")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=90)
    plt.close(fig)
    return out / "summary.csv", out / "summary.png"


def summary_table(rows: list[dict]) -> str:
    lines = [f"{'model':<11} {'optimizer':<9} {'lr':>7} {'seed':>4} {'val acc':>8} {'test acc':>8} {'test F1':>8} {'time':>8}  checkpoint"]
    pct = lambda v: f"{100 * v:.2f}%" if v is not None else "-"  # noqa: E731
    f1 = lambda v: f"{v:.4f}" if v is not None else "-"  # noqa: E731
    for r in rows:
        lines.append(f"{r['model']:<11} {r['optimizer']:<9} {r['lr']:>7g} {r['seed']:>4} {pct(r['val_acc']):>8} {pct(r['test_acc']):>8} "
                     f"{f1(r['test_f1']):>8} {r['seconds']:>7.0f}s  "
                     f"{r['checkpoint'] or r['status']}")
    return "\n".join(lines)


def train_all(configs: list[TrainConfig], restart: bool = False) -> list[dict]:
    """Every config through train(), one run folder each: a finished run of the same settings is skipped
    (unless restart), a stopped one continues from its last.pt. Returns each run's result."""
    results = []
    for i, cfg in enumerate(configs):
        r = cfg.resolved()
        if len(configs) > 1:
            print(f"\n=== run {i + 1}/{len(configs)}: {r.model}, {r.optimizer} lr {r.lr:g}, seed {r.seed}", flush=True)
        done = None if restart else finished_run(cfg)
        if done:
            print(f"{done['run_dir']}: finished before ({done['status']}); skipped (--restart trains it again)", flush=True)
            results.append(done)
            continue
        if advice := lr_advice(r):
            print(advice, flush=True)
        results.append(train(cfg, resume=not restart))
    return results


# -----------------------------------------------------------------------------
# The command line: a flag per TrainConfig field (typed flags only reach the namespace), and the reverse.

MODEL_CONFIG_FLAGS = {  # shortcuts into model_config
    "width": dict(type=int, help="model width (convnet, quicknet, resnet, fastresnet): model_config's width"),
    "dropout": dict(type=float, help="dropout rate (dnn, convnet, quicknet, fastresnet): model_config's dropout"),
    "stem": dict(choices=RESNET_STEMS, help="ResNet-18's stem (default: 3x3s2; see models.RESNET_STEMS)")}
SEVERAL = {"model", "lr", "seed"}  # flags that take several values: one run per combination


def field_type(f: dataclasses.Field) -> type:
    """int for `int | None`, etc."""
    import typing
    args = [a for a in typing.get_args(f.type) if a is not type(None)]
    return args[0] if args else f.type


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def yes_no(text: str) -> bool:
    answers = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    if text.lower() not in answers:
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return answers[text.lower()]


def none_if_empty(text: str) -> str | None:
    return text or None


def flag_text(v) -> str:
    """A value as a flag's argument: floats in their shortest exact form (0.1, 5e-05, 30)."""
    return f"{v:g}" if isinstance(v, float) and float(f"{v:g}") == v else str(v)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, its default said once in its help; bool: --x or --no-x, or --x yes|no;
    dict: --x JSON; an optional str: '' means None. Untyped flags stay out of the namespace (SUPPRESS)."""
    for f in dataclasses.fields(TrainConfig):
        kind, default, meta = field_type(f), f.default if f.default is not dataclasses.MISSING else {}, dict(f.metadata)
        help = meta.pop("help", "").replace("%", "%%")
        if default not in (None, {}, False, True) and "default:" not in help:
            help += f" (default: {flag_text(default)})"
        opts = dict(default=argparse.SUPPRESS, help=help)
        if kind is bool and default is False:
            p.add_argument(flag(f.name), action="store_true", **opts)
        elif kind is bool and default is True:
            p.add_argument(flag(f"no_{f.name}"), dest=f.name, action="store_false", **{**opts, "help": f"turn off: {help}"})
        elif kind is bool:
            p.add_argument(flag(f.name), type=yes_no, metavar="{yes,no}", **opts)
        elif kind is dict:
            p.add_argument(flag(f.name), type=json.loads, metavar="JSON", **opts)
        else:
            parse = none_if_empty if kind is str and f.type is not str else kind
            p.add_argument(flag(f.name), type=parse, nargs="+" if f.name in SEVERAL else None, **opts, **meta)
    for name, options in MODEL_CONFIG_FLAGS.items():
        p.add_argument(flag(name), default=argparse.SUPPRESS, **options)


def config_argv(cfg: TrainConfig) -> list[str]:
    """The flags that make `cfg` again (every field that differs from its default): config -> argv, the
    reverse of configs_from_args. model_config's width, dropout, stem use their shortcuts."""
    mc = cfg.model_config
    argv = [x for k in MODEL_CONFIG_FLAGS if mc.get(k) is not None for x in (flag(k), flag_text(mc[k]))]
    rest = {k: v for k, v in mc.items() if k not in MODEL_CONFIG_FLAGS or v is None}
    defaults = TrainConfig()
    for f in dataclasses.fields(cfg):
        value = rest if f.name == "model_config" else getattr(cfg, f.name)
        default = getattr(defaults, f.name)
        if value == default:
            continue
        kind = field_type(f)
        if kind is bool and default in (False, True):
            argv.append(flag(f.name) if default is False else flag(f"no_{f.name}"))
        elif kind is bool:
            argv += [flag(f.name), "yes" if value else "no"]
        elif kind is dict:
            argv += [flag(f.name), json.dumps(value)]
        else:
            argv += [flag(f.name), "" if value is None else flag_text(value)]
    return argv


DIVERGED_EXIT = 3  # `python train.py`'s exit status when the loss stopped being finite


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train models of models.py on MNIST: every combination of --model, --lr and "
                                            "--seed, one run folder each. Unset settings come from the model's recipe "
                                            "(recipes.py).")
    add_config_flags(p)
    p.add_argument("--recipe", help="a recipe of recipes.py (--list-recipes), e.g. convnet-best; with --model: best, final "
                                    "or a candidate's name for each model; flags typed override it")
    p.add_argument("--list-recipes", action="store_true", help="print every recipe of recipes.py and exit")
    p.add_argument("--config", metavar="JSON", help="start from the settings in a run's config.json (or a weights card); "
                                                    "flags typed and --recipe override them")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.add_argument("--restart", action="store_true", help="train finished and stopped runs again from the start")
    p.add_argument("--lr-find", action="store_true", help="run the LR range test instead of training and plot it")
    return p.parse_args(argv)


def named_recipe(name: str, model: str | None) -> dict:
    """recipes.recipe(name), or with a model the model's own: `best` -> `<model>-best`, `default` -> `<model>`."""
    if model and name not in recipes.registry():
        name = model if name == "default" else f"{model}-{name}"
    try:
        r = recipes.recipe(name)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if model and r["model"] != model:
        raise ValueError(f"recipe {name!r} trains {r['model']}, not {model}; drop --model or choose {model}'s recipe")
    return r


def settings(typed: dict, config_file: str | None = None, recipe: str | None = None) -> list[TrainConfig]:
    """Every run's TrainConfig, resolved in this one place: the flags typed (`typed`: TrainConfig fields and
    the model_config shortcuts; model, lr and seed as lists), over --recipe's settings, over --config's, over
    the defaults (a setting left None is the model's default recipe's, filled by TrainConfig.resolved)."""
    stored = {}
    if config_file:
        try:
            stored = json.loads(Path(config_file).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--config {config_file}: not a readable JSON file ({e}); give a run folder's config.json")
        stored = stored.get("train_config", stored)  # a weights card holds it under train_config
        stored = {k: v for k, v in stored.items() if k in CONFIG_FIELDS - {"run_name"}}  # the name follows the settings
    typed = dict(typed)
    models = typed.pop("model", None) or [None]
    models = [m for x in models for m in (STUDY_MODELS if x == "all" else [x])]
    lrs, seeds = typed.pop("lr", None) or [None], typed.pop("seed", None) or [None]
    shortcuts = {k: typed.pop(k) for k in MODEL_CONFIG_FLAGS if k in typed}
    out = []
    for m in models:
        base = {**stored, **(named_recipe(recipe, m) if recipe else {})}
        for lr in lrs:
            for seed in seeds:
                fields = {**base, **typed, **{k: v for k, v in (("model", m), ("lr", lr), ("seed", seed)) if v is not None}}
                fields["model_config"] = {**base.get("model_config", {}), **typed.get("model_config", {}), **shortcuts}
                out.append(TrainConfig(**fields))
    return out


def configs_from_args(a: argparse.Namespace) -> list[TrainConfig]:
    typed = {k: v for k, v in vars(a).items() if k in CONFIG_FIELDS or k in MODEL_CONFIG_FLAGS}
    return settings(typed, a.config, a.recipe)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The one TrainConfig of a command that names one run (ValueError when it names several)."""
    configs = configs_from_args(a)
    if len(configs) != 1:
        raise ValueError(f"these flags name {len(configs)} runs, not one")
    return configs[0]


def shipped_like(cfg: TrainConfig, weights: Path = ROOT / "weights") -> bool:
    """Whether cfg trains its model as weights/<model>.pt was trained (optimizer, LR, epochs and the
    network's settings, from the file's card); True when there is no such file or card."""
    card = weights / f"{cfg.model}.json"
    made = json.loads(card.read_text()).get("train_config") if card.exists() else None
    if not made:
        return True
    ours = cfg.resolved()
    return (made.get("optimizer") == ours.optimizer and float(made.get("lr", -1)) == float(ours.lr)
            and float(made.get("epochs", -1)) == float(ours.epochs)
            and json.dumps(complete_config(cfg.model, made.get("model_config") or {}), sort_keys=True)
            == json.dumps(ours.model_config, sort_keys=True))


def main(argv=None) -> int:
    a = parse_args(argv)
    stop_on_signals()  # `kill` and a background job's SIGINT stop a run like Ctrl-C: last.pt is saved
    try:
        if a.list_recipes:
            for name, r in recipes.registry().items():
                print(f"{name:<28} {' '.join(config_argv(TrainConfig(**r)))}")
            return 0
        if a.resume:
            run = Path(a.resume)
            if not (run / "last.pt").exists():
                sys.exit(f"error: {run / 'last.pt'} not found; --resume takes a run folder that holds last.pt")
            stored = {k: v for k, v in read_checkpoint(run / "last.pt")["train_config"].items() if k in CONFIG_FIELDS}
            cfg = dataclasses.replace(TrainConfig(**stored), out=str(run.parent), run_name=run.name)
            return DIVERGED_EXIT if train(cfg, resume=True)["status"] == "diverged" else 0
        configs = configs_from_args(a)
        if a.lr_find:
            for cfg in configs:
                r = lr_find(cfg, out_png=str(Path(cfg.out) / f"lr_find-{cfg.model}.png"))
                print(f"{cfg.model}: suggested lr {r['suggested_lr']:.3g} (steepest loss descent); loss lowest at "
                      f"{r['min_loss_lr']:.3g}; plot {r['png']}")
            return 0
        for cfg in {c.model: c for c in configs}.values():  # a quick default is seldom what made the shipped file
            if os.environ.get("RANK", "0") == "0" and not shipped_like(cfg):
                print(f"note: weights/{cfg.model}.pt, the report's {cfg.model}, was trained with other settings than this "
                      f"run's: its command is in weights/{cfg.model}.md")
        results = train_all(configs, a.restart)
        if len(results) > 1:
            rows = [summary_row(r) for r in results]
            csv_path, png = write_summary(rows, Path(configs[0].out))
            print(f"\n{summary_table(rows)}\n\nsummary: {csv_path}, {png}")
        if any(r["status"] == "diverged" for r in results):
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
