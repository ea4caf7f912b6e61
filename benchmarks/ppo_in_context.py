"""Where PPO-ERA's time goes against PPO's, timed inside ``learn()``'s two parts: per env step of the rollout
and per minibatch of the update.

PPO, PPO-ERA with the truncated normal and PPO-ERA with SB3's tanh Gaussian (same environment, networks and
seed) each collect a rollout and run ``train()`` on it, taking turns repeat by repeat. Inside, each part's calls
are timed one by one (process CPU time, one thread; medians over the calls):

- rollout, per env step: the policy's forward pass (network, distribution, sample, log-probability), the
  environment's step, and the rest of ``collect_rollouts`` (buffer, conversions, callbacks);
- update, per minibatch: ``evaluate_actions``, the loss's backward, the optimizer's step, and the rest of
  ``train()`` (minibatch sampling, losses, gradient clipping);
- for the truncated normal, the parts of its own work inside those: the distribution's construction with its
  parameter check, the training pass's fused node (forward and backward) and, inside it, ERA's activation and
  ``era_core``'s float64 formulas, and the rollout's sample formula; for the tanh Gaussian, its training pass's
  node (forward and backward) and the rollout's log-probability formula.

The environment's step is part of the measured throughput but not of ERA's work: its cost depends on the
actions the policy takes. Prints a table, writes JSON::

    PYTHONPATH=. python benchmarks/ppo_in_context.py --repeats 11
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest import mock

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.logger import Logger

from era_core import truncated_normal
from sb3_era import ERAPPO, TruncatedNormalDistribution, distributions, fused_log_prob
from sb3_era.versions import cpu_model, package_versions

MODELS = ("PPO", "PPO-ERA (truncated)", "PPO-ERA (tanh)")
ROLLOUT_PARTS = ("policy forward", "env step")
UPDATE_PARTS = ("evaluate_actions", "backward", "optimizer step")
# Each ERA model's own calls: (the part they run in, label, owner, attribute), each timed where it is looked up.
TRUNCATED_NODE = fused_log_prob.TanhTruncatedLogProbAndEntropy
TANH_NODE = fused_log_prob.TanhGaussianLogProb
OWN_CALLS = {
    "PPO-ERA (truncated)": (
        ("policy forward", "  float64 sample formula", truncated_normal, "_sample_in_interval"),
        (
            "evaluate_actions",
            "  distribution, parameter check",
            TruncatedNormalDistribution,
            "proba_distribution",
        ),
        ("evaluate_actions", "  fused node, forward", TRUNCATED_NODE, "forward"),
        ("evaluate_actions", "    ERA activation", fused_log_prob, "gaussian_era_log_std"),
        (
            "evaluate_actions",
            "    float64 formulas, forward",
            fused_log_prob,
            "_log_prob_and_entropy_in_interval",
        ),
        ("backward", "  fused node, backward", TRUNCATED_NODE, "backward"),
        ("backward", "    float64 formulas, backward", fused_log_prob, "_log_prob_and_entropy_gradients"),
    ),
    "PPO-ERA (tanh)": (
        ("policy forward", "  float64 log-prob formula", distributions, "squashed_gaussian_log_prob"),
        ("evaluate_actions", "  fused node, forward", TANH_NODE, "forward"),
        ("backward", "  fused node, backward", TANH_NODE, "backward"),
    ),
}


def _timed(function: Callable, samples: list[int]) -> Callable:
    """``function``, appending each call's process CPU time (ns) to ``samples``."""

    def run(*args, **kwargs):
        start = time.process_time_ns()
        result = function(*args, **kwargs)
        samples.append(time.process_time_ns() - start)
        return result

    return run


@contextmanager
def _timing(owner: object, attribute: str, samples: list[int]) -> Iterator[None]:
    """Time every call of ``owner.attribute`` into ``samples`` (a static method stays static)."""
    original = vars(owner).get(attribute) if isinstance(owner, type) else None
    if isinstance(original, staticmethod):
        replacement = staticmethod(_timed(original.__func__, samples))
    else:
        replacement = _timed(getattr(owner, attribute), samples)
    with mock.patch.object(owner, attribute, replacement):
        yield


