"""Training throughput of the sb3_era algorithms against their SB3 hosts, measured in one run.

Off-policy: gradient steps per second of ``model.train()`` on one fixed replay buffer (random transitions of
the environment) shared by every model: SAC as an SB3 user runs it (``ent_coef="auto"``), SAC with
``ent_coef=0`` (no temperature update, like SAC-ERA), SAC-ERA with the truncated normal and with the tanh
squashing. On-policy: environment steps per second of ``model.learn()`` (rollout, update and logging, ERA's
entropy measurement included) for PPO and PPO-ERA, and (``on-policy-parts``) its two parts timed apart: the
rollout (``collect_rollouts``, env steps per second) and the update on it (``train()``, the rollout's env steps
per second of update). Whole ``learn()`` of SAC: env steps per second of SAC
and SAC-ERA (truncated) with SB3's defaults (one gradient step per env step) on ``--learn-env`` (Hopper-v5),
rollout and updates together. Same environment, network and seed for all; the models are timed interleaved
(the order rotates each repeat) and the medians of the repeats are compared: ratio = ERA throughput /
baseline throughput (goal: within 2%, i.e. ratio >= 0.98). Beside it, the median (and range) of the
per-repeat ratios, each pair timed within one rotation, which a slow drift of the machine's load does not
move, and the ratio of the best repeats: on shared cores other programs only ever slow a timing down, so the
fastest repeat of each model is the least disturbed one.

``--clock cpu`` (the default on a CPU) times the process's CPU time instead of the wall clock, so that other
programs sharing the machine's cores do not enter the measurement; on a GPU the wall clock is used.

    PYTHONPATH=. python benchmarks/sb3_throughput.py
    PYTHONPATH=. python benchmarks/sb3_throughput.py --env Hopper-v5 --repeats 9 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_era import ERAPPO, ERASAC
from sb3_era.versions import cpu_model, package_versions

OFF_POLICY_BASELINE = "SAC (ent_coef=auto)"
OFF_POLICY_CONTROL = "SAC (ent_coef=0)"
ON_POLICY_BASELINE = "PPO"
ROLLOUT_BASELINE = "PPO rollout"
UPDATE_BASELINE = "PPO update"
GOAL_RATIO = 0.98
LEARN_BASELINE = "SAC learn() (ent_coef=auto)"
GROUPS = ("off-policy", "on-policy", "on-policy-parts", "off-policy-learn")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
VERSIONED_PACKAGES = ("era-rl", "stable-baselines3", "torch", "gymnasium", "mujoco", "numpy")


def _fill_replay_buffer(env_id: str, size: int, device: str, seed: int) -> ReplayBuffer:
    """``size`` transitions of uniformly random actions, stored the way SB3 stores them (actions in [-1, 1])."""
    env = gym.make(env_id)
    buffer = ReplayBuffer(size, env.observation_space, env.action_space, device=device)
    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    obs, _ = env.reset(seed=seed)
    for _ in range(size):
        scaled_action = rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(
            low + 0.5 * (scaled_action + 1.0) * (high - low)
        )
        buffer.add(obs, next_obs, scaled_action, np.array([reward]), np.array([terminated]), [{}])
        obs = env.reset()[0] if terminated or truncated else next_obs
    env.close()
    return buffer


def _off_policy_models(args: argparse.Namespace) -> dict[str, OffPolicyAlgorithm]:
    common = dict(
        learning_starts=0,
        buffer_size=args.buffer_states,
        batch_size=args.batch_size,
        policy_kwargs=dict(net_arch=list(args.net_arch)),
        device=args.device,
        seed=args.seed,
    )
    models: dict[str, OffPolicyAlgorithm] = {
        OFF_POLICY_BASELINE: SAC("MlpPolicy", args.env, ent_coef="auto", **common),
        OFF_POLICY_CONTROL: SAC("MlpPolicy", args.env, ent_coef=0.0, **common),
        "SAC-ERA (truncated)": ERASAC("MlpPolicy", args.env, action_distribution="truncated", **common),
        "SAC-ERA (tanh)": ERASAC("MlpPolicy", args.env, action_distribution="tanh", **common),
    }
    shared = _fill_replay_buffer(args.env, args.buffer_states, args.device, args.seed)
    for model in models.values():
        model.replay_buffer = shared
        model.set_logger(Logger(folder=None, output_formats=[]))
    return models


def _on_policy_models(args: argparse.Namespace) -> dict[str, BaseAlgorithm]:
    common = dict(
        n_steps=args.ppo_steps,
        policy_kwargs=dict(net_arch=list(args.ppo_net_arch)),
        device=args.device,
        seed=args.seed,
    )
    models: dict[str, BaseAlgorithm] = {
        ON_POLICY_BASELINE: PPO("MlpPolicy", args.env, **common),
        "PPO-ERA (truncated)": ERAPPO("MlpPolicy", args.env, action_distribution="truncated", **common),
        "PPO-ERA (tanh)": ERAPPO("MlpPolicy", args.env, action_distribution="tanh", **common),
    }
    for model in models.values():
        model.set_logger(Logger(folder=None, output_formats=[]))
    return models


def _learn_models(args: argparse.Namespace) -> dict[str, OffPolicyAlgorithm]:
    common = dict(
        learning_starts=args.learn_starts,
        batch_size=args.batch_size,
        policy_kwargs=dict(net_arch=list(args.net_arch)),
        device=args.device,
        seed=args.seed,
    )
    models: dict[str, OffPolicyAlgorithm] = {
        LEARN_BASELINE: SAC("MlpPolicy", args.learn_env, ent_coef="auto", **common),
        "SAC-ERA learn() (truncated)": ERASAC(
            "MlpPolicy", args.learn_env, action_distribution="truncated", **common
        ),
    }
    for model in models.values():
        model.set_logger(Logger(folder=None, output_formats=[]))
    return models


def _gradient_steps_per_second(
    model: OffPolicyAlgorithm, gradient_steps: int, batch_size: int, clock: Callable[[], float]
) -> float:
    start = clock()
    model.train(gradient_steps=gradient_steps, batch_size=batch_size)
    return gradient_steps / (clock() - start)


def _env_steps_per_second(model: BaseAlgorithm, steps: int, clock: Callable[[], float]) -> float:
    start = clock()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    return steps / (clock() - start)


def _rollout_steps_per_second(
    model: BaseAlgorithm, callback: BaseCallback, steps: int, clock: Callable[[], float]
) -> float:
    start = clock()
    model.collect_rollouts(model.env, callback, model.rollout_buffer, steps)
    return steps / (clock() - start)


def _update_steps_per_second(model: BaseAlgorithm, steps: int, clock: Callable[[], float]) -> float:
    """The update on the model's last rollout (``steps`` env steps), in rollout env steps per second."""
    start = clock()
    model.train()
    return steps / (clock() - start)


