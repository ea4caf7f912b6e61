"""ERA actor-critic policies for PPO, A2C and RecurrentPPO: continuous and discrete actions (spec 1.5, 2)."""

from __future__ import annotations

import inspect

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from torch import nn

from era_core import SoftmaxERA, categorical_entropy, gaussian_entropy
from sb3_era import (
    ERAA2C,
    ERAPPO,
    ERAActorCriticPolicy,
    ERAEntropyCallback,
    ERARecurrentActorCriticPolicy,
    TruncatedNormalDistribution,
    era_entropy_stats,
)
from sb3_era.on_policy import ERAActorCriticMixin

FLOAT_TOLERANCE = 1e-5
ON_POLICY_KWARGS = {ERAPPO: dict(n_steps=128, batch_size=64, n_epochs=2), ERAA2C: dict(n_steps=16)}


def _train(algo, env, steps: int = 256, **policy_kwargs):
    model = algo(
        "MlpPolicy",
        env,
        policy_kwargs=dict(net_arch=TINY_NET, **policy_kwargs),
        seed=0,
        **ON_POLICY_KWARGS[algo],
    )
    model.learn(steps)
    return model


def _states(model, n: int = 3000) -> th.Tensor:
    scales = np.repeat([1.0, 10.0, 1000.0], n // 3)
    shape = model.observation_space.shape[0]
    return th.as_tensor(
        np.random.default_rng(0).standard_normal((scales.size, shape)) * scales[:, None], dtype=th.float32
    )


@pytest.mark.parametrize(
    "policy_kwargs",
    [dict(), dict(action_distribution="tanh"), dict(state_dependent_std=True)],
    ids=["truncated", "tanh", "state_dependent_std"],
)
@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=lambda algo: algo.__name__)
def test_on_policy_training_keeps_the_gaussian_entropy_above_the_floor_in_every_state(algo, policy_kwargs):
    model = _train(algo, ReachTargetEnv(), **policy_kwargs)
    policy = model.policy
    with th.no_grad():
        distribution = policy.get_distribution(_states(model))
    entropies = gaussian_entropy(distribution.distribution.scale.log())
    assert th.isfinite(entropies).all()
    assert entropies.min().item() >= policy.entropy_floor() - FLOAT_TOLERANCE
    assert policy.entropy_floor() == pytest.approx(-1.5)
    log_stds = distribution.distribution.scale.log()
    # A state-dependent head shares the same entropy differently between dimensions in each state.
    spread_over_states = log_stds.std(dim=0).max().item()
    assert (
        spread_over_states > 1e-3 if policy_kwargs.get("state_dependent_std") else spread_over_states == 0.0
    )


def test_truncated_policy_lives_on_the_action_bounds_not_the_unit_box():
    model = _train(ERAPPO, ReachTargetEnv())
    policy = model.policy
    assert isinstance(policy.action_dist, TruncatedNormalDistribution) and not policy.squash_output
    obs = np.random.default_rng(0).uniform(-1, 1, (500, 4)).astype(np.float32)
    actions, _ = model.predict(obs)
    assert np.all(np.abs(actions) <= 2.0)
    with th.no_grad():
        distribution = policy.get_distribution(th.as_tensor(obs))
        assert th.isfinite(distribution.log_prob(th.full((500, 3), 1.9))).all()
        mean_actions = policy.action_net(policy.mlp_extractor.forward_actor(th.as_tensor(obs)))
    np.testing.assert_allclose(
        model.predict(obs, deterministic=True)[0], 2.0 * np.tanh(mean_actions.numpy()), rtol=1e-5, atol=1e-6
    )


def test_tanh_policy_squashes_and_the_algorithm_rescales_to_the_bounds():
    model = _train(ERAPPO, ReachTargetEnv(), action_distribution="tanh")
    policy = model.policy
    assert isinstance(policy.action_dist, SquashedDiagGaussianDistribution) and policy.squash_output
    obs = np.random.default_rng(0).uniform(-1, 1, (500, 4)).astype(np.float32)
    assert np.all(np.abs(model.predict(obs)[0]) <= 2.0)
    with th.no_grad():
        mean_actions = policy.action_net(policy.mlp_extractor.forward_actor(th.as_tensor(obs)))
    np.testing.assert_allclose(
        model.predict(obs, deterministic=True)[0], 2.0 * np.tanh(mean_actions.numpy()), rtol=1e-5, atol=1e-6
    )


