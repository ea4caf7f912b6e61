"""What the truncated normal's NumPy formula costs between torch operations, against run alone.

On the CPU the truncated normal's training-step node (``_LogProbAndEntropy``) runs its formula in float64 on
NumPy arrays, some forty small calls. In PPO's update it sits between torch operations (the policy network
before it, the loss and the backward after it). This script times, interleaved in one process: (a) the NumPy
formula of ``log_prob_and_entropy`` on a PPO minibatch (64 states x 6 action dimensions, HalfCheetah's) alone,
(b) the forward of an SB3-sized policy network (two hidden layers of 64, tanh) on the same states alone, and
(c) both in turn, as a training step runs them. The excess ``(c) - (a) - (b)`` is what alternating between the
two libraries costs (each one's code and data displaced from the caches by the other's), a cost that neither
part shows when it is measured alone; running either part twice in a row is the control. Process CPU time,
medians of the repeats. Prints a table, writes JSON::

    python benchmarks/numpy_interleave.py --repeats 9
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from era_core.truncated_normal import _log_prob_and_entropy_in_interval, _scipy_ops
from sb3_era.versions import package_versions


def _time_us(step: Callable[[], object], iters: int) -> float:
    start = time.process_time()
    for _ in range(iters):
        step()
    return (time.process_time() - start) / iters * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--action-dim", type=int, default=6)
    parser.add_argument("--obs-dim", type=int, default=17)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/numpy_interleave.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    ops = _scipy_ops()
    if ops is None:
        raise SystemExit("needs SciPy: the NumPy path runs only where SciPy is installed")

    rng = np.random.default_rng(0)
    shape = (args.batch, args.action_dim)
    loc = np.tanh(rng.normal(size=shape))
    scale = np.full(shape, np.exp(-1.9))  # PPO-ERA's default floor: -0.5 nats per dimension
    value = np.clip(loc + scale * rng.normal(size=shape), -1.0, 1.0)
    policy = nn.Sequential(
        nn.Linear(args.obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, args.action_dim)
    )
    obs = torch.randn(args.batch, args.obs_dim)

    def numpy_formula() -> object:
        return _log_prob_and_entropy_in_interval(ops, loc, scale, value, 0.0, 1.0)

    @torch.no_grad()
    def torch_network() -> object:
        return policy(obs)

    def both() -> object:
        torch_network()
        return numpy_formula()

    def formula_twice() -> object:
        numpy_formula()
        return numpy_formula()

    def network_twice() -> object:
        torch_network()
        return torch_network()

    steps = {
        "numpy formula alone": numpy_formula,
        "torch network alone": torch_network,
        "both in turn": both,
        "formula twice": formula_twice,
        "network twice": network_twice,
    }
    for step in steps.values():  # warm-up
        _time_us(step, args.iters // 5)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(_time_us(step, args.iters))
    median = {name: statistics.median(values) for name, values in times.items()}
    alone = median["numpy formula alone"], median["torch network alone"]
    excess = {
        "alternating (both in turn - formula - network)": median["both in turn"] - alone[0] - alone[1],
        "control: formula twice - 2 x formula": median["formula twice"] - 2 * alone[0],
        "control: network twice - 2 x network": median["network twice"] - 2 * alone[1],
    }

    print(f"{args.batch} x {args.action_dim}, {args.repeats} interleaved repeats of {args.iters}, CPU time")
    for name, value_us in median.items():
        print(f"{name:<56} {value_us:8.1f} us  (repeats {min(times[name]):.1f}-{max(times[name]):.1f})")
    for name, value_us in excess.items():
        print(f"{'excess: ' + name:<56} {value_us:+8.1f} us  ({value_us / alone[0]:+.0%} of the formula)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "config": {key: str(value) for key, value in vars(args).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "versions": package_versions(("era-rl", "torch", "numpy", "scipy")),
        "median_us": median,
        "repeats_us": times,
        "excess_us": excess,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
