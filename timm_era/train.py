"""Train and evaluate a timm classifier, with or without ERA, from timm's own parts.

``--model resnet18`` vs ``--model resnet18_era`` is the whole difference between a baseline and an ERA run::

    python -m timm_era.train --dataset fashion-mnist --model resnet10t --smoothing 0.1 --epochs 3
    python -m timm_era.train --dataset fashion-mnist --model resnet10t_era --min-entropy 0.6 --smoothing 0.1 --epochs 3
    torchrun --nproc_per_node=4 -m timm_era.train --dataset /data/imagenet --model resnet50_era --device cuda ...

``--dataset`` is ``digits`` (scikit-learn), ``fashion-mnist`` (Debian's ``dataset-fashion-mnist``; both held in
memory), or anything ``timm.data.create_dataset`` takes (an image folder, ``torch/cifar10``...). Under ``torchrun``
the script trains with DistributedDataParallel like timm's ``train.py`` (NCCL on GPUs, gloo on CPU). Each epoch is
evaluated on the test split: top-1/top-5, NLL, ECE and the predictive entropy (mean and minimum, so an ERA floor is
visible); ``summary.csv`` and ``results.json`` go to the output directory with timm's checkpoints
(``last.pth.tar``, ``model_best.pth.tar``), from which ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterable
from contextlib import nullcontext
from datetime import datetime
from typing import Any

import timm
import torch
import torch.distributed as dist
from timm.data import Mixup, create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import load_checkpoint, resume_checkpoint, safe_model_name
from timm.models._factory import resolve_model_input_args
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import (
    AverageMeter,
    CheckpointSaver,
    ModelEmaV3,
    NativeScaler,
    distribute_bn,
    get_outdir,
    init_distributed_device,
    random_seed,
    setup_default_logging,
    update_summary,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset
from tqdm import tqdm

import timm_era
from era_core.softmax import CONSTRUCTIONS
from timm_era.data import IN_MEMORY_DATASETS, load_in_memory_dataset
from timm_era.head import ERA_SUFFIX
from timm_era.metrics import ClassificationMetrics

__all__ = ["build_parser", "main"]

_logger = logging.getLogger("timm_era.train")


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags (a subset of timm's ``train.py``, same names, plus the ERA ones)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    group = parser.add_argument_group("Dataset")
    group.add_argument(
        "--dataset",
        default="digits",
        help=f"{' | '.join(IN_MEMORY_DATASETS)} (held in memory) or a timm dataset spec / image folder",
    )
    group.add_argument(
        "--data-dir",
        default=None,
        help="root for timm datasets; idx directory for fashion-mnist (default: Debian's path)",
    )
    group.add_argument("--train-split", default="train", help="train split of a timm dataset")
    group.add_argument("--val-split", default="validation", help="evaluation split of a timm dataset")
    group.add_argument(
        "--img-size", type=int, default=None, help="image side (default: dataset / model default)"
    )
    group.add_argument(
        "--in-chans", type=int, default=None, help="input channels (in-memory default: 1; or 3)"
    )
    group.add_argument("--workers", "-j", type=int, default=2, help="data loading processes of timm loaders")

    group = parser.add_argument_group("Model")
    group.add_argument(
        "--model", default="resnet10t_era", help="timm model name; <arch>_era adds the ERA head"
    )
    group.add_argument("--pretrained", action="store_true", help="start from the model's pretrained weights")
    group.add_argument("--initial-checkpoint", default="", help="load these weights after building the model")
    group.add_argument("--num-classes", type=int, default=None, help="classes (default: from the dataset)")
    group.add_argument("--drop", type=float, default=None, help="classifier dropout rate")
    group.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate")
    group.add_argument(
        "--min-entropy",
        type=float,
        default=None,
        help="ERA floor in nats (ERA models only; default 0.3*(1+log10(num_classes)))",
    )
    group.add_argument("--era-tau", type=float, default=None, help="ERA share cap parameter (default 4)")
    group.add_argument(
        "--era-inverse",
        choices=("approx", "newton"),
        default=None,
        help="ERA inverse: the paper's closed form (default) or exact Newton",
    )
    group.add_argument(
        "--era-construction",
        choices=CONSTRUCTIONS,
        default=None,
        help="ERA construction: paper (default, loose floor), mixture or calibrated (tight: min entropy = floor)",
    )

    group = parser.add_argument_group("Optimizer and schedule")
    group.add_argument("--opt", default="sgd", help="optimizer (timm.optim.create_optimizer_v2 name)")
    group.add_argument("--lr", type=float, default=0.05, help="learning rate")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight-decay", type=float, default=2e-5, help="weight decay")
    group.add_argument("--layer-decay", type=float, default=None, help="layer-wise lr decay")
    group.add_argument("--clip-grad", type=float, default=None, help="clip gradient norm")
    group.add_argument(
        "--sched", default="cosine", help="lr scheduler (timm.scheduler.create_scheduler_v2 name)"
    )
    group.add_argument("--sched-on-updates", action="store_true", help="step the schedule every update")
    group.add_argument("--epochs", type=int, default=10, help="epochs to train")
    group.add_argument("--warmup-epochs", type=int, default=0, help="linear warmup epochs")
    group.add_argument("--warmup-lr", type=float, default=1e-5, help="warmup start lr")
    group.add_argument("--min-lr", type=float, default=0.0, help="lr floor of the schedule")
    group.add_argument("--batch-size", "-b", type=int, default=128, help="batch size per process")
    group.add_argument("--validation-batch-size", "-vb", type=int, default=None, help="eval batch size")

    group = parser.add_argument_group("Loss and regularisation")
    group.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    group.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (on when > 0)")
    group.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (on when > 0)")
    group.add_argument(
        "--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch"
    )
    group.add_argument("--model-ema", action="store_true", help="keep and evaluate an EMA of the weights")
    group.add_argument("--model-ema-decay", type=float, default=0.998, help="EMA decay")

    group = parser.add_argument_group("Run")
    group.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    group.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    group.add_argument(
        "--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16", help="autocast dtype"
    )
    group.add_argument("--seed", type=int, default=42, help="random seed")
    group.add_argument(
        "--resume", default="", help="checkpoint to resume model, optimizer, EMA and epoch from"
    )
    group.add_argument("--output", default="./output/train", help="parent directory of the run directory")
    group.add_argument("--experiment", default="", help="run directory name (default: time-model-dataset)")
    group.add_argument("--checkpoint-hist", type=int, default=2, help="epoch checkpoints to keep")
    group.add_argument("--no-progress", action="store_true", help="no tqdm progress bar (epoch logs only)")
    return parser


def _era_kwargs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    given = {
        "min_entropy": args.min_entropy,
        "era_tau": args.era_tau,
        "era_inverse": args.era_inverse,
        "era_construction": args.era_construction,
    }
    given = {k: v for k, v in given.items() if v is not None}
    arch = timm.models.get_arch_name(timm.models.parse_model_name(args.model)[1])
    if given and not arch.endswith(ERA_SUFFIX):
        parser.error(
            f"--min-entropy/--era-tau/--era-inverse/--era-construction need an ERA model (e.g. {arch}_era), got {args.model}"
        )
    return given


def _in_memory_loaders(
    args: argparse.Namespace,
) -> tuple[DataLoader, DataLoader, int, DistributedSampler | None]:
    splits = load_in_memory_dataset(args.dataset, args.img_size, args.in_chans or 1, args.data_dir)
    train_set = TensorDataset(splits.train_images, splits.train_labels)
    # Each process evaluates its own strided shard, so the metrics' all_reduce sees every test image exactly once.
    eval_index = torch.arange(args.rank, len(splits.test_labels), args.world_size)
    eval_set = TensorDataset(splits.test_images[eval_index], splits.test_labels[eval_index])
    if args.distributed:
        sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed, drop_last=True)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(args.seed))
    drop_last = len(train_set) // args.world_size >= args.batch_size  # mixup needs even, full batches
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=drop_last)
    eval_loader = DataLoader(eval_set, batch_size=args.validation_batch_size or args.batch_size)
    return train_loader, eval_loader, splits.num_classes, sampler if args.distributed else None


def _timm_loaders(
    args: argparse.Namespace, model: nn.Module, device: torch.device
) -> tuple[DataLoader, DataLoader]:
    data_config = resolve_data_config(vars(args), model=model, verbose=args.rank == 0)
    loaders = []
    for split, training in ((args.train_split, True), (args.val_split, False)):
        name, root = _timm_dataset_source(args)
        dataset = create_dataset(
            name,
            root=root,
            split=split,
            is_training=training,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        loaders.append(
            create_loader(
                dataset,
                input_size=data_config["input_size"],
                batch_size=args.batch_size if training else args.validation_batch_size or args.batch_size,
                is_training=training,
                interpolation=data_config["interpolation"],
                mean=data_config["mean"],
                std=data_config["std"],
                crop_pct=data_config["crop_pct"],
                num_workers=args.workers,
                distributed=args.distributed,
                device=device,
                use_prefetcher=False,
            )
        )
    return loaders[0], loaders[1]


def _timm_dataset_source(args: argparse.Namespace) -> tuple[str, str | None]:
    # timm's create_dataset names an image folder "" with the folder as root; accept the folder as --dataset too.
    if args.data_dir is None and os.path.isdir(args.dataset):
        return "", args.dataset
    return args.dataset, args.data_dir


def _timm_num_classes(args: argparse.Namespace) -> int | None:
    name, root = _timm_dataset_source(args)
    dataset = create_dataset(name, root=root, split=args.train_split, is_training=True)
    class_to_idx = getattr(getattr(dataset, "reader", None), "class_to_idx", None)
    return len(class_to_idx) if class_to_idx else None


def _create_model(args: argparse.Namespace, num_classes: int | None, era_kwargs: dict[str, Any]) -> nn.Module:
    request = {"img_size": args.img_size, "in_chans": args.in_chans}
    if args.dataset in IN_MEMORY_DATASETS:
        request["in_chans"] = args.in_chans or 1
    model_args = resolve_model_input_args(
        args.model,
        args={k: v for k, v in request.items() if v is not None},
        num_classes=num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        **era_kwargs,
    )
    model = timm.create_model(pretrained=args.pretrained, **model_args)
    if args.initial_checkpoint:
        load_checkpoint(model, args.initial_checkpoint)
    return model


def _loss_and_mixup(args: argparse.Namespace, num_classes: int) -> tuple[nn.Module, Mixup | None]:
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            prob=args.mixup_prob,
            label_smoothing=args.smoothing,
            num_classes=num_classes,
        )
        return SoftTargetCrossEntropy(), mixup
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing), None
    return nn.CrossEntropyLoss(), None


def train_one_epoch(
    epoch: int,
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    args: argparse.Namespace,
    device: torch.device,
    lr_scheduler: Any,
    model_ema: ModelEmaV3 | None,
    mixup: Mixup | None,
    loss_scaler: NativeScaler | None,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean training loss (as timm's ``train.py``)."""
    model.train()
    losses = AverageMeter()
    updates_per_epoch = len(loader)
    num_updates = epoch * updates_per_epoch
    autocast = _autocast(args, device)
    bar = tqdm(loader, desc=f"train {epoch}", disable=args.no_progress or args.rank != 0, leave=False)
    for images, target in bar:
        images, target = images.to(device), target.to(device)
        if mixup is not None:
            images, target = mixup(images, target)
        with autocast:
            loss = loss_fn(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        if loss_scaler is not None:
            loss_scaler(loss, optimizer, clip_grad=args.clip_grad, parameters=model.parameters())
        else:
            loss.backward()
            if args.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
        num_updates += 1
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        losses.update(loss.item(), images.shape[0])
        lr_scheduler.step_update(num_updates=num_updates, metric=losses.avg)
        bar.set_postfix(loss=f"{losses.avg:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
    return {"loss": losses.avg}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, device: torch.device, args: argparse.Namespace
) -> dict[str, float]:
    """Top-1/top-5, NLL, ECE and entropy (mean, min) of ``softmax(model(x))`` over the whole evaluation set."""
    model.eval()
    metrics = ClassificationMetrics()
    autocast = _autocast(args, device)
    for images, target in tqdm(loader, desc="eval", disable=args.no_progress or args.rank != 0, leave=False):
        images, target = images.to(device), target.to(device)
        with autocast:
            logits = model(images)
        metrics.update(logits.float(), target)
    metrics.all_reduce()
    return metrics.compute()


def _autocast(args: argparse.Namespace, device: torch.device) -> Any:
    if not args.amp:
        return nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, args.amp_dtype))


