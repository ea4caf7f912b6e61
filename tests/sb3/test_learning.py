"""Learning quality in CI: SAC-ERA and PPO-ERA learn Pendulum-v1 in a small budget (the other tests check mechanics).

The settings, seed, evaluation episodes and thresholds live in ``benchmarks/pendulum_learning_check.py``, whose
``main`` measured them over ten seeds (``benchmarks/results/pendulum_learning_check.json``)::

    PYTHONPATH=. python benchmarks/pendulum_learning_check.py --seeds 0 1 2 3 4 5 6 7 8 9

A policy that learnt nothing fails: the random policy and every seed's untrained policy (what cut gradients
leave) score far below the thresholds on the same episodes, which the first test checks.
"""

from __future__ import annotations

import pytest

from benchmarks.pendulum_learning_check import (
    ALGORITHMS,
    TEST_SEED,
    THRESHOLDS,
    deterministic_policy,
    make_model,
    mean_return,
    random_policy,
    train,
)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_policies_that_learnt_nothing_stay_below_the_threshold(algorithm):
    assert mean_return(random_policy(TEST_SEED)) < THRESHOLDS[algorithm]
    assert mean_return(deterministic_policy(make_model(algorithm, TEST_SEED))) < THRESHOLDS[algorithm]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_era_algorithm_learns_pendulum(algorithm):
    model = train(algorithm, TEST_SEED)
    assert mean_return(deterministic_policy(model)) > THRESHOLDS[algorithm]
