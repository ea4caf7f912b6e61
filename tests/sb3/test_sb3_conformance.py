"""What SB3 users rely on, kept with the ERA classes: observation and action spaces, save/load, CPU advice."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

from era_core import gaussian_entropy, softmax_era_feasible_range
from sb3_era import (
    ERAA2C,
    ERAPPO,
    ERASAC,
    ERATQC,
    ERAActorCriticPolicy,
    ERACrossQ,
    era_entropy_stats,
)

SMALL = {
    ERASAC: dict(learning_starts=16, batch_size=16),
    ERATQC: dict(learning_starts=16, batch_size=16),
    ERACrossQ: dict(learning_starts=16, batch_size=16),
    ERAPPO: dict(n_steps=32, batch_size=32, n_epochs=1),
    ERAA2C: dict(n_steps=8),
}


class SpacesEnv(gym.Env):
    """Random observations and rewards in the given spaces; episodes of 20 steps."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space):
        self.observation_space = observation_space
        self.action_space = action_space
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._steps = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype))
        self._steps += 1
        return self.observation_space.sample(), float(np.sum(action)), False, self._steps >= 20, {}


DISCRETE_OBS = spaces.Discrete(7)
DICT_OBS = spaces.Dict({"cell": spaces.Discrete(5), "position": spaces.Box(-1.0, 1.0, (3,), np.float32)})
BOX_ACTIONS = spaces.Box(-1.0, 1.0, (2,), np.float32)


def _discrete_kwargs(n: int) -> dict:
    low, high = softmax_era_feasible_range(n, 4.0)
    return dict(min_entropy=(low + high) / 2)


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "VecNormalize"])
@pytest.mark.parametrize("observation_space", [DISCRETE_OBS, DICT_OBS], ids=["Discrete", "Dict"])
@pytest.mark.parametrize("algo", [ERASAC, ERAPPO], ids=lambda algo: algo.__name__)
def test_era_logging_works_with_discrete_observations(algo, observation_space, normalize):
    if algo is ERASAC and normalize and observation_space is DISCRETE_OBS:
        pytest.skip(
            "stock SAC fails there too (SB3 indexes a Discrete next observation as 2-d at episode ends)"
        )
    env = make_vec_env(lambda: SpacesEnv(observation_space, BOX_ACTIONS), n_envs=2)
    if normalize:
        # VecNormalize normalises Box observations only: the dict's Box part, or just the rewards.
        is_dict = isinstance(observation_space, spaces.Dict)
        env = VecNormalize(env, norm_obs=is_dict, norm_obs_keys=["position"] if is_dict else None)
    policy = "MultiInputPolicy" if isinstance(observation_space, spaces.Dict) else "MlpPolicy"
    model = algo(policy, env, policy_kwargs=dict(net_arch=TINY_NET), seed=0, **SMALL[algo])
    model.learn(64)
    stats = era_entropy_stats(model, 32)
    assert stats["gaussian_entropy_min"] >= stats["entropy_floor"] - 1e-5


def test_era_logging_works_with_discrete_observations_in_subprocesses():
    env = make_vec_env(
        lambda: SpacesEnv(DISCRETE_OBS, BOX_ACTIONS),
        n_envs=2,
        vec_env_cls=SubprocVecEnv,
        vec_env_kwargs=dict(start_method="fork"),
    )
    model = ERAPPO("MlpPolicy", env, policy_kwargs=dict(net_arch=TINY_NET), seed=0, **SMALL[ERAPPO])
    model.learn(64)
    env.close()
    assert era_entropy_stats(model, 32)["gaussian_entropy_min"] >= -1.0 - 1e-5


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "Taxi-v4"])
def test_era_ppo_logs_on_discrete_toy_text_envs(env_id, tmp_path):
    env = make_vec_env(env_id, n_envs=2)
    model = ERAPPO("MlpPolicy", env, seed=0, **_discrete_kwargs(env.action_space.n), **SMALL[ERAPPO])
    model.learn(64)
    stats = era_entropy_stats(model, 32)
    assert stats["policy_entropy"] >= stats["entropy_floor"] - 1e-3


@pytest.mark.parametrize("action_distribution", ["truncated", "tanh"])
@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C, ERASAC], ids=lambda algo: algo.__name__)
def test_multi_dimensional_box_actions(algo, action_distribution):
    # Bounds differing per entry check that the flattened bounds line up with the flattened actions.
    low = -np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    action_space = spaces.Box(low, -low, dtype=np.float32)
    env = SpacesEnv(spaces.Box(-1.0, 1.0, (3,), np.float32), action_space)
    model = algo(
        "MlpPolicy",
        env,
        policy_kwargs=dict(net_arch=TINY_NET, action_distribution=action_distribution),
        seed=0,
        **SMALL[algo],
    )
    model.learn(64)  # SpacesEnv.step asserts that every action lies in the box
    actions, _ = model.predict(np.zeros((50, 3), np.float32))
    assert actions.shape == (50, 2, 2)
    assert np.all(actions >= low) and np.all(actions <= -low)


@pytest.mark.parametrize("algo", [ERASAC, ERATQC, ERACrossQ, ERAPPO, ERAA2C], ids=lambda algo: algo.__name__)
def test_load_with_the_policy_kwargs_used_at_creation(algo, tmp_path):
    policy_kwargs = dict(net_arch=TINY_NET)
    model = algo("MlpPolicy", ReachTargetEnv(), policy_kwargs=policy_kwargs, **SMALL[algo])
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", policy_kwargs=policy_kwargs)
    assert loaded.policy_kwargs == model.policy_kwargs


