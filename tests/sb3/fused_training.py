"""The check shared by the fused-node tests: training with a fused node ends where the reference ops do."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_era import distributions as distributions_module


def assert_training_matches_reference(
    monkeypatch: pytest.MonkeyPatch,
    node_name: str,
    learn: Callable[[], BaseAlgorithm],
    use_reference: Callable[[], None],
) -> None:
    """Train twice from the same seed, with the fused node and after ``use_reference()``, and compare.

    Same seed, same rollouts, same minibatches: after all of ``learn()``'s updates the policy's parameters agree
    to the float32 rounding that the two paths' sums differ by. The first run must call the node
    ``distributions_module.<node_name>``, the second must not.

    :param monkeypatch: the test's fixture (the node is wrapped to count its calls).
    :param node_name: the autograd Function's name in :mod:`sb3_era.distributions`.
    :param learn: builds a model from a fixed seed and returns it after ``learn()``.
    :param use_reference: switches the distribution to its reference ops.
    """
    node = getattr(distributions_module, node_name)
    calls = []

    class CountedNode:
        @staticmethod
        def apply(*args):
            calls.append(1)
            return node.apply(*args)

    monkeypatch.setattr(distributions_module, node_name, CountedNode)

    def parameters_after_learn() -> tuple[list[th.Tensor], int]:
        calls.clear()
        model = learn()
        return [p.detach().clone() for p in model.policy.parameters()], len(calls)

    fused, fused_calls = parameters_after_learn()
    use_reference()
    reference, reference_calls = parameters_after_learn()
    assert fused_calls > 0 and reference_calls == 0
    for got, expected in zip(fused, reference, strict=True):
        th.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
