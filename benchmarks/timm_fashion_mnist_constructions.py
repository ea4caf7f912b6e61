"""Fashion-MNIST: baseline vs the softmax ERA constructions (paper, mixture) at the authors' floor and a tight one.

Four arms, identical flags otherwise (the recipe of ``benchmarks/timm_fashion_mnist.py``: same model, epochs,
optimizer, schedule, batch size, label smoothing 0.1, seed):

- ``baseline``: ``<arch>``;
- ``paper-0.6``: ``<arch>_era --min-entropy 0.6`` (paper construction; smallest reachable entropy 0.98 nats);
- ``mixture-0.6``: ``--era-construction mixture --min-entropy 0.6`` (tight: smallest reachable entropy 0.6);
- ``mixture-0.98``: ``--era-construction mixture --min-entropy 0.98``, the tight construction at the floor the paper's
  construction actually delivers at 0.6. (``calibrated`` at 0.9825 would reproduce ``paper-0.6`` exactly: the same
  map with the same internal floor, so the tight arm at 0.98 uses the mixture.)

After each run the final checkpoint is evaluated on the test set once more for the reliability diagram's bins (its
ECE must equal the run's own). Resumable: a run whose directory already holds ``results.json`` and ``last.pth.tar``
is not retrained and an interrupted one continues from its last epoch checkpoint (``resumed`` in its JSON row), so
the same command completes a partial set. The JSON (every run, its command and bins) is rewritten after each
run; a run already in it with the same command is kept and not run again, so the committed JSON alone carries
finished runs over to a fresh checkout. One reliability-diagram PNG per arm (bins summed over the finished seeds).

    python benchmarks/timm_fashion_mnist_constructions.py --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import timm
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from timm.models import load_checkpoint
from timm_fashion_mnist import METRICS, train_command

import timm_era  # noqa: F401  (registers the <arch>_era names)
from timm_era.data import load_in_memory_dataset
from timm_era.metrics import ClassificationMetrics

# arm -> (ERA construction, floor); None: the plain model
ARMS: dict[str, tuple[str, float] | None] = {
    "baseline": None,
    "paper-0.6": ("paper", 0.6),
    "mixture-0.6": ("mixture", 0.6),
    "mixture-0.98": ("mixture", 0.98),
}


def run_command(args: argparse.Namespace, arm: str, seed: int) -> list[str]:
    era = ARMS[arm]
    model = args.model + ("_era" if era else "")
    command = train_command(args, args.dataset, model, f"{arm}-seed{seed}", seed)
    if era:
        command += ["--era-construction", era[0], "--min-entropy", str(era[1])]
    return command


@torch.no_grad()
def reliability(args: argparse.Namespace, arm: str, run_dir: Path) -> tuple[dict, float]:
    """Evaluate the run's final checkpoint on the test set: reliability bins and ECE."""
    era = ARMS[arm]
    splits = load_in_memory_dataset(args.dataset)
    kwargs = {"min_entropy": era[1], "era_construction": era[0]} if era else {}
    name = args.model + ("_era" if era else "")
    model = timm.create_model(name, num_classes=splits.num_classes, in_chans=1, **kwargs)
    load_checkpoint(
        model, str(run_dir / "last.pth.tar"), weights_only=False
    )  # our own run: it pickles its args
    model.eval()
    metrics = ClassificationMetrics()
    for start in range(0, len(splits.test_labels), 500):
        images = splits.test_images[start : start + 500]
        metrics.update(model(images), splits.test_labels[start : start + 500])
    return metrics.reliability(), metrics.compute()["ece"]