def _models(args: argparse.Namespace) -> dict[str, BaseAlgorithm]:
    common = dict(n_steps=args.ppo_steps, seed=args.seed, device="cpu")
    return {
        "PPO": PPO("MlpPolicy", args.env, **common),
        "PPO-ERA (truncated)": ERAPPO("MlpPolicy", args.env, **common),
        "PPO-ERA (tanh)": ERAPPO("MlpPolicy", args.env, action_distribution="tanh", **common),
    }


def _one_repeat(name: str, model: BaseAlgorithm, samples: dict[str, list[int]]) -> None:
    """One rollout and one ``train()`` of ``model``, their parts timed into ``samples[f"{name}: {part}"]``."""

    def slot(part: str) -> list[int]:
        return samples.setdefault(f"{name}: {part}", [])

    callback = CallbackList([])
    callback.init_callback(model)
    with ExitStack() as stack:
        stack.enter_context(_timing(model.policy, "forward", slot("policy forward")))
        stack.enter_context(_timing(model.env, "step", slot("env step")))
        for part, label, owner, attribute in OWN_CALLS.get(name, ()):
            if part in ROLLOUT_PARTS:
                stack.enter_context(_timing(owner, attribute, slot(label)))
        start = time.process_time_ns()
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
        slot("rollout, whole").append((time.process_time_ns() - start) // model.n_steps)
    with ExitStack() as stack:
        stack.enter_context(_timing(model.policy, "evaluate_actions", slot("evaluate_actions")))
        stack.enter_context(_timing(torch.Tensor, "backward", slot("backward")))
        stack.enter_context(_timing(model.policy.optimizer, "step", slot("optimizer step")))
        for part, label, owner, attribute in OWN_CALLS.get(name, ()):
            if part in UPDATE_PARTS:
                stack.enter_context(_timing(owner, attribute, slot(label)))
        minibatches = len(slot("evaluate_actions"))
        start = time.process_time_ns()
        model.train()
        minibatches = len(slot("evaluate_actions")) - minibatches
        slot("update, whole").append((time.process_time_ns() - start) // minibatches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--ppo-steps", type=int, default=1024, help="rollout length (n_steps)")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ppo_in_context.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    models = _models(args)
    for model in models.values():
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.learn(args.ppo_steps)  # one rollout and one update: past the first calls' one-off costs
    samples: dict[str, list[int]] = {}
    for repeat in range(args.repeats):
        shift = repeat % len(MODELS)
        for name in MODELS[shift:] + MODELS[:shift]:
            _one_repeat(name, models[name], samples)

    def median_us(name: str, part: str) -> float | None:
        values = samples.get(f"{name}: {part}")
        return statistics.median(values) / 1e3 if values else None

    def row(section: str, label: str, us: dict[str, float | None] | None = None) -> dict:
        us = us or {name: median_us(name, label) for name in MODELS}
        return dict(section=section, part=label, us=us)

    rows = []
    for section, parts in (("rollout", ROLLOUT_PARTS), ("update", UPDATE_PARTS)):
        rows.append(row(section, f"{section}, whole"))
        for part in parts:
            rows.append(row(section, part))
            labels = [label for calls in OWN_CALLS.values() for parent, label, *_ in calls if parent == part]
            rows += [row(section, label) for label in dict.fromkeys(labels)]
        rest = {
            name: median_us(name, f"{section}, whole") - sum(median_us(name, part) for part in parts)
            for name in MODELS
        }
        rows.append(row(section, "rest", rest))

    unit = {"rollout": "per env step", "update": "per minibatch"}
    print(
        f"{args.env}, {args.ppo_steps}-step rollouts, {args.repeats} repeats; process CPU time, 1 thread, medians [us]"
    )
    print(f"{'part':40s}" + "".join(f"{name:>22s}" for name in MODELS) + f"{'truncated - PPO':>18s}")
    for entry in rows:
        values = entry["us"]
        label = entry["part"]
        label = label if label.startswith(" ") else f"{label} ({unit[entry['section']]})"
        cells = "".join(f"{'':>22s}" if v is None else f"{v:22.1f}" for v in values.values())
        difference = (
            f"{values['PPO-ERA (truncated)'] - values['PPO']:+18.1f}" if values["PPO"] is not None else ""
        )
        print(f"{label:40s}{cells}{difference}")

    record = dict(
        config={key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        machine=dict(processor=cpu_model(), torch_threads=1),
        versions=package_versions(("era-rl", "stable-baselines3", "torch", "numpy", "scipy", "mujoco")),
        median_us=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
