"""PPO-ERA's distribution step in one update minibatch: the package's paths, torch.compile, and SB3's Gaussian.

PPO-ERA's update pays, per minibatch, for the ERA activation of the state-independent log-std, the ``tanh``
location and the truncated normal's log-probability and entropy, where PPO's ``DiagGaussianDistribution``
takes a handful of native ops. This script times that step, forward and backward, on a minibatch (64 states x
6 action dimensions, HalfCheetah's) four ways, interleaved in one process: (a) SB3's Gaussian (the baseline),
(b) the package's fused training pass (one autograd node from the mean and the pre-activation,
:mod:`sb3_era.fused_log_prob`), (c) the package's op-by-op path (``fuse_training_pass = False``), (d) the same
``era_core`` formulas on torch under ``torch.compile`` (inductor's C++ backend; needs a C++ compiler), for the
minibatch's shape or, with ``--dynamic``, for every batch size at once; its one-off compile time is reported
apart. Process CPU time, medians of the repeats. Prints a table, writes JSON::

    python benchmarks/ppo_distribution_compile.py --repeats 9
    python benchmarks/ppo_distribution_compile.py --repeats 9 --dynamic --out benchmarks/results/ppo_distribution_compile-dynamic.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from stable_baselines3.common.distributions import DiagGaussianDistribution

from era_core import GaussianERA, gaussian_era_log_std
from era_core.truncated_normal import _log_prob_and_entropy_in_interval, _TorchOps
from sb3_era.distributions import TruncatedNormalDistribution
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
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dynamic", action="store_true", help="compile for every batch size at once")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ppo_distribution_compile.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    shape = (args.batch, args.action_dim)
    log_std = torch.zeros(args.action_dim, requires_grad=True)
    mean = torch.randn(shape, requires_grad=True)
    actions = torch.rand(shape) * 2.0 - 1.0
    era = GaussianERA(args.action_dim)
    floor = float(era.entropy_floor())

    gaussian = DiagGaussianDistribution(args.action_dim)
    truncated = TruncatedNormalDistribution(args.action_dim)
    op_by_op = TruncatedNormalDistribution(args.action_dim)
    op_by_op.fuse_training_pass = False

    def sb3_gaussian() -> None:
        dist = gaussian.proba_distribution(mean, log_std)
        (dist.log_prob(actions).mean() + dist.entropy().mean()).backward()

    def package_fused() -> None:
        dist = truncated.proba_distribution(mean, log_std, log_std_era=era)
        (dist.log_prob(actions).mean() + dist.entropy().mean()).backward()

    def package_eager() -> None:
        dist = op_by_op.proba_distribution(mean, log_std, log_std_era=era)
        (dist.log_prob(actions).mean() + dist.entropy().mean()).backward()

    def torch_formulas(log_std: torch.Tensor, mean: torch.Tensor, actions: torch.Tensor):
        edge = 1.0 - torch.finfo(mean.dtype).eps
        loc = torch.tanh(mean).clamp(-edge, edge)
        scale = gaussian_era_log_std(log_std, floor).exp().expand_as(loc)
        log_prob, entropy, _ = _log_prob_and_entropy_in_interval(_TorchOps, loc, scale, actions, 0.0, 1.0)
        return log_prob.sum(-1), entropy.sum(-1)

    reference = op_by_op.proba_distribution(mean, log_std, log_std_era=era)
    reference_log_prob, reference_entropy = reference.log_prob(actions), reference.entropy()
    compiled_name = "PPO-ERA compiled" + (", dynamic shapes" if args.dynamic else "")
    start = time.process_time()
    formulas = torch.compile(torch_formulas, dynamic=args.dynamic)
    log_prob, entropy = formulas(log_std, mean, actions)
    (log_prob.mean() + entropy.mean()).backward()
    compile_s = time.process_time() - start
    max_abs_diff = max(
        (log_prob - reference_log_prob).abs().max().item(),
        (entropy - reference_entropy).abs().max().item(),
    )

    def compiled() -> None:
        log_prob, entropy = formulas(log_std, mean, actions)
        (log_prob.mean() + entropy.mean()).backward()

    steps = {
        "SB3 Gaussian": sb3_gaussian,
        "PPO-ERA fused": package_fused,
        "PPO-ERA eager": package_eager,
        compiled_name: compiled,
    }
    for step in steps.values():  # warm-up
        _time_us(step, args.iters // 5)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(args.repeats):
        names = list(steps)
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_time_us(steps[name], args.iters))
    median = {name: statistics.median(values) for name, values in times.items()}
    baseline = median["SB3 Gaussian"]

    print(
        f"{args.batch} x {args.action_dim}, forward + backward, {args.repeats} interleaved repeats, CPU time"
    )
    print(f"{'step':<34} {'median us':>10} {'vs SB3':>8} {'extra us':>9}  repeats")
    for name, value_us in median.items():
        spread = f"{min(times[name]):.0f}-{max(times[name]):.0f}"
        print(f"{name:<34} {value_us:10.1f} {value_us / baseline:8.2f} {value_us - baseline:+9.1f}  {spread}")
    print(
        f"{compiled_name}: first call {compile_s:.1f} s CPU; max |difference| from eager {max_abs_diff:.2e}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "config": {key: str(value) for key, value in vars(args).items()},
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "versions": package_versions(("era-rl", "torch", "numpy", "scipy", "stable-baselines3")),
        "median_us": median,
        "repeats_us": times,
        "compile_s": compile_s,
        "max_abs_difference_compiled_vs_eager": max_abs_diff,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