def run_one(args: argparse.Namespace, arm: str, seed: int) -> dict:
    command = run_command(args, arm, seed)
    run_dir = Path(args.output) / f"{arm}-seed{seed}"
    start = time.time()
    resumed = False
    if not ((run_dir / "results.json").exists() and (run_dir / "last.pth.tar").exists()):
        # An interrupted run continues from its last epoch checkpoint (timm's --resume).
        resumed = (run_dir / "last.pth.tar").exists()
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        log_path = Path(args.output) / f"{arm}-seed{seed}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            resume = ["--resume", str(run_dir / "last.pth.tar")] if resumed else []
            subprocess.run(command + resume, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    with open(run_dir / "results.json") as f:
        results = json.load(f)
    bins, ece = reliability(args, arm, run_dir)
    if abs(ece - results["eval"]["ece"]) > 1e-4:
        raise RuntimeError(f"{run_dir}: checkpoint ECE {ece} differs from the run's {results['eval']['ece']}")
    row = {
        "arm": arm,
        "seed": seed,
        "seconds": time.time() - start,
        "resumed": resumed,
    }
    row["command"] = " ".join(command[1:])
    row.update({k: results["eval"][k] for k in METRICS})
    row["reliability"] = bins
    print(
        f"{arm:13s} seed {seed}: top1 {row['top1']:.2f} nll {row['nll']:.4f} ece {row['ece']:.4f} "
        f"entropy mean {row['entropy_mean']:.3f} min {row['entropy_min']:.3f} ({row['seconds']:.0f}s)",
        flush=True,
    )
    return row


def summarise(rows: list[dict]) -> dict[str, dict]:
    summary = {}
    for arm in ARMS:
        arm_rows = [r for r in rows if r["arm"] == arm]
        if not arm_rows:
            continue
        summary[arm] = {"seeds": sorted(r["seed"] for r in arm_rows)}
        for k in METRICS:
            values = [r[k] for r in arm_rows]
            std = statistics.stdev(values) if len(values) > 1 else None  # one seed: no spread
            summary[arm][k] = {"mean": statistics.fmean(values), "std": std}
    return summary


def plot_reliability(arm: str, arm_rows: list[dict], path: Path) -> None:
    """Accuracy vs confidence per bin, bins summed over seeds; bar width: bin; gap to the diagonal: miscalibration."""
    edges = arm_rows[0]["reliability"]["edges"]
    bins = len(edges) - 1
    count = [sum(r["reliability"]["count"][i] for r in arm_rows) for i in range(bins)]

    def pooled(key: str, i: int) -> float:
        total = sum(
            r["reliability"][key][i] * r["reliability"]["count"][i]
            for r in arm_rows
            if r["reliability"]["count"][i]
        )
        return total / count[i] if count[i] else float("nan")

    accuracy = [pooled("accuracy", i) for i in range(bins)]
    confidence = [pooled("confidence", i) for i in range(bins)]
    fig = Figure(figsize=(4.2, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(edges[:-1], [a if c else 0 for a, c in zip(accuracy, count, strict=True)], width=1 / bins, align="edge",
           edgecolor="black", label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.plot([c for c, n in zip(confidence, count, strict=True) if n], [a for a, n in zip(accuracy, count, strict=True) if n], "o-",
            color="tab:red", markersize=3, label="mean confidence")  # fmt: skip
    ece = statistics.fmean(r["ece"] for r in arm_rows)
    seeds = ", ".join(str(r["seed"]) for r in sorted(arm_rows, key=lambda r: r["seed"]))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy")
    ax.set_title(f"{arm}: ECE {ece:.3f} (seeds {seeds})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def committed_rows(args: argparse.Namespace) -> list[dict]:
    """Rows of ``args.out`` whose command is this invocation's: finished runs kept on a fresh checkout."""
    out = Path(args.out)
    if not out.exists():
        return []
    with open(out) as f:
        rows = json.load(f)["runs"]
    return [
        r for r in rows
        if r["arm"] in args.arms and r["seed"] in args.seeds
        and r["command"] == " ".join(run_command(args, r["arm"], r["seed"])[1:])
    ]  # fmt: skip


def write_outputs(args: argparse.Namespace, rows: list[dict]) -> dict:
    rows = sorted(rows, key=lambda r: (list(ARMS).index(r["arm"]), r["seed"]))
    summary = summarise(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    missing = [f"{arm}-seed{s}" for arm in args.arms for s in args.seeds if not any(
        r["arm"] == arm and r["seed"] == s for r in rows)]  # fmt: skip
    with open(out, "w") as f:
        json.dump(
            {
                "config": {k: v for k, v in vars(args).items() if k != "no_train"},
                "missing": missing,
                "runs": rows,
                "summary": summary,
            },
            f,
            indent=2,
        )
    for arm in summary:
        plot_reliability(arm, [r for r in rows if r["arm"] == arm], out.with_name(f"{out.stem}-{arm}.png"))
    out.with_suffix(".md").write_text(markdown_table(args, summary, missing))
    return summary


def markdown_table(args: argparse.Namespace, summary: dict[str, dict], missing: list[str]) -> str:
    """Per arm: seeds finished and each metric's mean ± standard deviation over them (the docs include it)."""
    headers = {
        "top1": "top-1 %",
        "nll": "NLL",
        "ece": "ECE",
        "entropy_mean": "entropy mean",
        "entropy_min": "entropy min",
    }
    lines = [
        f"{args.dataset} test set, `{args.model}`, {args.epochs} epochs; mean ± std over the finished seeds "
        f"(± n/a: one seed). "
        + (f"Not finished yet: {', '.join(missing)}." if missing else "Every run of the protocol finished."),
        "",
        "| arm | seeds | " + " | ".join(headers[k] for k in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for arm, cells in summary.items():
        values = [
            f"{cells[k]['mean']:.{2 if k == 'top1' else 3}f} ± "
            + ("n/a" if cells[k]["std"] is None else f"{cells[k]['std']:.{2 if k == 'top1' else 3}f}")
            for k in METRICS
        ]
        seeds = ", ".join(str(seed) for seed in cells["seeds"])
        lines.append(f"| `{arm}` | {seeds} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet10t", help="plain timm architecture; ERA arms add _era")
    parser.add_argument(
        "--dataset", default="fashion-mnist", help="in-memory dataset (digits for a smoke test)"
    )
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--opt", default="sgd")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--smoothing", type=float, default=0.1, help="label smoothing of every arm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--output", default="output/timm_fashion_mnist_constructions", help="run directories")
    parser.add_argument(
        "--out",
        default="benchmarks/results/timm_fashion_mnist_constructions.json",
        help="JSON; PNGs and a Markdown table beside it",
    )
    parser.add_argument(
        "--no-train",
        action="store_true",
        help="only rewrite the table, PNGs and JSON from the runs already in --out",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = committed_rows(args)
    done = {(r["arm"], r["seed"]) for r in rows}
    jobs = [
        (arm, seed) for seed in args.seeds for arm in args.arms if (arm, seed) not in done
    ]  # seed-major: every arm gets seed 0 first
    if args.no_train:
        jobs = []
    if done:
        print(f"{len(done)} runs already in {args.out}; {len(jobs)} to run", flush=True)
    lock = threading.Lock()

    def job(arm: str, seed: int) -> None:
        row = run_one(args, arm, seed)
        with lock:
            rows.append(row)
            write_outputs(args, rows)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in [pool.submit(job, *j) for j in jobs]:
            future.result()
    summary = write_outputs(args, rows)

    print(f"\n{args.dataset} test set, {args.model}, {args.epochs} epochs, seeds {args.seeds} (mean ± std)")
    print(f"{'arm':14s}" + "".join(f"{k:>20s}" for k in METRICS))
    for arm, cells in summary.items():
        std = {k: "n/a" if cells[k]["std"] is None else f"{cells[k]['std']:.3f}" for k in METRICS}
        print(f"{arm:14s}" + "".join(f"{cells[k]['mean']:>12.4f} ± {std[k]:<5s}" for k in METRICS))
    print(
        f"written to {args.out}, its -<arm>.png reliability diagrams and {Path(args.out).with_suffix('.md')}"
    )


if __name__ == "__main__":
    main()
