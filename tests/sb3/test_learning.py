"""Learning quality in CI: SAC-ERA and PPO-ERA learn Pendulum-v1 in a small budget (the other tests check mechanics).

The settings, seed, evaluation episodes and thresholds live in ``benchmarks/pendulum_learning_check.py``, whose
``main`` measured them over ten seeds (``benchmarks/results/pendulum_learning_check.json``)::

    PYTHONPATH=. python benchmarks/pendulum_learning_check.py --seeds 0 1 2 3 4 5 6 7 8 9

Measured: SAC-ERA's ten seeds score -99 to -209 (threshold -600), PPO-ERA's nine of ten -306 to -831
(threshold -925; seed 7 did not learn within the budget, -1164); the test's seed 0 scores -125 and -306. A
policy that learnt nothing fails: random actions score -1100 and the ten untrained policies (what cut
gradients leave) -1023 to -1373 on the same episodes; the first test checks seed 0's.
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