def _interleaved(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    names = list(measures)
    for name in names:  # warm-up
        measures[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(measures[name]())
    return samples


def _rows(
    group: str, metric: str, samples: dict[str, list[float]], baseline: str, control: str | None
) -> list:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    # Per-repeat ratios: each pair is timed within one rotation, so a slow drift of the machine's load cancels.
    paired = {
        name: [value / reference for value, reference in zip(values, samples[baseline], strict=True)]
        for name, values in samples.items()
    }
    return [
        {
            "group": group,
            "model": name,
            "metric": metric,
            "median": medians[name],
            "samples": samples[name],
            "ratio_vs_baseline": medians[name] / medians[baseline],
            "paired_ratios_vs_baseline": paired[name],
            "paired_ratio_median": statistics.median(paired[name]),
            "best": max(samples[name]),
            "best_ratio_vs_baseline": max(samples[name]) / max(samples[baseline]),
            "ratio_vs_control": None if control is None else medians[name] / medians[control],
        }
        for name in samples
    ]


def auto_clock(device: str) -> str:
    """What ``--clock auto`` times on ``device``: the process's CPU time on a CPU, the wall clock elsewhere."""
    return "cpu" if device == "cpu" else "wall"


def build_parser() -> argparse.ArgumentParser:
    """The command line's options (``benchmarks/speed_goals.py`` reads their defaults)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--net-arch", type=int, nargs="+", default=[256, 256], help="SAC networks")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--gradient-steps", type=int, default=100, help="SAC gradient steps per timing")
    parser.add_argument("--buffer-states", type=int, default=10_000, help="size of the fixed replay buffer")
    parser.add_argument("--ppo-net-arch", type=int, nargs="+", default=[64, 64], help="PPO networks (SB3's)")
    parser.add_argument("--ppo-steps", type=int, default=2048, help="PPO rollout length = steps per timing")
    parser.add_argument("--learn-env", default="Hopper-v5", help="env of the whole-learn() comparison")
    parser.add_argument("--learn-steps", type=int, default=500, help="SAC learn() env steps per timing")
    parser.add_argument(
        "--learn-starts", type=int, default=1000, help="SAC learning_starts (the warm-up covers them)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        choices=("auto", *CLOCKS),
        default="auto",
        help="auto: CPU time on a CPU, wall clock on a GPU",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--groups", nargs="+", choices=GROUPS, default=list(GROUPS), help="which comparisons to run"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sb3_throughput.json"))
    return parser


def main() -> None:
    args = build_parser().parse_args()
    th.set_num_threads(args.threads)
    if args.clock == "auto":
        args.clock = auto_clock(args.device)
    clock = CLOCKS[args.clock]

    rows = []
    if "off-policy" in args.groups:
        off_policy = _off_policy_models(args)
        off_samples = _interleaved(
            {
                name: (
                    lambda model=model: _gradient_steps_per_second(
                        model, args.gradient_steps, args.batch_size, clock
                    )
                )
                for name, model in off_policy.items()
            },
            args.repeats,
        )
        rows += _rows("off-policy", "gradient steps/s", off_samples, OFF_POLICY_BASELINE, OFF_POLICY_CONTROL)
    if "on-policy" in args.groups:
        on_policy = _on_policy_models(args)
        on_samples = _interleaved(
            {
                name: (lambda model=model: _env_steps_per_second(model, args.ppo_steps, clock))
                for name, model in on_policy.items()
            },
            args.repeats,
        )
        rows += _rows("on-policy", "env steps/s", on_samples, ON_POLICY_BASELINE, None)
    if "on-policy-parts" in args.groups:
        parts = {}
        for name, model in _on_policy_models(args).items():
            _, callback = model._setup_learn(args.ppo_steps * (args.repeats + 1), CallbackList([]))
            parts[f"{name} rollout"] = lambda model=model, callback=callback: _rollout_steps_per_second(
                model, callback, args.ppo_steps, clock
            )
            parts[f"{name} update"] = lambda model=model: _update_steps_per_second(
                model, args.ppo_steps, clock
            )
        # The rotation times each model's rollout right before its update (the warm-up fills every buffer).
        part_samples = _interleaved(parts, args.repeats)
        for part, baseline in (("rollout", ROLLOUT_BASELINE), ("update", UPDATE_BASELINE)):
            samples = {name: values for name, values in part_samples.items() if name.endswith(part)}
            rows += _rows(f"on-policy {part}", "env steps/s", samples, baseline, None)
    if "off-policy-learn" in args.groups:
        learners = _learn_models(args)
        # The first call (the warm-up) also fills the buffer past learning_starts.
        learn_samples = _interleaved(
            {
                name: (
                    lambda model=model: _env_steps_per_second(
                        model, args.learn_steps if model.num_timesteps else args.learn_starts, clock
                    )
                )
                for name, model in learners.items()
            },
            args.repeats,
        )
        rows += _rows("off-policy-learn", "env steps/s", learn_samples, LEARN_BASELINE, None)

    header = (
        f"{'model':<28} {'metric':<17} {'median':>9} {'vs baseline':>12} {'paired (min-max)':>20} "
        f"{'best vs best':>13} {'vs ent_coef=0':>14} {'within 2%':>10}"
    )
    print(
        f"{args.env} (learn(): {args.learn_env}), {args.repeats} interleaved repeats, {args.threads} thread(s), "
        f"device {args.device}, {args.clock} clock"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        control = "" if row["ratio_vs_control"] is None else f"{row['ratio_vs_control']:.3f}"
        within = str(row["ratio_vs_baseline"] >= GOAL_RATIO) if "ERA" in row["model"] else ""
        pairs = row["paired_ratios_vs_baseline"]
        paired = f"{row['paired_ratio_median']:.3f} ({min(pairs):.2f}-{max(pairs):.2f})"
        print(
            f"{row['model']:<28} {row['metric']:<17} {row['median']:>9.1f} {row['ratio_vs_baseline']:>12.3f} "
            f"{paired:>20} {row['best_ratio_vs_baseline']:>13.3f} {control:>14} {within:>10}"
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "config": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "baselines": {
            "off-policy": OFF_POLICY_BASELINE,
            "on-policy": ON_POLICY_BASELINE,
            "on-policy rollout": ROLLOUT_BASELINE,
            "on-policy update": UPDATE_BASELINE,
            "off-policy-learn": LEARN_BASELINE,
        },
        "control": {"off-policy": OFF_POLICY_CONTROL},
        "goal_ratio": GOAL_RATIO,
        "results": rows,
        "versions": package_versions(VERSIONED_PACKAGES),
        "machine": {
            "processor": cpu_model(),
            "torch_threads": th.get_num_threads(),
        },
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
