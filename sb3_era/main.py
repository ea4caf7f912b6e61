"""
The main job: train SAC-ERA on a MuJoCo v5 task, evaluate it, and write results (JSON) and a learning curve.

::

    python -m sb3_era.main                                    # SAC-ERA, Hopper-v5, 15k steps, seed 0
    python -m sb3_era.main --baseline --seeds 0 1 2           # plus plain SAC (ent_coef="auto") beside it
    python -m sb3_era.main --preset authors --timesteps 1000000 --env HalfCheetah-v5   # their critic too

Each run trains with a progress bar and evaluates the deterministic policy every ``--eval-freq`` steps
(SB3's ``EvalCallback``); with ``--no-progress-bar`` (plain logs, e.g. CI) it prints one line per evaluation
instead (steps, mean return, entropies, steps/s). The output folder gets ``results.json`` (returns, entropies measured on the
trained policy, configuration, versions, wall time), ``learning_curve.png`` and, per run, the model, SB3's
``progress.csv`` (with the ``era/*`` entropy keys) and ``evaluations.npz``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv

from sb3_era import ERASAC, CriticOptionsSACPolicy, authors_critic_kwargs, policy_entropy_stats
from sb3_era.plotting import plot_learning_curves
from sb3_era.policies import ACTION_DISTRIBUTIONS
from sb3_era.versions import package_versions

__all__ = ["PRESETS", "SACSettings", "build_parser", "main", "run"]


@dataclasses.dataclass(frozen=True)
class SACSettings:
    """Off-policy settings shared by SAC-ERA and the baseline SAC (see ``hyperparams/sac_era.yml``).

    ``authors_critic``: the ERA authors' critic (LayerNorm + ELU hidden layers, AdamW with weight decay 1e-4,
    :func:`sb3_era.authors_critic_kwargs`) for both; otherwise SB3's critic (ReLU, Adam).
    """

    net_arch: tuple[int, ...]
    batch_size: int
    gamma: float
    tau: float
    learning_rate: float
    train_freq: int
    gradient_steps: int
    learning_starts: int
    buffer_size: int
    authors_critic: bool


AUTHORS_SETTINGS = SACSettings(
    net_arch=(512, 512),
    batch_size=256,
    gamma=0.99,
    tau=0.005,
    learning_rate=3e-4,
    train_freq=1,
    gradient_steps=2,
    learning_starts=5000,
    buffer_size=1_000_000,
    authors_critic=True,
)
PRESETS = {
    # The ERA authors' SAC settings and critic (spec 1.2).
    "authors": AUTHORS_SETTINGS,
    # A short run on a laptop CPU: half-width networks with SB3's critic, one gradient step per env step
    # and 1000 random steps, about four times faster per step than "authors".
    "quick": dataclasses.replace(
        AUTHORS_SETTINGS, net_arch=(256, 256), gradient_steps=1, learning_starts=1000, authors_critic=False
    ),
}

ERA_LABEL = "SAC-ERA"
BASELINE_LABEL = "SAC"
DEFAULT_ENV = "Hopper-v5"
DEFAULT_TIMESTEPS = 15_000
DEFAULT_TARGET_ENTROPY_PER_DIM = -0.5
# Learning-curve points when --eval-freq is not given.
DEFAULT_EVAL_POINTS = 10
DEFAULT_EVAL_EPISODES = 5
# Recent replay-buffer states on which the trained policy's entropies are measured.
ENTROPY_STATES = 10_000
# Evaluation environments get seeds disjoint from the training ones.
EVAL_SEED_OFFSET = 10_000
DM_CONTROL_PREFIX = "dm_control/"
VERSIONED_PACKAGES = ("era-rl", "stable-baselines3", "sb3-contrib", "gymnasium", "mujoco", "torch", "numpy")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``sb3-era-main`` / ``python -m sb3_era.main``."""
    parser = argparse.ArgumentParser(
        prog="sb3-era-main",
        description="Train SAC-ERA (and optionally plain SAC beside it), evaluate, write results.json and "
        "learning_curve.png.",
    )
    parser.add_argument(
        "--env", default=DEFAULT_ENV, help=f"Gymnasium environment id (default {DEFAULT_ENV})"
    )
    parser.add_argument(
        "--timesteps", type=_positive_int, default=DEFAULT_TIMESTEPS, help="environment steps per run"
    )
    parser.add_argument("--seeds", type=_non_negative_int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also train plain SAC (ent_coef='auto'), same seeds and budget",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="quick",
        help="SAC settings: 'authors' (2x512 nets, their critic: LayerNorm + ELU, AdamW; 2 gradient steps per "
        "env step, 5000 random steps) or 'quick' (2x256, SB3's critic, 1 gradient step, 1000 random steps; "
        "the default)",
    )
    parser.add_argument(
        "--learning-starts",
        type=_non_negative_int,
        default=None,
        help="random steps first (default: the preset's)",
    )
    parser.add_argument(
        "--target-entropy-per-dim",
        type=float,
        default=DEFAULT_TARGET_ENTROPY_PER_DIM,
        help=f"ERA target entropy per action dimension, nats (default {DEFAULT_TARGET_ENTROPY_PER_DIM})",
    )
    parser.add_argument(
        "--action-distribution",
        choices=ACTION_DISTRIBUTIONS,
        default="truncated",
        help="SAC-ERA's bounded policy",
    )
    parser.add_argument(
        "--eval-freq",
        type=_positive_int,
        default=None,
        help=f"evaluate every N environment steps (default: timesteps / {DEFAULT_EVAL_POINTS})",
    )
    parser.add_argument(
        "--eval-episodes", type=_positive_int, default=DEFAULT_EVAL_EPISODES, help="episodes per evaluation"
    )
    parser.add_argument("--device", default="auto", help="PyTorch device: auto, cpu, cuda, ...")
    parser.add_argument(
        "--num-threads",
        type=_positive_int,
        default=None,
        help="PyTorch CPU threads (default: PyTorch's choice; 1 is often faster on a busy or small machine)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="results folder (default: runs/main/<env>-<date-time>)"
    )
    parser.add_argument(
        "--no-progress-bar",
        action="store_true",
        help="plain logs (CI): no progress bar, one line per evaluation (steps, return, entropy, steps/s)",
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    learning_starts = (
        PRESETS[args.preset].learning_starts if args.learning_starts is None else args.learning_starts
    )
    if learning_starts >= args.timesteps:
        parser.error(
            f"--learning-starts {learning_starts} must be below --timesteps {args.timesteps}, "
            "otherwise no gradient step is taken"
        )
    if args.env.startswith(DM_CONTROL_PREFIX):
        if importlib.util.find_spec("dm_control") is None or importlib.util.find_spec("shimmy") is None:
            parser.error(
                f"{args.env} needs DeepMind Control: pip install 'era-rl[dmc]' (dm-control needs mujoco<4)"
            )
        importlib.import_module("shimmy")  # registers the dm_control/* ids
    if args.env not in gym.envs.registry:
        parser.error(f"unknown environment {args.env!r}; use a registered Gymnasium id such as {DEFAULT_ENV}")


def _env_kwargs(env_id: str) -> dict[str, Any]:
    """``make_vec_env`` options: DeepMind Control ids (through shimmy) have dict observations, flattened here."""
    return {"wrapper_class": gym.wrappers.FlattenObservation} if env_id.startswith(DM_CONTROL_PREFIX) else {}


def _make_model(
    label: str, env: VecEnv, args: argparse.Namespace, settings: SACSettings, seed: int
) -> BaseAlgorithm:
    common = dict(
        learning_rate=settings.learning_rate,
        buffer_size=settings.buffer_size,
        learning_starts=settings.learning_starts,
        batch_size=settings.batch_size,
        tau=settings.tau,
        gamma=settings.gamma,
        train_freq=settings.train_freq,
        gradient_steps=settings.gradient_steps,
        policy_kwargs=dict(
            net_arch=list(settings.net_arch), **(authors_critic_kwargs() if settings.authors_critic else {})
        ),
        seed=seed,
        device=args.device,
        verbose=0,
    )
    if label == ERA_LABEL:
        return ERASAC(
            "MlpPolicy",
            env,
            target_entropy_per_dim=args.target_entropy_per_dim,
            action_distribution=args.action_distribution,
            **common,
        )
    # SB3's SAC policy, plus the critic options when the preset uses the authors' critic.
    policy = CriticOptionsSACPolicy if settings.authors_critic else "MlpPolicy"
    return SAC(policy, env, ent_coef="auto", **common)


class EvalProgressLine(BaseCallback):
    """
    Print one flushed line after each evaluation of SB3's ``EvalCallback`` (pass it as ``callback_after_eval``).

    :param label: Algorithm label (``SAC-ERA`` or ``SAC``), printed in the line's prefix.
    :param seed: Seed of the run, printed in the line's prefix.
    """

    parent: EvalCallback

    def __init__(self, label: str, seed: int):
        super().__init__()
        self.label = label
        self.seed = seed
        self._start_time = 0.0
        self._start_steps = 0

    def _init_callback(self) -> None:
        self._start_time = time.perf_counter()
        self._start_steps = self.model.num_timesteps

    def _on_step(self) -> bool:
        rate = (self.num_timesteps - self._start_steps) / max(time.perf_counter() - self._start_time, 1e-9)
        entropy = policy_entropy_stats(self.model, ENTROPY_STATES)
        print(
            f"[{self.label} seed {self.seed}] steps {self.num_timesteps:>8}  "
            f"return {self.parent.last_mean_reward:10.2f}  "
            f"Gaussian H min {entropy['gaussian_entropy_min']:7.3f}  policy H {entropy['policy_entropy']:7.3f}  "
            f"steps/s {rate:7.1f}",
            flush=True,
        )
        return True


def _train_and_evaluate(
    label: str, seed: int, args: argparse.Namespace, settings: SACSettings, run_dir: Path
) -> dict[str, Any]:
    env_kwargs = _env_kwargs(args.env)
    env = make_vec_env(args.env, n_envs=1, seed=seed, **env_kwargs)
    eval_env = make_vec_env(args.env, n_envs=1, seed=seed + EVAL_SEED_OFFSET, **env_kwargs)
    model = _make_model(label, env, args, settings, seed)
    model.set_logger(configure(str(run_dir), ["csv"]))
    eval_freq = args.eval_freq or max(args.timesteps // DEFAULT_EVAL_POINTS, 1)
    evaluation = EvalCallback(
        eval_env,
        eval_freq=eval_freq,
        n_eval_episodes=args.eval_episodes,
        log_path=str(run_dir),
        verbose=0,
        callback_after_eval=EvalProgressLine(label, seed) if args.no_progress_bar else None,
    )
    print(f"[{label} seed {seed}] training on {args.env} for {args.timesteps} steps", flush=True)
    start = time.perf_counter()
    model.learn(args.timesteps, callback=evaluation, progress_bar=not args.no_progress_bar)
    train_time = time.perf_counter() - start

    steps = [int(step) for step in evaluation.evaluations_timesteps]
    episode_returns = [list(map(float, returns)) for returns in evaluation.evaluations_results]
    if not steps or steps[-1] != model.num_timesteps:
        final_returns, _ = evaluate_policy(
            model,
            eval_env,
            n_eval_episodes=args.eval_episodes,
            deterministic=True,
            return_episode_rewards=True,
        )
        steps.append(int(model.num_timesteps))
        episode_returns.append(list(map(float, final_returns)))
    model.policy.set_training_mode(False)
    entropy = policy_entropy_stats(model, ENTROPY_STATES)
    if label == ERA_LABEL:
        entropy["floor_margin"] = entropy["gaussian_entropy_min"] - entropy["entropy_floor"]
    model.save(run_dir / "model.zip")
    env.close()
    eval_env.close()
    return {
        "algorithm": label,
        "seed": seed,
        "eval_timesteps": steps,
        "eval_return_mean": [float(np.mean(returns)) for returns in episode_returns],
        "eval_return_std": [float(np.std(returns)) for returns in episode_returns],
        "final_return_mean": float(np.mean(episode_returns[-1])),
        "final_return_std": float(np.std(episode_returns[-1])),
        "final_episode_returns": episode_returns[-1],
        "entropy": entropy,
        "entropy_states": min(ENTROPY_STATES, model.replay_buffer.size()),
        "train_wall_time_s": train_time,
        "steps_per_second": model.num_timesteps / train_time,
        "run_dir": str(run_dir),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(run["algorithm"] for run in runs):
        finals = [run["final_return_mean"] for run in runs if run["algorithm"] == label]
        summary[label] = {
            "seeds": [run["seed"] for run in runs if run["algorithm"] == label],
            "final_return_mean": float(np.mean(finals)),
            "final_return_std_across_seeds": float(np.std(finals)),
            "final_return_per_seed": finals,
        }
    return summary


def _print_table(runs: list[dict[str, Any]]) -> None:
    header = f"{'algorithm':<10} {'seed':>5} {'final return':>20} {'Gaussian H min':>15} {'floor':>8} {'policy H':>9}"
    print(header)
    print("-" * len(header))
    for run in runs:
        entropy = run["entropy"]
        floor = entropy.get("entropy_floor", math.nan)
        final = f"{run['final_return_mean']:.1f} +- {run['final_return_std']:.1f}"
        print(
            f"{run['algorithm']:<10} {run['seed']:>5} {final:>20} {entropy['gaussian_entropy_min']:>15.3f} "
            f"{floor:>8.3f} {entropy['policy_entropy']:>9.3f}"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """
    Train, evaluate and write ``results.json`` and ``learning_curve.png`` into ``args.output_dir``.

    :param args: parsed and checked arguments of :func:`build_parser`.
    :return: the results written to ``results.json``.
    """
    if args.num_threads is not None:
        th.set_num_threads(args.num_threads)
    settings = PRESETS[args.preset]
    if args.learning_starts is not None:
        settings = dataclasses.replace(settings, learning_starts=args.learning_starts)
    output_dir = args.output_dir or Path(
        "runs", "main", f"{args.env.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = [ERA_LABEL, BASELINE_LABEL] if args.baseline else [ERA_LABEL]

    start = time.perf_counter()
    runs = [
        _train_and_evaluate(label, seed, args, settings, output_dir / label / f"seed_{seed}")
        for seed in args.seeds
        for label in labels
    ]
    wall_time = time.perf_counter() - start

    title = (
        f"{args.env}: SAC-ERA (target {args.target_entropy_per_dim} nats/dim, {args.action_distribution})"
        + (" vs SAC" if args.baseline else "")
    )
    curves = {
        label: [(run["eval_timesteps"], run["eval_return_mean"]) for run in runs if run["algorithm"] == label]
        for label in labels
    }
    plot_path = plot_learning_curves(curves, output_dir / "learning_curve.png", title=title)
    results = {
        "env": args.env,
        "timesteps": args.timesteps,
        "seeds": args.seeds,
        "algorithms": labels,
        "summary": _summary(runs),
        "runs": runs,
        "config": {
            "preset": args.preset,
            "sac": dataclasses.asdict(settings),
            "era": {
                "target_entropy_per_dim": args.target_entropy_per_dim,
                "action_distribution": args.action_distribution,
            },
            "baseline": {"ent_coef": "auto"} if args.baseline else None,
            "eval_freq": args.eval_freq or max(args.timesteps // DEFAULT_EVAL_POINTS, 1),
            "eval_episodes": args.eval_episodes,
            "device": args.device,
            "torch_threads": th.get_num_threads(),
            "arguments": {
                key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
            },
        },
        "versions": package_versions(VERSIONED_PACKAGES),
        "wall_time_s": wall_time,
        "plot": str(plot_path),
    }
    results_path = output_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2))
    _print_table(runs)
    print(f"results: {results_path}\nlearning curve: {plot_path}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``sb3-era-main`` / ``python -m sb3_era.main``; see ``--help``.

    :param argv: command-line arguments; ``sys.argv[1:]`` when ``None``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    run(args)


if __name__ == "__main__":
    main()
