"""CI's learning check: SAC-ERA and PPO-ERA must learn Pendulum-v1 in a CI-sized budget; its thresholds, measured.

``tests/sb3/test_learning.py`` trains each algorithm once, with :data:`TEST_SEED` and exactly the settings of
:func:`train`, and requires its deterministic policy's mean return on the fixed evaluation episodes
(:data:`EVAL_EPISODE_SEEDS`) to beat :data:`THRESHOLDS`. This script trains the same settings over several
seeds and prints and writes the distribution of those returns, next to two policies that learnt nothing on
the same episodes: uniformly random actions, and the freshly initialised policy of each seed, which is what
training with cut gradients (or a learning rate of zero) leaves. A threshold is sound when the measured
seeds beat it with room to spare and neither of those does; the share of seeds below it estimates how often
the check would fail on a platform whose floating point changes the trajectory. ``--summarise-only``
re-reads the JSON and re-scores it against the current thresholds::

    PYTHONPATH=. python benchmarks/pendulum_learning_check.py --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 4
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env

from sb3_era import ERAPPO, ERASAC

ENV_ID = "Pendulum-v1"
# The evaluation episodes: reset seeds outside any training seed's range, the same for every policy.
EVAL_EPISODE_SEEDS = tuple(range(10_000, 10_005))
ALGORITHMS = ("sac_era", "ppo_era")
TEST_SEED = 0
# Deterministic-policy mean return that a trained policy must beat, about half-way between the worst seed
# that learnt and the best policy that did not (seeds 0-9 measured by this script, README "Learning check"):
# SAC-ERA: every seed reaches -209 or better, untrained policies -1047 or worse, random actions -1100.
# PPO-ERA: 9 of 10 seeds reach -831 or better (seed 7 did not learn within the budget: -1164), untrained
# policies -1023 or worse. The test's seed 0 clears them by far (-125 and -306).
THRESHOLDS = {"sac_era": -600.0, "ppo_era": -925.0}
# rl-zoo3's tuned Pendulum settings (hyperparams/sac_era.yml, ppo_era.yml) with 64x64 networks and CI-sized
# budgets; PPO-ERA with shorter rollouts, full-rollout minibatches and a larger learning rate, which learn
# within the budget (rl-zoo3's settings need about 1e5 steps without gSDE, which ERA policies refuse).
SAC_STEPS = 4000
PPO_STEPS = 49152

Policy = Callable[[np.ndarray], np.ndarray]


def make_model(algorithm: str, seed: int) -> BaseAlgorithm:
    """The check's model, untrained: exactly the settings that :func:`train` trains."""
    net_arch = [64, 64]
    if algorithm == "sac_era":
        return ERASAC(
            "MlpPolicy",
            ENV_ID,
            learning_rate=1e-3,
            learning_starts=200,
            policy_kwargs=dict(net_arch=net_arch),
            seed=seed,
            device="cpu",
        )
    if algorithm == "ppo_era":
        return ERAPPO(
            "MlpPolicy",
            make_vec_env(ENV_ID, n_envs=4, seed=seed),
            n_steps=256,
            batch_size=256,
            gae_lambda=0.95,
            gamma=0.9,
            n_epochs=10,
            learning_rate=3e-3,
            clip_range=0.2,
            policy_kwargs=dict(net_arch=net_arch),
            seed=seed,
            device="cpu",
        )
    raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def train(algorithm: str, seed: int) -> BaseAlgorithm:
    """Train the check's model for its budget (:data:`SAC_STEPS` or :data:`PPO_STEPS` environment steps)."""
    model = make_model(algorithm, seed)
    model.learn(SAC_STEPS if algorithm == "sac_era" else PPO_STEPS)
    return model


def deterministic_policy(model: BaseAlgorithm) -> Policy:
    return lambda obs: model.predict(obs, deterministic=True)[0]


def random_policy(seed: int = 0) -> Policy:
    """Uniformly random actions in Pendulum's action box."""
    space = gym.make(ENV_ID).action_space
    space.seed(seed)
    return lambda obs: space.sample()


def mean_return(policy: Policy, episode_seeds: tuple[int, ...] = EVAL_EPISODE_SEEDS) -> float:
    """Mean undiscounted return of ``policy`` over the episodes that start from ``reset(seed=s)``."""
    env = gym.make(ENV_ID)
    returns = []
    for episode_seed in episode_seeds:
        obs, _ = env.reset(seed=episode_seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def measure(algorithm: str, seed: int) -> dict[str, float | int | str]:
    """The trained and the untrained policy's mean returns for one seed, and the training's CPU seconds."""
    th.set_num_threads(1)
    untrained = mean_return(deterministic_policy(make_model(algorithm, seed)))
    start = time.process_time()
    model = train(algorithm, seed)
    cpu_seconds = time.process_time() - start
    row = {
        "algorithm": algorithm,
        "seed": seed,
        "trained_return": mean_return(deterministic_policy(model)),
        "untrained_return": untrained,
        "train_cpu_seconds": cpu_seconds,
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--jobs", type=int, default=1, help="trainings run in parallel processes (default 1)")
    parser.add_argument(
        "--summarise-only",
        action="store_true",
        help="re-summarise --out's runs against the current thresholds",
    )
    parser.add_argument("--out", default="benchmarks/results/pendulum_learning_check.json")
    args = parser.parse_args(argv)
    th.set_num_threads(1)

    if args.summarise_only:
        results = json.loads(Path(args.out).read_text())
        measured = [row for summary in results["algorithms"].values() for row in summary["runs"]]
    else:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            measured = pool.starmap(measure, [(a, seed) for a in args.algorithms for seed in args.seeds])
        results = {
            "env": ENV_ID,
            "eval_episode_seeds": list(EVAL_EPISODE_SEEDS),
            "random_return": mean_return(random_policy()),
            "test_seed": TEST_SEED,
            "budgets": {"sac_era": SAC_STEPS, "ppo_era": PPO_STEPS},
            "torch": th.__version__,
            "machine": platform.machine(),
        }
    results["algorithms"] = {}
    random_return = results["random_return"]
    print(f"random policy on the same episodes: {random_return:.0f}")
    print("| algorithm | seed | trained | untrained | threshold | train CPU s |")
    print("|---|---|---|---|---|---|")
    for algorithm in dict.fromkeys(row["algorithm"] for row in measured):
        rows = [row for row in measured if row["algorithm"] == algorithm]
        for row in rows:
            print(
                f"| {algorithm} | {row['seed']} | {row['trained_return']:.0f} | {row['untrained_return']:.0f} "
                f"| {THRESHOLDS[algorithm]:.0f} | {row['train_cpu_seconds']:.1f} |",
                flush=True,
            )
        trained = [row["trained_return"] for row in rows]
        results["algorithms"][algorithm] = {
            "threshold": THRESHOLDS[algorithm],
            "runs": rows,
            "trained_min": min(trained),
            "trained_median": statistics.median(trained),
            "trained_max": max(trained),
            "seeds_above_threshold": sum(value > THRESHOLDS[algorithm] for value in trained),
            "untrained_max": max(row["untrained_return"] for row in rows),
        }
    print(
        json.dumps(
            {name: {k: v for k, v in s.items() if k != "runs"} for name, s in results["algorithms"].items()}
        )
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
