"""Public sb3_era paths the other test files leave out (issue 14): measurements under VecNormalize and after
the replay buffer wraps, the TQC and actor-critic Cnn/MultiInput policies, the entropy-bonus warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from era_core import gaussian_entropy
from sb3_era import (
    ERAA2C,
    ERAPPO,
    ERASAC,
    ERATQC,
    ERAActorCriticCnnPolicy,
    ERACrossQ,
    ERAMultiInputActorCriticPolicy,
    ERATQCCnnPolicy,
    ERATQCMultiInputPolicy,
    TruncatedNormalDistribution,
    era_entropy_stats,
)

IMAGE_SPACE = spaces.Box(0, 255, (3, 40, 40), np.uint8)
DICT_SPACE = spaces.Dict({"image": IMAGE_SPACE, "vector": spaces.Box(-1.0, 1.0, (5,), np.float32)})
ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


class _ShiftedObsEnv(ReachTargetEnv):
    """ReachTargetEnv with observations far from zero mean and unit scale, so normalising them matters."""

    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Box(-np.inf, np.inf, (4,), np.float32)

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return 50.0 + 30.0 * obs, info

    def step(self, action):
        obs, *rest = super().step(action)
        return 50.0 + 30.0 * obs, *rest


def _sac(env, **kwargs):
    return ERASAC(
        "MlpPolicy",
        env,
        learning_starts=16,
        batch_size=16,
        policy_kwargs=dict(net_arch=TINY_NET),
        seed=0,
        **kwargs,
    )


def test_off_policy_stats_under_vec_normalize_measure_the_normalised_observations():
    env = VecNormalize(DummyVecEnv([_ShiftedObsEnv]), norm_reward=False)
    model = _sac(env)
    model.learn(64)
    buffer = model.replay_buffer
    raw = buffer.observations[buffer.pos - 32 : buffer.pos].reshape(-1, 4)
    assert np.abs(raw).mean() > 10.0  # the buffer holds the original, unnormalised observations
    actor = model.policy.actor
    actor.set_training_mode(False)
    with th.no_grad():
        expected = actor.entropy_stats(th.as_tensor(env.normalize_obs(raw)))
        unnormalised = actor.entropy_stats(th.as_tensor(raw))
    stats = era_entropy_stats(model, 32)
    assert stats["policy_entropy"] == pytest.approx(expected["policy_entropy"], rel=1e-5)
    assert stats["policy_entropy"] != pytest.approx(unnormalised["policy_entropy"], rel=1e-3)


def test_on_policy_stats_under_vec_normalize_use_the_rollout_as_stored():
    env = VecNormalize(DummyVecEnv([_ShiftedObsEnv]), norm_reward=False)
    model = ERAPPO(
        "MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, policy_kwargs=dict(net_arch=TINY_NET), seed=0
    )
    model.learn(64)
    stored = model.rollout_buffer.observations.reshape(-1, 4)[-32:]
    assert np.abs(stored).mean() < 10.0  # the rollout holds normalised observations
    with th.no_grad():
        expected = model.policy.entropy_stats(th.as_tensor(stored))
    assert era_entropy_stats(model, 32)["policy_entropy"] == pytest.approx(
        expected["policy_entropy"], rel=1e-5
    )


@pytest.mark.parametrize("steps", [64, 74], ids=["wrapped_exactly", "wrapped_past"])
def test_off_policy_stats_after_the_replay_buffer_wraps_measure_the_newest_states(steps):
    model = _sac(ReachTargetEnv(), buffer_size=32)
    model.learn(steps)
    buffer = model.replay_buffer
    assert buffer.full and buffer.pos == steps - 64
    upper = buffer.pos or buffer.buffer_size
    newest = buffer.observations[max(0, upper - 8) : upper].reshape(-1, 4)
    actor = model.policy.actor
    actor.set_training_mode(False)
    with th.no_grad():
        expected = actor.entropy_stats(th.as_tensor(newest))
    stats = era_entropy_stats(model, 8)
    assert stats["policy_entropy"] == pytest.approx(expected["policy_entropy"], rel=1e-5)
    assert np.isfinite(list(stats.values())).all()


def _batch(space: spaces.Space, n: int = 16):
    samples = [space.sample() for _ in range(n)]
    if isinstance(space, spaces.Dict):
        return {key: np.stack([sample[key] for sample in samples]) for key in space.spaces}
    return np.stack(samples)


def _assert_floor_and_bounds(distribution, floor: float) -> None:
    log_std = distribution.distribution.scale.log()
    assert gaussian_entropy(log_std).min().item() >= floor - 1e-5
    actions = distribution.sample()
    assert th.all(actions.abs() <= 1.0) and actions.abs().max() > 0.0


@pytest.mark.parametrize(
    ("policy_class", "space"),
    [(ERATQCCnnPolicy, IMAGE_SPACE), (ERATQCMultiInputPolicy, DICT_SPACE)],
    ids=["Cnn", "MultiInput"],
)
def test_tqc_cnn_and_multi_input_policies_keep_the_floor(policy_class, space):
    policy = policy_class(space, ACTION_SPACE, lambda _: 1e-3, net_arch=TINY_NET, target_entropy=-2.5)
    assert isinstance(policy.actor.action_dist, TruncatedNormalDistribution)
    assert policy.actor.era.entropy_floor().item() == pytest.approx(-2.5)
    obs, _ = policy.obs_to_tensor(_batch(space))
    with th.no_grad():
        mean_actions, log_std, kwargs = policy.actor.get_action_dist_params(obs)
        distribution = policy.actor.action_dist.proba_distribution(mean_actions, log_std, **kwargs)
        _assert_floor_and_bounds(distribution, -2.5)
    assert policy.predict(space.sample())[0].shape == (2,)


@pytest.mark.parametrize(
    ("policy_class", "space"),
    [(ERAActorCriticCnnPolicy, IMAGE_SPACE), (ERAMultiInputActorCriticPolicy, DICT_SPACE)],
    ids=["Cnn", "MultiInput"],
)
@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_actor_critic_cnn_and_multi_input_policies_keep_the_floor(policy_class, space, state_dependent_std):
    policy = policy_class(
        space,
        ACTION_SPACE,
        lambda _: 1e-3,
        net_arch=TINY_NET,
        target_entropy=-2.5,
        state_dependent_std=state_dependent_std,
    )
    assert type(policy.features_extractor).__name__ == (
        "NatureCNN" if policy_class is ERAActorCriticCnnPolicy else "CombinedExtractor"
    )
    assert policy.entropy_floor() == pytest.approx(-2.5)
    obs, _ = policy.obs_to_tensor(_batch(space))
    with th.no_grad():
        _assert_floor_and_bounds(policy.get_distribution(obs), -2.5)
    assert policy.predict(space.sample())[0].shape == (2,)


@pytest.mark.parametrize(
    ("algo", "kwargs"),
    [
        (ERAPPO, dict(ent_coef=0.01, n_steps=32, batch_size=16)),
        (ERAA2C, dict(ent_coef=0.5, n_steps=8)),
        (ERASAC, dict(ent_coef="auto")),
        (ERATQC, dict(ent_coef=0.1)),
        (ERACrossQ, dict(ent_coef="auto_0.1")),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_entropy_bonus_with_an_era_policy_warns_and_the_default_does_not(algo, kwargs):
    with pytest.warns(UserWarning, match="double-counts entropy"):
        algo("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), **kwargs)
    # A copy without ent_coef: the parametrised dict is shared by every run of this test in one process.
    default = {key: value for key, value in kwargs.items() if key != "ent_coef"}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*double-counts entropy.*")
        model = algo("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), **default)
    assert model.ent_coef == 0.0 or model.ent_coef_tensor.item() == 0.0
