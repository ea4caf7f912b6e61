"""SAC-ERA's action sampling timed inside ``train()``: the truncated normal against the tanh Gaussian, and the
truncated normal's formulas inside ``train()`` against the same calls timed alone.

Each SAC-ERA gradient step samples its actor twice: the critic target's next actions (no gradient) and the
actor loss's reparameterised actions (with gradient; its backward runs later, inside the loss's, and is not
counted here). This script times both ``action_log_prob`` calls (the actor's network included) in ``train()`` on
a fixed replay buffer of random transitions, for SAC-ERA with the truncated normal and with SB3's tanh Gaussian.
For the truncated normal it also times the NumPy formulas that make each sample
(``_sample_in_interval`` without gradient, called by :meth:`sb3_era.TruncatedNormalDistribution.sample` through
``_sample_arrays_in_interval``, and
``_reparameterized_sample_in_interval`` with the derivatives, inside
:class:`sb3_era.fused_log_prob.TanhTruncatedSample`) in ``train()``, then again and again on the arrays of their last call, where their code and data
stay in the caches: the difference is what the network's work in between costs them. Process CPU time, one
thread, medians over the calls. Prints a table, writes JSON::

    PYTHONPATH=. python benchmarks/sac_sampling_in_context.py --gradient-steps 500
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
from stable_baselines3.common.logger import Logger

from benchmarks.sb3_throughput import _fill_replay_buffer
from era_core import truncated_normal
from sb3_era import ERASAC, fused_log_prob
from sb3_era.off_policy import ERAActorMixin
from sb3_era.versions import cpu_model, package_versions

FORMULAS = ("_sample_in_interval", "_reparameterized_sample_in_interval")
# Each formula is timed where it is looked up when called: era_core's own module, the fused node's.
HOOKS = ((truncated_normal, FORMULAS[0]), (fused_log_prob, FORMULAS[1]))
DISTRIBUTIONS = ("tanh", "truncated")


def _timed(
    function: Callable, key: Callable[..., str], times: dict[str, list[float]], last_call: dict
) -> Callable:
    """``function``, timing each call into ``times[key(*args)]`` and keeping its arguments in ``last_call``."""

    def run(*args):
        start = time.process_time()
        result = function(*args)
        name = key(*args)
        times.setdefault(name, []).append(time.process_time() - start)
        last_call[name] = args
        return result

    return run


def _median_us(samples: list[float]) -> float:
    return 1e6 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--gradient-steps", type=int, default=500)
    parser.add_argument("--buffer-states", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sac_sampling_in_context.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    buffer = _fill_replay_buffer(args.env, args.buffer_states, "cpu", args.seed)
    step_ms: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    last_call: dict[str, tuple] = {}

    def sampling_key(distribution: str) -> Callable[..., str]:
        return lambda *_: (
            f"{distribution}: action_log_prob, {'with' if torch.is_grad_enabled() else 'no'} gradient"
        )

    for distribution in DISTRIBUTIONS:
        model = ERASAC(
            "MlpPolicy",
            args.env,
            action_distribution=distribution,
            learning_starts=0,
            buffer_size=args.buffer_states,
            seed=args.seed,
        )
        model.replay_buffer = buffer
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.train(gradient_steps=20, batch_size=model.batch_size)  # past the first calls' one-off costs
        patches = dict(
            action_log_prob=_timed(
                ERAActorMixin.action_log_prob, sampling_key(distribution), times, last_call
            )
        )
        formulas = {
            name: _timed(getattr(truncated_normal, name), lambda *_, name=name: name, times, last_call)
            for name in FORMULAS
        }
        with (
            mock.patch.multiple(ERAActorMixin, **patches),
            mock.patch.object(*HOOKS[0], formulas[FORMULAS[0]]),
            mock.patch.object(*HOOKS[1], formulas[FORMULAS[1]]),
        ):
            start = time.process_time()
            model.train(gradient_steps=args.gradient_steps, batch_size=model.batch_size)
            step_ms[distribution] = 1e3 * (time.process_time() - start) / args.gradient_steps

    alone: dict[str, list[float]] = {}
    for name in FORMULAS:
        formula, call_args = getattr(truncated_normal, name), last_call[name]
        for _ in range(len(times[name])):
            start = time.process_time()
            formula(*call_args)
            alone.setdefault(name, []).append(time.process_time() - start)

    rows = [
        dict(
            call=name,
            calls=len(samples),
            in_train_us=_median_us(samples),
            alone_us=_median_us(alone[name]) if name in alone else None,
        )
        for name, samples in times.items()
    ]
    print(
        f"SAC-ERA on {args.env}, batch 256, process CPU time, 1 thread; ms per gradient step: "
        + ", ".join(f"{distribution} {ms:.2f}" for distribution, ms in step_ms.items())
    )
    print(f"{'call':48s} {'calls':>6s} {'in train() [us]':>16s} {'alone [us]':>11s}")
    for row in rows:
        alone_text = "" if row["alone_us"] is None else f"{row['alone_us']:11.1f}"
        print(f"{row['call']:48s} {row['calls']:6d} {row['in_train_us']:16.1f} {alone_text}")
    per_step = {
        distribution: sum(row["in_train_us"] for row in rows if row["call"].startswith(f"{distribution}:"))
        for distribution in DISTRIBUTIONS
    }
    extra = per_step["truncated"] - per_step["tanh"]
    print(
        f"both action_log_prob calls per step: truncated {per_step['truncated']:.0f} us, tanh {per_step['tanh']:.0f} us; "
        f"the difference is {100 * extra / (1e3 * step_ms['truncated']):.1f}% of a truncated gradient step"
    )

    record = dict(
        config={key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        machine=dict(processor=cpu_model(), torch_threads=1),
        versions=package_versions(("era-rl", "stable-baselines3", "torch", "numpy", "scipy")),
        ms_per_gradient_step=step_ms,
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
