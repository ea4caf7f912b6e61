"""policy_entropy_stats measures stock SB3 policies with the ERA policies' code (for baselines in the evidence)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3 import A2C, PPO, SAC

from sb3_era import ERAPPO, era_entropy_stats, policy_entropy_stats

LOG_2PI_E = math.log(2 * math.pi * math.e)


def test_stock_ppo_gaussian_entropy_is_measured_in_the_scaled_action_space():
    # ReachTargetEnv's actions lie in [-2, 2]: the scaled space halves the std, -ln 2 per dimension.
    model = PPO(
        "MlpPolicy",
        ReachTargetEnv(),
        n_steps=64,
        batch_size=32,
        policy_kwargs=dict(net_arch=TINY_NET),
        seed=0,
    )
    model.learn(64)
    stats = policy_entropy_stats(model, 32)
    log_std = model.policy.log_std.detach().numpy()
    expected = 0.5 * 3 * LOG_2PI_E + float(np.sum(log_std - np.log(2.0)))
    assert stats["gaussian_entropy"] == pytest.approx(expected, abs=1e-5)
    assert stats["gaussian_entropy_min"] == pytest.approx(expected, abs=1e-5)
    # Clipped actions have no density: no bounded-policy entropy, and no floor for a stock policy.
    assert "policy_entropy" not in stats and "entropy_floor" not in stats


def test_stock_sac_is_measured_like_era_sac():
    model = SAC(
        "MlpPolicy",
        ReachTargetEnv(),
        learning_starts=32,
        batch_size=32,
        policy_kwargs=dict(net_arch=TINY_NET),
        seed=0,
    )
    model.learn(64)
    stats = policy_entropy_stats(model, 32)
    assert set(stats) == {"gaussian_entropy", "gaussian_entropy_min", "policy_entropy"}
    assert stats["gaussian_entropy_min"] <= stats["gaussian_entropy"]
    # The tanh squashing only removes entropy (up to the one-sample Monte-Carlo noise of the estimate).
    assert stats["policy_entropy"] < stats["gaussian_entropy"]


def test_stock_categorical_policy_entropy_is_exact():
    model = A2C("MlpPolicy", "CartPole-v1", n_steps=8, policy_kwargs=dict(net_arch=TINY_NET), seed=0)
    model.learn(16)
    stats = policy_entropy_stats(model, 8)
    # The whole rollout (8 steps of one environment), flattened by the training pass.
    observations = model.rollout_buffer.observations.reshape(8, -1)
    distribution = model.policy.get_distribution(model.policy.obs_to_tensor(observations)[0])
    assert stats == {"policy_entropy": pytest.approx(distribution.entropy().mean().item(), abs=1e-6)}


def test_era_policies_report_their_floor_and_era_entropy_stats_refuses_stock_ones():
    model = ERAPPO(
        "MlpPolicy",
        ReachTargetEnv(),
        n_steps=64,
        batch_size=32,
        policy_kwargs=dict(net_arch=TINY_NET),
        seed=0,
    )
    model.learn(64)
    stats = policy_entropy_stats(model, 32)
    assert stats["gaussian_entropy_min"] >= stats["entropy_floor"] - 1e-5
    assert era_entropy_stats(model, 32) == stats
    stock = PPO("MlpPolicy", ReachTargetEnv(), n_steps=64, batch_size=32, seed=0)
    with pytest.raises(ValueError, match="needs an ERA policy"):
        era_entropy_stats(stock, 32)