@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=lambda algo: algo.__name__)
def test_mlp_policy_on_a_gpu_gets_sb3s_cpu_advice(algo):
    model = algo("MlpPolicy", ReachTargetEnv(), device="cpu", **SMALL[algo])
    model.device = th.device("cuda")  # the advice is about the device; no GPU is needed to give it
    with pytest.warns(UserWarning, match="primarily intended to run on the CPU"):
        model._maybe_recommend_cpu()
    cnn = algo("CnnPolicy", SpacesEnv(spaces.Box(0, 255, (36, 36, 3), np.uint8), BOX_ACTIONS), device="cpu")
    cnn.device = th.device("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cnn._maybe_recommend_cpu()


def test_a_one_action_discrete_space_is_refused_with_the_reason():
    env = SpacesEnv(spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Discrete(1))
    with pytest.raises(ValueError, match="at least 2"):
        ERAPPO("MlpPolicy", env, min_entropy=0.1)


@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=lambda algo: algo.__name__)
def test_on_policy_batch_floor_is_refused_with_the_reason(algo):
    with pytest.raises(ValueError, match="floor='state' only"):
        algo("MlpPolicy", ReachTargetEnv(), floor="batch")


@pytest.mark.parametrize(
    "knobs",
    [dict(), dict(action_distribution="tanh"), dict(state_dependent_std=True)],
    ids=["truncated", "tanh", "state_dependent_std"],
)
def test_on_policy_learned_delta_gets_the_compensation_gradient(knobs):
    env = ReachTargetEnv()
    policy = ERAActorCriticPolicy(
        env.observation_space, env.action_space, lambda _: 1e-2, net_arch=TINY_NET, learn_delta=True, **knobs
    )
    states = th.rand(256, 4) * 2 - 1
    actions = th.as_tensor(np.stack([env.action_space.sample() for _ in range(256)]) * 0.5)
    th.manual_seed(0)  # the same fresh actions for the tanh policy's entropy estimate in both measurements
    values, log_prob, _ = policy.evaluate_actions(states, actions)
    # PPO's loss shape: delta's gradient is the compensation's, not this loss's.
    (values.sum() + 3.0 * log_prob.sum()).backward()
    grad = policy.log_std_era.delta.grad.item()
    th.manual_seed(0)
    stats = policy.entropy_stats(states)
    expected = stats["policy_entropy"] - policy.log_std_era.target_entropy
    assert grad == pytest.approx(expected, rel=1e-4)
    # A plain forward pass leaves delta alone.
    policy.zero_grad()
    policy.evaluate_actions(states, actions)[0].sum().backward()
    assert not policy.log_std_era.delta.grad


@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=lambda algo: algo.__name__)
def test_on_policy_learned_delta_rises_while_the_final_entropy_is_below_the_target(algo, tmp_path):
    model = algo(
        "MlpPolicy",
        ReachTargetEnv(),
        learn_delta=True,
        learning_rate=1e-2,
        policy_kwargs=dict(net_arch=TINY_NET),
        seed=0,
        **SMALL[algo],
    )
    model.learn(256)
    era = model.policy.log_std_era
    # Truncation lowers the final entropy below the Gaussian floor, so the compensation grows.
    assert era.delta.item() > 0.0
    with th.no_grad():
        log_std = model.policy.get_distribution(th.zeros(1, 4)).distribution.scale.log()
    assert gaussian_entropy(log_std).item() >= era.target_entropy + era.delta.item() - 1e-5
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model")
    assert loaded.policy.log_std_era.delta.item() == era.delta.item()
    assert loaded.policy.era_kwargs["learn_delta"]


@pytest.mark.parametrize(
    ("knob", "value", "expected_floor"),
    [
        ("target_entropy_per_dim", -1.0, -3.0),
        ("target_entropy", -2.0, -2.0),
        ("delta", 0.5, -1.5 + 0.5),
    ],
)
@pytest.mark.parametrize("algo", [ERASAC, ERAPPO], ids=lambda algo: algo.__name__)
def test_a_top_level_knob_overrides_the_same_knob_in_policy_kwargs(algo, knob, value, expected_floor):
    # As in the shipped *_era hyper-parameter files; rl-zoo3's -params gives the override at the top level.
    from_file = dict(net_arch=TINY_NET, target_entropy_per_dim=-0.5, log_std_min=-8.0, log_std_max=0.0)
    model = algo("MlpPolicy", ReachTargetEnv(), policy_kwargs=from_file, **{knob: value}, **SMALL[algo])
    policy = model.policy
    floor = policy.actor.era.entropy_floor().item() if algo is ERASAC else policy.entropy_floor()
    assert floor == pytest.approx(expected_floor)
    assert from_file["target_entropy_per_dim"] == -0.5  # the caller's dict is not rewritten


@pytest.mark.parametrize(
    ("knob", "value"),
    [("log_std_min", -5.0), ("log_std_max", -0.1), ("action_distribution", "tanh"), ("learn_delta", True)],
)
def test_every_knob_can_be_overridden_at_the_top_level(knob, value):
    from_file = dict(net_arch=TINY_NET, target_entropy_per_dim=-0.5, **{knob: ERASAC_DEFAULTS[knob]})
    model = ERASAC("MlpPolicy", ReachTargetEnv(), policy_kwargs=from_file, **{knob: value}, **SMALL[ERASAC])
    assert model.policy.actor.era_kwargs[knob] == value


ERASAC_DEFAULTS = dict(log_std_min=-8.0, log_std_max=0.0, action_distribution="truncated", learn_delta=False)


def test_stock_ppo_gives_the_same_advice_for_its_mlp_policy():
    model = PPO("MlpPolicy", ReachTargetEnv(), device="cpu", n_steps=32, batch_size=32)
    model.device = th.device("cuda")
    with pytest.warns(UserWarning, match="primarily intended to run on the CPU"):
        model._maybe_recommend_cpu()
