"""Torch ops per call of the truncated normal's formulas, as an accelerator runs them.

On a GPU every elementwise op is a kernel launch, and at SAC's or PPO's batch sizes the launches, not the
arithmetic, are the cost. On the CPU (eager, SciPy installed) the formulas run on NumPy instead; this script
can force their torch version there (``--formulas torch``) so that op counts, which do not depend on the load
of the machine, can be compared between commits without a GPU. One difference remains: ``ndtri_exp`` (inside
every sample) computes its deep-tail branch on every call on an accelerator, where the CPU skips it after a
host read finds no level that deep; the two ``ndtri_exp`` rows give that branch's cost (deep minus no deep).
Prints a table and writes JSON::

    python benchmarks/truncated_normal_ops.py --formulas torch
    python benchmarks/truncated_normal_ops.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

from era_core import TruncatedNormal, ndtri_exp, truncated_normal


def aten_events(run: Callable[[], object]) -> list:
    """The profiler's averages of the aten ops of one call of ``run``, after a warm-up call."""
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return [e for e in prof.key_averages() if e.key.startswith("aten::")]


def add_formulas_argument(parser: argparse.ArgumentParser) -> None:
    """``--formulas auto|torch``, read by :func:`use_formulas`."""
    parser.add_argument(
        "--formulas",
        choices=["auto", "torch"],
        default="auto",
        help="torch: era_core's truncated normal runs its torch formulas on the CPU too, as accelerators do "
        "(auto: NumPy/SciPy there)",
    )


def use_formulas(formulas: str) -> None:
    """With ``"torch"``, the truncated normal's torch formulas for the rest of the process (CLI scripts)."""
    if formulas == "torch":
        mock.patch.object(truncated_normal, "_scipy_ops", lambda: None).start()


def _cases(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[], object]]:
    def params(batch: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        loc = torch.linspace(-0.9, 0.9, batch * 6, device=device, dtype=dtype).reshape(batch, 6)
        log_scale = torch.full_like(loc, -1.0)
        return loc.requires_grad_(grad), log_scale.requires_grad_(grad)

    deep = torch.full((256, 6), 2.0 * math.log(torch.finfo(dtype).tiny), device=device, dtype=dtype)
    shallow = torch.full((256, 6), -3.0, device=device, dtype=dtype)

    def rsample_backward() -> None:  # SAC's actor loss and critic target: batch 256
        loc, log_scale = params(256, grad=True)
        TruncatedNormal(loc, log_scale.exp()).rsample().sum().backward()

    def log_prob_and_entropy_backward() -> None:  # PPO's update: minibatch 64
        loc, log_scale = params(64, grad=True)
        log_prob, entropy = TruncatedNormal(loc, log_scale.exp()).log_prob_and_entropy(loc.detach() * 0.5)
        (log_prob.sum() + entropy.sum()).backward()

    def sample_and_log_prob() -> None:  # a rollout: one state
        loc, log_scale = params(1, grad=False)
        TruncatedNormal(loc, log_scale.exp(), validate_args=False).sample_and_log_prob()

    return {
        "ndtri_exp, deep tail (256 x 6)": lambda: ndtri_exp(deep),
        "ndtri_exp, no deep tail (256 x 6)": lambda: ndtri_exp(shallow),
        "rsample + backward (256 x 6)": rsample_backward,
        "log_prob_and_entropy + backward (64 x 6)": log_prob_and_entropy_backward,
        "sample_and_log_prob, no grad (1 x 6)": sample_and_log_prob,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    add_formulas_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/truncated_normal_ops.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    use_formulas(args.formulas)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    counts = {name: sum(e.count for e in aten_events(run)) for name, run in _cases(device, dtype).items()}
    print(f"| aten ops per call ({args.device}, {args.dtype}, formulas: {args.formulas}) | count |")
    print("| --- | --- |")
    for name, count in counts.items():
        print(f"| {name} | {count} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"device": args.device, "dtype": args.dtype, "formulas": args.formulas, "aten_ops": counts}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