def _era_floor(model: nn.Module) -> float | None:
    return getattr(model.era, "min_entropy", None) if timm_era.has_era(model) else None


def _format_floor(floor: float | None) -> str:
    return "none" if floor is None else f"{floor:.4f} nats"


def _experiment_name(args: argparse.Namespace) -> str:
    if args.experiment:
        return args.experiment
    parts = [
        datetime.now().strftime("%Y%m%d-%H%M%S"),
        safe_model_name(args.model),
        args.dataset.replace("/", "_"),
    ]
    return "-".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run training; returns (and writes to ``<output>/<experiment>/results.json``) the final evaluation."""
    setup_default_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    era_kwargs = _era_kwargs(args, parser)
    device = init_distributed_device(args)
    primary = args.rank == 0
    random_seed(args.seed, args.rank)
    if args.distributed:
        _logger.info(f"Process {args.rank} of {args.world_size} on {device} (DistributedDataParallel).")

    in_memory = args.dataset in IN_MEMORY_DATASETS
    if in_memory:
        args.img_size = args.img_size or IN_MEMORY_DATASETS[args.dataset][0]
        train_loader, eval_loader, num_classes, train_sampler = _in_memory_loaders(args)
        num_classes = args.num_classes or num_classes
    else:
        num_classes, train_sampler = args.num_classes or _timm_num_classes(args), None
    model = _create_model(args, num_classes, era_kwargs).to(device)
    if not in_memory:
        train_loader, eval_loader = _timm_loaders(args, model, device)
    if primary:
        _logger.info(
            f"Model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{model.num_classes} classes, ERA floor: {_format_floor(_era_floor(model))}"
        )

    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    loss_scaler = NativeScaler(device=device.type) if args.amp and args.amp_dtype == "float16" else None
    start_epoch = 0
    if args.resume:
        start_epoch = (
            resume_checkpoint(
                model, args.resume, optimizer=optimizer, loss_scaler=loss_scaler, log_info=primary
            )
            or 0
        )
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay)
        if args.resume:
            load_checkpoint(model_ema.module, args.resume, use_ema=True)
    train_model = DistributedDataParallel(model) if args.distributed else model

    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args), updates_per_epoch=len(train_loader)
    )
    if start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * len(train_loader))
        else:
            lr_scheduler.step(start_epoch)
    loss_fn, mixup = _loss_and_mixup(args, model.num_classes)
    loss_fn = loss_fn.to(device)

    output_dir = saver = None
    if primary:
        output_dir = get_outdir(args.output, _experiment_name(args))
        saver = CheckpointSaver(
            model,
            optimizer,
            args=args,
            model_ema=model_ema,
            amp_scaler=loss_scaler,
            checkpoint_dir=output_dir,
            recovery_dir=output_dir,
            max_history=args.checkpoint_hist,
        )
        with open(os.path.join(output_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)

    history = []
    eval_metrics = eval_ema = None
    for epoch in range(start_epoch, num_epochs):
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        elif args.distributed and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        start = time.time()
        train_metrics = train_one_epoch(
            epoch,
            train_model,
            train_loader,
            optimizer,
            loss_fn,
            args,
            device,
            lr_scheduler,
            model_ema,
            mixup,
            loss_scaler,
        )
        if args.distributed:
            distribute_bn(model, args.world_size, reduce=True)
        eval_metrics = evaluate(model, eval_loader, device, args)
        eval_ema = evaluate(model_ema.module, eval_loader, device, args) if model_ema is not None else None
        lr_scheduler.step(epoch + 1, eval_metrics["top1"])
        row = {"epoch": epoch, "seconds": time.time() - start, "train": train_metrics, "eval": eval_metrics}
        if eval_ema is not None:
            row["eval_ema"] = eval_ema
        history.append(row)
        if primary:
            _logger.info(
                f"epoch {epoch}: loss {train_metrics['loss']:.4f} | top1 {eval_metrics['top1']:.2f} "
                f"top5 {eval_metrics['top5']:.2f} nll {eval_metrics['nll']:.4f} ece {eval_metrics['ece']:.4f} "
                f"entropy mean {eval_metrics['entropy_mean']:.4f} min {eval_metrics['entropy_min']:.4f} "
                f"({row['seconds']:.1f}s)"
            )
            update_summary(
                epoch,
                train_metrics,
                eval_metrics,
                os.path.join(output_dir, "summary.csv"),
                lr=optimizer.param_groups[0]["lr"],
            )
            saver.save_checkpoint(epoch, metric=eval_metrics["top1"])

    results = {
        "model": args.model,
        "dataset": args.dataset,
        "num_classes": model.num_classes,
        "min_entropy": _era_floor(model),
        "era_construction": model.era.construction if _era_floor(model) is not None else None,
        "epochs": num_epochs,
        "seed": args.seed,
        "world_size": args.world_size,
        "eval": eval_metrics,
        "eval_ema": eval_ema,
        "history": history,
        "output_dir": output_dir,
    }
    if primary:
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        _logger.info(f"results written to {os.path.join(output_dir, 'results.json')}")
    if args.distributed:
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
