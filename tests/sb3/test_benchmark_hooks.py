"""The benchmarks that time ERA's own calls inside SB3's loops patch them by name: each must exist and be the
one SB3's loops reach."""

from __future__ import annotations

import argparse

from stable_baselines3.common.logger import Logger

from benchmarks import ppo_in_context, sac_sampling_in_context


def test_every_call_the_sac_benchmark_times_exists():
    for owner, attribute in sac_sampling_in_context.HOOKS:
        assert callable(getattr(owner, attribute, None)), f"{owner.__name__} has no {attribute}"


def test_every_call_the_ppo_benchmark_times_is_reached_by_a_rollout_or_an_update():
    args = argparse.Namespace(env="Pendulum-v1", ppo_steps=64, seed=0)
    models = ppo_in_context._models(args)
    samples: dict[str, list[int]] = {}
    for name, model in models.items():
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.learn(args.ppo_steps)  # as the benchmark starts: a first observation, a filled buffer
        ppo_in_context._one_repeat(name, model, samples)
    for name, calls in ppo_in_context.OWN_CALLS.items():
        for *_, label, _, _ in calls:
            assert samples.get(f"{name}: {label}"), f"{name}: {label!r} was never called"