def test_state_dependent_std_head_is_in_the_optimizer_and_trained():
    env = ReachTargetEnv()
    model = ERAPPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=2, state_dependent_std=True, seed=0)
    policy = model.policy
    optimized = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in policy.log_std_net.parameters())
    assert optimized == {id(p) for p in policy.parameters()}
    assert not hasattr(policy, "log_std")
    before = [p.detach().clone() for p in policy.log_std_net.parameters()]
    model.learn(128)
    assert any(not th.equal(b, p) for b, p in zip(before, policy.log_std_net.parameters(), strict=True))


@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=lambda algo: algo.__name__)
def test_discrete_actions_keep_the_categorical_entropy_above_min_entropy(algo):
    model = _train(algo, "CartPole-v1", min_entropy=0.4)
    policy = model.policy
    with th.no_grad():
        logits = policy.get_distribution(_states(model)).distribution.logits
    entropies = categorical_entropy(logits)
    # SoftmaxERA's inverse is an approximation (spec 2); with two classes it errs on the safe side.
    assert entropies.min().item() >= 0.4 - 1e-3
    assert policy.entropy_floor() == 0.4


@pytest.mark.parametrize("construction", ["mixture", "calibrated"])
@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=lambda algo: algo.__name__)
def test_tight_discrete_floor_is_reached_by_a_saturated_policy(algo, construction):
    """With a tight construction the floor is the policy's least entropy: a saturated action head reaches it."""
    model = _train(algo, "CartPole-v1", steps=64, min_entropy=0.4, softmax_construction=construction)
    policy = model.policy
    with th.no_grad():
        policy.action_net.weight.mul_(1e4)
        entropies = categorical_entropy(policy.get_distribution(_states(model)).distribution.logits.double())
    assert entropies.min().item() >= 0.4 - 1e-5  # float32 logits
    assert entropies.min().item() <= 0.4 + 1e-3


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [("Pendulum-v1", {}), ("CartPole-v1", {"min_entropy": 0.3})],
    ids=["Box", "Discrete"],
)
def test_recurrent_ppo_trains_with_the_era_recurrent_policy_and_logs_the_floor(env_id, kwargs, tmp_path):
    from stable_baselines3.common.logger import configure

    model = RecurrentPPO(
        ERARecurrentActorCriticPolicy,
        env_id,
        n_steps=64,
        batch_size=32,
        n_epochs=1,
        policy_kwargs=dict(net_arch=TINY_NET, lstm_hidden_size=16, **kwargs),
        seed=0,
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(128, callback=ERAEntropyCallback(log_freq=1, n_states=64))
    stats = era_entropy_stats(model, 64)
    if env_id == "Pendulum-v1":
        assert stats["gaussian_entropy_min"] >= stats["entropy_floor"] - FLOAT_TOLERANCE
    else:
        assert stats["policy_entropy"] >= stats["entropy_floor"] == 0.3
    assert np.isfinite(stats["policy_entropy"])
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert "era/entropy_floor" in header and "era/policy_entropy" in header


def test_plain_ppo_accepts_the_era_policy_class():
    model = PPO(
        ERAActorCriticPolicy,
        ReachTargetEnv(),
        n_steps=64,
        batch_size=32,
        n_epochs=1,
        ent_coef=0.0,
        policy_kwargs=dict(net_arch=TINY_NET, target_entropy=-2.0, state_dependent_std=True),
        seed=0,
    )
    model.learn(64)
    assert isinstance(model.policy, ERAActorCriticPolicy)
    with th.no_grad():
        distribution = model.policy.get_distribution(_states(model))
    assert isinstance(distribution, TruncatedNormalDistribution)
    entropies = gaussian_entropy(distribution.distribution.scale.log())
    # A state-dependent ERA head: the floor binds (log_std_min is far), so every state sits on it.
    th.testing.assert_close(entropies, th.full_like(entropies, -2.0), atol=1e-4, rtol=0)


def test_rollout_log_std_is_reused_until_a_parameter_changes():
    model = ERAPPO("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), seed=0)
    policy = model.policy
    obs = th.zeros((1, *model.observation_space.shape))

    def rollout_log_std() -> th.Tensor:
        with th.no_grad():
            return policy._state_independent_log_std()

    def fresh_log_std() -> th.Tensor:
        return policy.log_std_era(policy.log_std).detach()

    first = rollout_log_std()
    assert rollout_log_std() is first  # nothing changed: not recomputed
    th.testing.assert_close(first, fresh_log_std(), rtol=0, atol=0)
    # An optimizer step writes to log_std in place: the next rollout step sees the new values.
    policy.optimizer.zero_grad()
    policy.get_distribution(obs).log_prob(th.tensor([[1.5, -0.5, 0.1]])).sum().backward()
    policy.optimizer.step()
    assert not th.equal(fresh_log_std(), first)
    th.testing.assert_close(rollout_log_std(), fresh_log_std(), rtol=0, atol=0)
    # So do load_state_dict and the ERA module's own buffers (delta).
    other = ERAPPO("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET, log_std_init=-1.0))
    policy.load_state_dict(other.policy.state_dict())
    th.testing.assert_close(rollout_log_std(), fresh_log_std(), rtol=0, atol=0)
    with th.no_grad():
        policy.log_std_era.delta.fill_(0.3)
    th.testing.assert_close(rollout_log_std(), fresh_log_std(), rtol=0, atol=0)
    # The distribution of a rollout step uses it; with gradient it is recomputed and stays differentiable.
    with th.no_grad():
        scale = policy.get_distribution(obs).distribution.scale
    th.testing.assert_close(scale[0], fresh_log_std().exp(), rtol=0, atol=0)
    assert policy._state_independent_log_std().requires_grad


def test_rollout_log_probs_are_those_the_update_computes_for_the_same_actions():
    # PPO's ratio exp(log_prob - old_log_prob) starts at 1: the one-pass rollout log-prob must agree.
    model = ERAPPO("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), seed=0)
    obs = _states(model, 256)
    with th.no_grad():
        actions, _, rollout_log_prob = model.policy(obs)
    _, update_log_prob, _ = model.policy.evaluate_actions(obs, actions)
    assert th.isfinite(rollout_log_prob).all()
    th.testing.assert_close(rollout_log_prob, update_log_prob.detach(), rtol=1e-5, atol=1e-4)


def _learn_recording_entropy_graphs(algo, monkeypatch, host_train=None, **kwargs):
    """Parameters after ``learn`` (several updates), and whether each entropy of the updates had a graph."""
    seen = []
    original = TruncatedNormalDistribution.entropy

    def entropy(self):
        value = original(self)
        if th.is_grad_enabled():  # an update's (the logging's measurements run without gradient)
            seen.append(value.requires_grad)
        return value

    monkeypatch.setattr(TruncatedNormalDistribution, "entropy", entropy)
    if host_train is not None:
        monkeypatch.setattr(algo, "train", host_train)
    model = algo(
        "MlpPolicy",
        ReachTargetEnv(),
        policy_kwargs=dict(net_arch=TINY_NET),
        seed=0,
        **ON_POLICY_KWARGS[algo],
        **kwargs,
    ).learn(512)
    monkeypatch.undo()
    return [p.detach().clone() for p in model.policy.parameters()], seen


@pytest.mark.parametrize(("algo", "host"), [(ERAPPO, PPO), (ERAA2C, A2C)], ids=["ERAPPO", "ERAA2C"])
def test_entropy_without_graph_at_zero_ent_coef_changes_no_gradient(algo, host, monkeypatch):
    # ent_coef=0: the loss holds 0 * entropy, so computing the entropy without a graph must leave every
    # parameter bit-identical after all the updates (same seed, same rollouts, same minibatches).
    fast, fast_seen = _learn_recording_entropy_graphs(algo, monkeypatch)
    reference, reference_seen = _learn_recording_entropy_graphs(algo, monkeypatch, host_train=host.train)
    assert fast_seen and not any(fast_seen) and reference_seen and all(reference_seen)
    assert len(fast) == len(reference)
    for got, expected in zip(fast, reference, strict=True):
        assert th.equal(got, expected)


@pytest.mark.filterwarnings("ignore:ent_coef=")
def test_entropy_keeps_its_graph_where_the_loss_reads_it(monkeypatch):
    _, seen = _learn_recording_entropy_graphs(ERAPPO, monkeypatch, ent_coef=0.01)
    assert seen and all(seen)


def test_discrete_policy_applies_the_softmax_era_of_its_own_tau():
    env = gym.make("CartPole-v1")
    policy = ERAActorCriticPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, min_entropy=0.4, softmax_tau=6.0
    )
    obs = th.as_tensor(np.random.default_rng(0).standard_normal((64, 4)), dtype=th.float32)
    with th.no_grad():
        policy.action_net.weight.mul_(30.0)  # logits far apart, where tau shapes the map
        logits = policy.action_net(policy.mlp_extractor.forward_actor(policy.extract_features(obs)))
        got = policy.get_distribution(obs).distribution.logits
        expected = th.log_softmax(SoftmaxERA(2, 0.4, 6.0)(logits), dim=-1)
        default_tau = th.log_softmax(SoftmaxERA(2, 0.4)(logits), dim=-1)
    th.testing.assert_close(got, expected)
    assert not th.allclose(expected, default_tau, atol=1e-3)


def test_state_dependent_std_head_starts_with_sb3s_small_orthogonal_init():
    # As SB3 initialises its action head (gain 0.01): every state starts with nearly the same log-std.
    env = ReachTargetEnv()
    policy = ERAActorCriticPolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, state_dependent_std=True
    )
    singular_values = th.linalg.svdvals(policy.log_std_net.weight.detach())
    th.testing.assert_close(singular_values, th.full_like(singular_values, 0.01))
    assert not policy.log_std_net.bias.any()


def test_rebuilt_optimizer_is_the_one_sb3_would_build():
    # The schedule's value at the start (progress_remaining = 1), the optimizer class and its kwargs.
    env = ReachTargetEnv()
    policy = ERAActorCriticPolicy(
        env.observation_space,
        env.action_space,
        lambda progress_remaining: 5e-4 * progress_remaining,
        optimizer_class=th.optim.RMSprop,
        optimizer_kwargs=dict(alpha=0.9, eps=1e-5),
    )
    assert isinstance(policy.optimizer, th.optim.RMSprop)
    group = policy.optimizer.param_groups[0]
    assert (group["lr"], group["alpha"], group["eps"]) == (5e-4, 0.9, 1e-5)


def test_host_positional_parameters_reach_the_host_policy():
    env = ReachTargetEnv()
    policy = ERAActorCriticPolicy(env.observation_space, env.action_space, lambda _: 1e-3, [8], nn.ReLU)
    assert policy.net_arch == [8] and policy.activation_fn is nn.ReLU
    assert policy.action_net.in_features == 8


def test_entropy_stats_report_the_compensation_in_use_for_box_actions_only():
    env = ReachTargetEnv()
    policy = ERAActorCriticPolicy(env.observation_space, env.action_space, lambda _: 1e-3, delta=0.3)
    stats = policy.entropy_stats(th.zeros(8, 4))
    assert stats["delta"] == pytest.approx(0.3)
    assert stats["entropy_floor"] == pytest.approx(-1.5 + 0.3)
    cartpole = gym.make("CartPole-v1")
    discrete = ERAActorCriticPolicy(
        cartpole.observation_space, cartpole.action_space, lambda _: 1e-3, min_entropy=0.4
    )
    assert "delta" not in discrete.entropy_stats(th.zeros(8, 4))


def _recurrent_policy(low: float, high: float, action_distribution: str) -> ERARecurrentActorCriticPolicy:
    env = ReachTargetEnv()
    box = spaces.Box(np.float32(low), np.float32(high), (3,), np.float32)
    return ERARecurrentActorCriticPolicy(
        env.observation_space,
        box,
        lambda _: 1e-3,
        lstm_hidden_size=8,
        action_distribution=action_distribution,
    )


@pytest.mark.parametrize(("low", "high"), [(-2.0, 2.0), (-1.0, 2.0), (-2.0, 1.0), (0.0, 1.0)])
def test_recurrent_tanh_policy_is_refused_for_bounds_other_than_the_unit_box(low, high):
    with pytest.raises(ValueError) as error:
        _recurrent_policy(low, high, "tanh")
    box = spaces.Box(np.float32(low), np.float32(high), (3,), np.float32)
    assert str(error.value) == (
        "action_distribution='tanh' with RecurrentPPO needs a Box with bounds [-1, 1] (RecurrentPPO clips "
        f"actions instead of rescaling them), got {box}; use 'truncated'"
    )
    assert isinstance(_recurrent_policy(low, high, "truncated").action_dist, TruncatedNormalDistribution)


def test_recurrent_tanh_policy_on_the_unit_box_squashes():
    policy = _recurrent_policy(-1.0, 1.0, "tanh")
    assert isinstance(policy.action_dist, SquashedDiagGaussianDistribution) and policy.squash_output


def test_constructor_parameters_hold_every_era_parameter():
    # What SB3 saves and passes back at load: every keyword of the ERA mixin, with the value in use.
    env = ReachTargetEnv()
    knobs = dict(target_entropy=-2.0, log_std_min=-6.0, log_std_max=0.5, delta=0.1, state_dependent_std=True)
    policy = ERAActorCriticPolicy(env.observation_space, env.action_space, lambda _: 1e-3, **knobs)
    era_parameters = [
        name
        for name, parameter in inspect.signature(ERAActorCriticMixin.__init__).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    saved = policy._get_constructor_parameters()
    assert {name: saved[name] for name in era_parameters} == dict(
        target_entropy=-2.0,
        target_entropy_per_dim=None,
        log_std_min=-6.0,
        log_std_max=0.5,
        action_distribution="truncated",
        delta=0.1,
        learn_delta=False,
        floor="state",
        state_dependent_std=True,
        min_entropy=None,
        softmax_tau=4.0,
        softmax_construction="paper",
    )
