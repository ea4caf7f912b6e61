"""Cost of the ERA head: forward+backward time of ``<arch>_era`` against the plain ``<arch>``, in the same run.

For each model, class count and batch size, the plain and the ERA model (same weights) take turns, alternating
which goes first, for ``--rounds`` rounds of ``--steps`` training steps (forward, cross-entropy, backward); the
reported overhead is the median over rounds of ``era_time / plain_time - 1`` (with its interquartile range, to
show the timing noise). The ERA activation is also timed alone on logits of the classifier's shape ("head ms",
and "head %" of the plain step), a figure that a noisy shared machine cannot blur. Prints a table, writes JSON.

    python benchmarks/timm_overhead.py --threads 1
    python benchmarks/timm_overhead.py --device cuda --img-size 224 --batch-sizes 64 256
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import timm
import torch
from torch import nn

import timm_era

# ViTs take their input size at construction.
FIXED_SIZE_MODELS = ("vit_",)


def _model_kwargs(arch: str, num_classes: int, img_size: int) -> dict:
    kwargs = {"num_classes": num_classes}
    if arch.startswith(FIXED_SIZE_MODELS):
        kwargs["img_size"] = img_size
    return kwargs


def _time_steps(model: nn.Module, images: torch.Tensor, target: torch.Tensor, steps: int) -> float:
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(images), target)
        loss.backward()
    sync()
    return (time.perf_counter() - start) / steps


def _time_head(head: nn.Module, logits: torch.Tensor, steps: int) -> float:
    """Forward+backward of the ERA activation alone on classifier-shaped logits."""
    logits = logits.detach().requires_grad_()
    sync = torch.cuda.synchronize if logits.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        head(logits).sum().backward()
    sync()
    return (time.perf_counter() - start) / steps


def measure(arch: str, num_classes: int, batch_size: int, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    plain = timm.create_model(arch, **_model_kwargs(arch, num_classes, args.img_size)).to(device)
    era = timm_era.apply_era(copy.deepcopy(plain))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, args.img_size, args.img_size, generator=generator).to(device)
    target = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
    for model in (plain, era):
        _time_steps(model, images, target, args.warmup)
    plain_times, era_times, ratios = [], [], []
    for round_index in range(args.rounds):
        order = (plain, era) if round_index % 2 == 0 else (era, plain)
        times = {id(model): _time_steps(model, images, target, args.steps) for model in order}
        plain_times.append(times[id(plain)])
        era_times.append(times[id(era)])
        ratios.append(times[id(era)] / times[id(plain)])
    logits = torch.randn(batch_size, num_classes, generator=generator).to(device)
    _time_head(era.era, logits, args.warmup)
    head_time = statistics.median(_time_head(era.era, logits, args.steps) for _ in range(args.rounds))
    return {
        "model": arch,
        "num_classes": num_classes,
        "batch_size": batch_size,
        "plain_ms": 1e3 * statistics.median(plain_times),
        "era_ms": 1e3 * statistics.median(era_times),
        "overhead_pct": 100.0 * (statistics.median(ratios) - 1.0),
        "overhead_iqr_pct": 100.0 * _iqr(ratios),
        "head_ms": 1e3 * head_time,
        "head_pct": 100.0 * head_time / statistics.median(plain_times),
    }


def _iqr(values: list[float]) -> float:
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["resnet10t", "convnext_atto", "mobilenetv3_small_050", "vit_tiny_patch16_224"],
    )
    parser.add_argument("--num-classes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=9, help="alternating timing rounds (median is reported)"
    )
    parser.add_argument("--steps", type=int, default=3, help="training steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="benchmarks/results/timm_overhead.json")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the spread is reported)")
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    header = (
        f"{'model':24s}{'classes':>8s}{'batch':>7s}{'plain ms':>11s}{'ERA ms':>11s}{'overhead %':>12s}{'IQR %':>8s}"
        f"{'head ms':>10s}{'head %':>9s}"
    )
    print(
        f"forward+backward, {args.img_size}x{args.img_size}, {args.device}, {torch.get_num_threads()} threads"
    )
    print(header)
    for arch in args.models:
        for num_classes in args.num_classes:
            for batch_size in args.batch_sizes:
                row = measure(arch, num_classes, batch_size, args)
                rows.append(row)
                print(
                    f"{arch:24s}{num_classes:>8d}{batch_size:>7d}{row['plain_ms']:>11.2f}{row['era_ms']:>11.2f}"
                    f"{row['overhead_pct']:>+12.2f}{row['overhead_iqr_pct']:>8.2f}{row['head_ms']:>10.3f}"
                    f"{row['head_pct']:>9.2f}",
                    flush=True,
                )
    overheads = [row["overhead_pct"] for row in rows]
    print(
        f"median overhead over all settings: {statistics.median(overheads):+.2f}% (end to end); "
        f"largest isolated head cost: {max(row['head_pct'] for row in rows):.2f}% of the plain step"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = dict(vars(args), threads=torch.get_num_threads(), torch=torch.__version__, timm=timm.__version__)
    with open(out, "w") as f:
        json.dump(
            {"config": config, "rows": rows, "median_overhead_pct": statistics.median(overheads)}, f, indent=2
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
