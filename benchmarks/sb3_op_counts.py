"""Where the time of an ERA update goes: per-op counts and CPU time from ``torch.profiler``, ERA against SB3.

Profiles ``model.train()`` of SAC (``ent_coef="auto"``, ``ent_coef=0``) and SAC-ERA (truncated, tanh) on one
shared replay buffer, and one PPO rollout (``collect_rollouts``) of PPO and PPO-ERA with the update on it, and
prints, per model, the number of aten ops per gradient step (per env step of the rollout, per minibatch of the
PPO update) and their self CPU time, with the top ops. Op counts do
not depend on the load of the machine, which makes them the stable half of ``sb3_throughput.py``'s story::

    python benchmarks/sb3_op_counts.py --env HalfCheetah-v5 --gradient-steps 20 --ppo-steps 256

``--formulas torch`` counts the truncated normal's torch formulas, which accelerators run, on the CPU (where
NumPy and SciPy run them otherwise; see ``truncated_normal_ops.py`` for the one branch that still differs).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch as th
from sb3_throughput import _fill_replay_buffer
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import Logger
from truncated_normal_ops import add_formulas_argument, aten_events, use_formulas

from sb3_era import ERAPPO, ERASAC


def _profile(run: Callable[[], None], units: int, top: int) -> dict:
    events = aten_events(run)
    calls = sum(e.count for e in events)
    # Self times only, so that nested ops are not counted twice.
    self_us = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.count, reverse=True)[:top]
    return {
        "aten_ops_per_unit": calls / units,
        "aten_self_cpu_ms_per_unit": self_us / 1000 / units,
        "top_ops_per_unit": {e.key: e.count / units for e in ranked},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--gradient-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--ppo-steps", type=int, default=256)
    parser.add_argument("--top", type=int, default=8)
    add_formulas_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sb3_op_counts.json"))
    args = parser.parse_args()
    th.set_num_threads(1)
    use_formulas(args.formulas)

    common = dict(learning_starts=0, buffer_size=2000, batch_size=args.batch_size, seed=0)
    off_policy = {
        "SAC (ent_coef=auto)": SAC("MlpPolicy", args.env, ent_coef="auto", **common),
        "SAC (ent_coef=0)": SAC("MlpPolicy", args.env, ent_coef=0.0, **common),
        "SAC-ERA (truncated)": ERASAC("MlpPolicy", args.env, action_distribution="truncated", **common),
        "SAC-ERA (tanh)": ERASAC("MlpPolicy", args.env, action_distribution="tanh", **common),
    }
    buffer = _fill_replay_buffer(args.env, 2000, "cpu", 0)
    results = {}
    for name, model in off_policy.items():
        model.replay_buffer = buffer
        model.set_logger(Logger(folder=None, output_formats=[]))
        results[name] = _profile(
            lambda model=model: model.train(args.gradient_steps, args.batch_size),
            args.gradient_steps,
            args.top,
        )
    on_policy = {
        "PPO": PPO("MlpPolicy", args.env, n_steps=args.ppo_steps, seed=0),
        "PPO-ERA (truncated)": ERAPPO("MlpPolicy", args.env, n_steps=args.ppo_steps, seed=0),
        "PPO-ERA (tanh)": ERAPPO(
            "MlpPolicy", args.env, n_steps=args.ppo_steps, action_distribution="tanh", seed=0
        ),
    }
    for name, model in on_policy.items():
        model.set_logger(Logger(folder=None, output_formats=[]))
        _, callback = model._setup_learn(args.ppo_steps * 4, CallbackList([]))

        def rollout(model=model, callback=callback) -> None:
            model.collect_rollouts(model.env, callback, model.rollout_buffer, args.ppo_steps)

        results[name] = _profile(rollout, args.ppo_steps, args.top)
        # The update on that rollout (run and profiled twice, like the rollout): per minibatch gradient step.
        minibatches = model.n_epochs * -(-args.ppo_steps // model.batch_size)
        results[f"{name} update"] = _profile(model.train, minibatches, args.top)

    print(
        f"{args.env}: aten ops and their self CPU time per gradient step (SAC), per rollout env step (PPO) or"
        " per minibatch of the update (PPO update)"
    )
    for name, row in results.items():
        print(f"{name:<29} {row['aten_ops_per_unit']:8.1f} ops {row['aten_self_cpu_ms_per_unit']:8.3f} ms")
        print(
            "    "
            + ", ".join(f"{op.removeprefix('aten::')} {n:.1f}" for op, n in row["top_ops_per_unit"].items())
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
