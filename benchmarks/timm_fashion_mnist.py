"""Fashion-MNIST: a timm baseline with label smoothing vs the same model with the ERA head, several seeds.

Both arms run ``python -m timm_era.train`` with identical flags (same model, epochs, optimizer, schedule, batch size,
label smoothing 0.1, seed); the only difference is the model name (``<arch>`` vs ``<arch>_era``) and
``--min-entropy``. Prints one line per run, a mean ± std table per arm, and writes everything (including the exact
command of every run) to JSON. Needs Debian's ``dataset-fashion-mnist`` package.

    python benchmarks/timm_fashion_mnist.py --model resnet10t --epochs 3 --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METRICS = ("top1", "nll", "ece", "entropy_mean", "entropy_min")


def train_command(
    args: argparse.Namespace, dataset: str, model: str, experiment: str, seed: int
) -> list[str]:
    """The recipe's ``timm_era.train`` command, shared by this benchmark and the constructions one."""
    return [
        sys.executable, "-m", "timm_era.train",
        "--dataset", dataset,
        "--model", model,
        "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size),
        "--opt", args.opt,
        "--lr", str(args.lr),
        "--weight-decay", str(args.weight_decay),
        "--sched", "cosine",
        "--smoothing", str(args.smoothing),
        "--seed", str(seed),
        "--output", args.output,
        "--experiment", experiment,
        "--checkpoint-hist", "1",
        "--no-progress",
    ]  # fmt: skip


def run_command(args: argparse.Namespace, arm: str, seed: int) -> list[str]:
    model = args.model + ("_era" if arm == "era" else "")
    command = train_command(args, "fashion-mnist", model, f"{model}-seed{seed}", seed)
    if arm == "era":
        command += ["--min-entropy", str(args.min_entropy)]
    return command


def run_one(args: argparse.Namespace, arm: str, seed: int) -> dict:
    command = run_command(args, arm, seed)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    log_path = Path(args.output) / f"{arm}-seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    model = command[command.index("--model") + 1]
    with open(Path(args.output) / f"{model}-seed{seed}" / "results.json") as f:
        results = json.load(f)
    row = {"arm": arm, "seed": seed, "seconds": time.time() - start, "command": " ".join(command[1:])}
    row.update({k: results["eval"][k] for k in METRICS})
    print(
        f"{arm:8s} seed {seed}: top1 {row['top1']:.2f} nll {row['nll']:.4f} ece {row['ece']:.4f} "
        f"entropy mean {row['entropy_mean']:.3f} min {row['entropy_min']:.3f} ({row['seconds']:.0f}s)",
        flush=True,
    )
    return row


def summarise(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    summary = {}
    for arm in ("baseline", "era"):
        arm_rows = [r for r in rows if r["arm"] == arm]
        summary[arm] = {
            k: {
                "mean": statistics.fmean(r[k] for r in arm_rows),
                "std": statistics.stdev(r[k] for r in arm_rows) if len(arm_rows) > 1 else 0.0,
            }
            for k in METRICS
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet10t", help="plain timm architecture; the ERA arm adds _era")
    parser.add_argument(
        "--min-entropy", type=float, default=0.6, help="ERA floor (authors: 0.6 for 10 classes)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--opt", default="sgd")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--smoothing", type=float, default=0.1, help="label smoothing of both arms")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output", default="output/timm_fashion_mnist", help="run directories and logs")
    parser.add_argument("--out", default="benchmarks/results/timm_fashion_mnist.json", help="JSON results")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("give at least 2 seeds so that a standard deviation exists")

    jobs = [(arm, seed) for seed in args.seeds for arm in ("baseline", "era")]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(args, *job), jobs))
    summary = summarise(rows)

    print(f"\nFashion-MNIST test set, {args.model}, {args.epochs} epochs, seeds {args.seeds} (mean ± std)")
    header = f"{'arm':10s}" + "".join(f"{k:>20s}" for k in METRICS)
    print(header)
    for arm in ("baseline", "era"):
        cells = "".join(f"{summary[arm][k]['mean']:>12.4f} ± {summary[arm][k]['std']:<5.3f}" for k in METRICS)
        print(f"{arm:10s}{cells}")
    print(
        f"ERA - baseline top1: {summary['era']['top1']['mean'] - summary['baseline']['top1']['mean']:+.2f} points"
    )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump({"config": vars(args), "runs": rows, "summary": summary}, f, indent=2)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
