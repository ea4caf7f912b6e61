"""ERA actors for SAC, TQC and CrossQ: short real trainings, the floor on the trained policy, learned delta."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

from era_core import BatchGaussianERA, GaussianERA, gaussian_entropy
from sb3_era import (
    ERASAC,
    ERATQC,
    ERAActor,
    ERACrossQ,
    ERACrossQActor,
    ERACrossQPolicy,
    ERASACCnnPolicy,
    ERASACMultiInputPolicy,
    ERASACPolicy,
    ERATQCCnnPolicy,
    ERATQCMultiInputPolicy,
    ERATQCPolicy,
    TruncatedNormalDistribution,
    distributions,
)

OFF_POLICY = [ERASAC, ERATQC, ERACrossQ]
TRAIN_STEPS = 300
FLOAT_TOLERANCE = 1e-5
# The ERA actor's keyword defaults, written out (a changed default must fail the tests that compare with it).
ERA_DEFAULTS = dict(
    target_entropy=None,
    target_entropy_per_dim=None,
    log_std_min=-8.0,
    log_std_max=0.0,
    action_distribution="truncated",
    delta=0.0,
    learn_delta=False,
    floor="state",
    floor_momentum=0.01,
)


def _train(algo, env, steps: int = TRAIN_STEPS, **kwargs):
    policy_kwargs = dict(net_arch=TINY_NET, **kwargs.pop("policy_kwargs", {}))
    model = algo(
        "MlpPolicy", env, learning_starts=64, batch_size=32, policy_kwargs=policy_kwargs, seed=0, **kwargs
    )
    model.learn(steps)
    return model


def _many_states(model, n_random: int = 2000) -> th.Tensor:
    """Replay-buffer states plus random ones, many far outside the observation range (large inputs)."""
    stored = model.replay_buffer.observations[: model.replay_buffer.pos].reshape(
        -1, *model.observation_space.shape
    )
    scales = np.repeat([1.0, 10.0, 1000.0], n_random // 3)
    random = np.random.default_rng(0).standard_normal((scales.size, stored.shape[1])) * scales[:, None]
    return th.as_tensor(np.concatenate([stored, random]), dtype=th.float32)


def _gaussian_entropies(actor, states: th.Tensor) -> th.Tensor:
    with th.no_grad():
        _, log_std, _ = actor.get_action_dist_params(states)
    return gaussian_entropy(log_std)


@pytest.mark.parametrize("action_distribution", ["truncated", "tanh"])
@pytest.mark.parametrize("algo", OFF_POLICY, ids=lambda algo: algo.__name__)
def test_off_policy_training_keeps_the_gaussian_entropy_above_the_floor_in_every_state(
    algo, action_distribution
):
    model = _train(algo, ReachTargetEnv(), action_distribution=action_distribution)
    actor = model.policy.actor
    assert type(actor.action_dist).__name__ == (
        "TruncatedNormalDistribution"
        if action_distribution == "truncated"
        else "SquashedDiagGaussianDistribution"
    )
    actor.set_training_mode(False)
    entropies = _gaussian_entropies(actor, _many_states(model))
    floor = actor.era.entropy_floor().item()
    assert floor == pytest.approx(-1.5)
    assert th.isfinite(entropies).all()
    assert entropies.min().item() >= floor - FLOAT_TOLERANCE


def test_sac_era_trains_on_pendulum_and_acts_inside_the_bounds():
    model = _train(ERASAC, "Pendulum-v1")
    obs = model.env.reset()
    for _ in range(50):
        action, _ = model.predict(obs)
        assert np.all(np.abs(action) <= 2.0)
        obs, *_ = model.env.step(action)
    # The deterministic action is the mode tanh(mu) of the unit box, rescaled to Pendulum's [-2, 2].
    with th.no_grad():
        mean_actions, _, _ = model.policy.actor.get_action_dist_params(th.as_tensor(obs))
    np.testing.assert_allclose(
        model.predict(obs, deterministic=True)[0], 2.0 * np.tanh(mean_actions.numpy()), rtol=1e-5
    )


def test_sac_era_short_hopper_v5_run_keeps_the_floor():
    model = _train(ERASAC, gym.make("Hopper-v5"), steps=200)
    actor = model.policy.actor
    entropies = _gaussian_entropies(actor, _many_states(model, n_random=300))
    assert entropies.min().item() >= actor.era.entropy_floor().item() - FLOAT_TOLERANCE
    assert actor.era.entropy_floor().item() == pytest.approx(-1.5)


def _actor_with_learned_delta(**kwargs) -> ERASACPolicy:
    env = ReachTargetEnv()
    policy = ERASACPolicy(
        env.observation_space, env.action_space, lambda _: 1e-2, net_arch=TINY_NET, learn_delta=True, **kwargs
    )
    return policy.actor


def test_learned_delta_gets_the_compensation_gradient_instead_of_the_actor_loss_gradient():
    actor = _actor_with_learned_delta()
    states = th.rand(64, 4) * 2 - 1
    actions, log_prob = actor.action_log_prob(states)
    # An arbitrary actor loss that depends on delta through the log-std.
    (actions.square().sum() + 3.0 * log_prob.sum()).backward()
    measured_entropy = -log_prob.detach().mean()
    assert actor.era.delta.grad.item() == pytest.approx(
        (measured_entropy - actor.era.target_entropy).item(), rel=1e-5
    )


def test_learned_delta_gets_no_gradient_from_a_plain_forward_pass():
    actor = _actor_with_learned_delta()
    actor(th.rand(8, 4)).sum().backward()
    assert actor.era.delta.grad.item() == 0.0
    assert any(p is actor.era.delta for group in actor.optimizer.param_groups for p in group["params"])


@pytest.mark.parametrize("algo", [ERASAC, ERACrossQ], ids=lambda algo: algo.__name__)
def test_learned_delta_rises_while_the_final_policy_entropy_is_below_the_target(algo):
    model = _train(algo, ReachTargetEnv(), learn_delta=True, learning_rate=1e-2)
    actor = model.policy.actor
    stats = actor.entropy_stats(th.as_tensor(_many_states(model, n_random=0)))
    # Truncation lowers the entropy below the Gaussian's, so the compensation must grow.
    assert stats["policy_entropy"] < actor.era.target_entropy + stats["delta"]
    assert actor.era.delta.item() > 0.0
    assert stats["entropy_floor"] == pytest.approx(actor.era.target_entropy + actor.era.delta.item())


def test_learned_delta_stays_within_the_feasible_range():
    actor = _actor_with_learned_delta(target_entropy_per_dim=1.0)
    with th.no_grad():
        actor.era.delta.fill_(10.0)
    entropies = _gaussian_entropies(actor, th.rand(32, 4))
    assert th.isfinite(entropies).all()
    assert actor.era.entropy_floor().item() == pytest.approx(actor.era.target_entropy + actor.era.max_delta)


def test_batch_floor_holds_the_batch_mean_entropy_at_the_target_during_training():
    model = _train(ERASAC, ReachTargetEnv(), floor="batch")
    actor = model.policy.actor
    assert type(actor.era).__name__ == "BatchGaussianERA"
    states = _many_states(model, n_random=0)
    actor.set_training_mode(True)
    with th.no_grad():
        _, log_std, _ = actor.get_action_dist_params(states)
    # Away from the log-std bounds the batch shift is exact: the batch-mean entropy is the target.
    assert (log_std > actor.era.log_std_min).all() and (log_std < actor.era.log_std_max).all()
    assert gaussian_entropy(log_std).mean().item() == pytest.approx(actor.era.target_entropy, abs=1e-4)
    # In evaluation the running shift is used: a state's log-std no longer depends on its batch.
    actor.set_training_mode(False)
    with th.no_grad():
        _, batch_log_std, _ = actor.get_action_dist_params(states)
        _, single_log_std, _ = actor.get_action_dist_params(states[:1])
    th.testing.assert_close(batch_log_std[:1], single_log_std)
    assert actor.era.running_shift.item() != 0.0


@pytest.mark.parametrize(
    ("cnn_class", "multi_input_class"),
    [(ERASACCnnPolicy, ERASACMultiInputPolicy), (ERATQCCnnPolicy, ERATQCMultiInputPolicy)],
    ids=["SAC", "TQC"],
)
def test_cnn_and_multi_input_policies_build_era_actors_and_act(cnn_class, multi_input_class):
    image_space = spaces.Box(0, 255, (3, 40, 40), np.uint8)
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
    # Every keyword reaches the host policy and the ERA actor: the network sizes and the ERA knobs.
    knobs = dict(net_arch=[16], target_entropy=-1.0)
    cnn = cnn_class(image_space, action_space, lambda _: 1e-3, **knobs)
    action, _ = cnn.predict(image_space.sample())
    assert action.shape == (2,)
    dict_space = spaces.Dict({"image": image_space, "vector": spaces.Box(-1.0, 1.0, (5,), np.float32)})
    multi = multi_input_class(dict_space, action_space, lambda _: 1e-3, **knobs)
    action, _ = multi.predict(dict_space.sample())
    assert action.shape == (2,)
    for policy, extractor in ((cnn, "NatureCNN"), (multi, "CombinedExtractor")):
        assert isinstance(policy.actor.action_dist, TruncatedNormalDistribution)
        assert type(policy.actor.features_extractor).__name__ == extractor
        assert policy.net_arch == [16] and policy.actor.mu.in_features == 16
        assert policy.actor.era.target_entropy == -1.0


class _DictReachTargetEnv(ReachTargetEnv):
    """ReachTargetEnv observing a dict, for the MultiInput policies."""

    def __init__(self):
        super().__init__()
        self.observation_space = spaces.Dict({"state": self.observation_space})

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return {"state": obs}, info

    def step(self, action):
        obs, *rest = super().step(action)
        return {"state": obs}, *rest


def test_era_sac_trains_and_logs_with_dict_observations(tmp_path):
    from stable_baselines3.common.logger import configure

    model = ERASAC(
        "MultiInputPolicy",
        _DictReachTargetEnv(),
        learning_starts=32,
        batch_size=32,
        policy_kwargs=dict(net_arch=TINY_NET),
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(100, log_interval=1)
    assert isinstance(model.policy, ERASACMultiInputPolicy)
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert "era/gaussian_entropy_min" in header


@pytest.mark.slow
def test_sac_era_solves_pendulum_with_the_default_settings():
    """Learning quality, not just mechanics (the fast tests cover those): 8000 steps, authors' defaults."""
    from stable_baselines3.common.evaluation import evaluate_policy

    model = ERASAC("MlpPolicy", "Pendulum-v1", seed=0)
    model.learn(8000)
    mean_return, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=10)
    # Random play scores about -1200; plain SAC with the same budget and seed scores about -180.
    assert mean_return > -400


def _parameters_after_updates(algo, skip_unread_log_prob: bool, monkeypatch, **kwargs) -> list[th.Tensor]:
    """Parameters after 100 gradient steps of ``learn``, with or without the log-prob shortcut."""
    if not skip_unread_log_prob:
        monkeypatch.setattr(algo, "_log_prob_unread", lambda self: False)
    model = _train(algo, ReachTargetEnv(), steps=164, **kwargs)
    monkeypatch.undo()
    return [p.detach().clone() for p in model.policy.parameters()]


@pytest.mark.parametrize("action_distribution", ["truncated", "tanh"])
@pytest.mark.parametrize("algo", OFF_POLICY, ids=lambda algo: algo.__name__)
def test_skipping_the_unread_log_probs_changes_no_gradient(algo, action_distribution, monkeypatch):
    # Same seed, same batches: the shortcut must leave every parameter bit-identical after all the updates.
    calls = []
    original = algo._log_prob_unread
    monkeypatch.setattr(algo, "_log_prob_unread", lambda self: calls.append(original(self)) or calls[-1])
    fast = _parameters_after_updates(algo, True, monkeypatch, action_distribution=action_distribution)
    assert calls and all(calls)
    reference = _parameters_after_updates(algo, False, monkeypatch, action_distribution=action_distribution)
    assert len(fast) == len(reference)
    for got, expected in zip(fast, reference, strict=True):
        assert th.equal(got, expected)


@pytest.mark.filterwarnings("ignore:ent_coef=")
@pytest.mark.parametrize(
    ("kwargs", "reads_log_probs"),
    [(dict(), False), (dict(ent_coef="auto"), True)],
    ids=["era-default", "learned-temperature"],
)
def test_sampling_without_gradient_computes_the_log_probs_only_where_they_are_read(
    kwargs, reads_log_probs, monkeypatch
):
    # SAC's rollouts never read their actions' log-probabilities; its critic target multiplies them by ent_coef.
    calls = []
    original = distributions._log_prob_of_sample
    monkeypatch.setattr(distributions, "_log_prob_of_sample", lambda *a: calls.append(1) or original(*a))
    model = _train(ERASAC, ReachTargetEnv(), steps=80, **kwargs)
    # 64 steps of random actions, then 16 from the policy, each followed by a gradient step.
    assert isinstance(model.actor.action_dist, TruncatedNormalDistribution)
    assert len(calls) == (16 if reads_log_probs else 0)


@pytest.mark.filterwarnings("ignore:ent_coef=")
@pytest.mark.parametrize(
    "kwargs",
    [dict(ent_coef="auto"), dict(ent_coef=0.1), dict(learn_delta=True)],
    ids=["learned-temperature", "fixed-bonus", "learned-delta"],
)
@pytest.mark.parametrize("algo", OFF_POLICY, ids=lambda algo: algo.__name__)
def test_log_probs_are_computed_wherever_train_reads_them(algo, kwargs):
    assert not algo(
        "MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), **kwargs
    )._log_prob_unread()
    assert algo("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET))._log_prob_unread()


def _direct_actor(actor_class=ERAActor, **knobs) -> ERAActor:
    """An ERA actor built directly, as SB3 builds its ``Actor`` (the policies pass every knob)."""
    env = ReachTargetEnv()
    extractor = FlattenExtractor(env.observation_space)
    return actor_class(
        env.observation_space, env.action_space, TINY_NET, extractor, extractor.features_dim, **knobs
    )


@pytest.mark.parametrize("actor_class", [ERAActor, ERACrossQActor], ids=lambda c: c.__name__)
def test_era_actor_built_directly_has_the_policys_defaults(actor_class):
    actor = _direct_actor(actor_class)
    policy_actor = ERASACPolicy(
        ReachTargetEnv().observation_space, ReachTargetEnv().action_space, lambda _: 1e-3
    ).actor
    assert actor.era_kwargs == policy_actor.era_kwargs == ERA_DEFAULTS
    assert {k: v for k, v in actor._get_constructor_parameters().items() if k in ERA_DEFAULTS} == ERA_DEFAULTS
    assert isinstance(actor.era, GaussianERA) and isinstance(actor.action_dist, TruncatedNormalDistribution)
    assert (actor.era.log_std_min, actor.era.log_std_max, actor.era.target_entropy) == (-8.0, 0.0, -1.5)
    assert actor.era.delta.item() == 0.0 and not actor.era.learn_delta
    assert not actor.log_prob_unread


def test_era_actor_passes_every_knob_to_its_era_module():
    actor = _direct_actor(
        target_entropy_per_dim=-1.0, log_std_min=-5.0, log_std_max=0.5, delta=0.2, learn_delta=True
    )
    era = actor.era
    assert (era.target_entropy, era.log_std_min, era.log_std_max, era.learn_delta) == (-3.0, -5.0, 0.5, True)
    assert era.delta.item() == pytest.approx(0.2)
    assert actor.era_kwargs == dict(
        ERA_DEFAULTS,
        target_entropy_per_dim=-1.0,
        log_std_min=-5.0,
        log_std_max=0.5,
        delta=0.2,
        learn_delta=True,
    )
    assert _direct_actor(target_entropy=-2.0).era.target_entropy == -2.0
    batch = _direct_actor(floor="batch", floor_momentum=0.5, log_std_min=-5.0, log_std_max=0.5).era
    assert isinstance(batch, BatchGaussianERA)
    assert (batch.momentum, batch.log_std_min, batch.log_std_max, batch.target_entropy) == (
        0.5,
        -5.0,
        0.5,
        -1.5,
    )
    assert _direct_actor(floor="batch").era.momentum == 0.01
    assert _direct_actor(floor="batch", target_entropy=-2.0).era.target_entropy == -2.0
    assert _direct_actor(floor="batch", target_entropy_per_dim=-1.0).era.target_entropy == -3.0
    tanh = _direct_actor(action_distribution="tanh")
    assert type(tanh.action_dist) is SquashedDiagGaussianDistribution


@pytest.mark.parametrize(
    "policy_class", [ERASACPolicy, ERATQCPolicy, ERACrossQPolicy], ids=lambda c: c.__name__
)
def test_make_actor_builds_an_era_actor_on_the_given_features_extractor(policy_class):
    # SB3's override point: make_actor(features_extractor) shares the given extractor (as with critics).
    env = ReachTargetEnv()
    policy = policy_class(
        env.observation_space, env.action_space, lambda _: 1e-3, net_arch=TINY_NET, floor="batch"
    )
    extractor = FlattenExtractor(env.observation_space)
    actor = policy.make_actor(extractor)
    assert actor.features_extractor is extractor
    assert type(actor) is type(policy.actor) and actor.era_kwargs == policy.era_kwargs
    # The policy's defaults reach the actor: the batch floor's running shift moves by 1% of each batch.
    assert actor.era.momentum == policy.actor.era.momentum == 0.01


@pytest.mark.parametrize(
    "policy_class", [ERASACPolicy, ERATQCPolicy, ERACrossQPolicy], ids=lambda c: c.__name__
)
def test_policy_passes_and_saves_every_era_knob(policy_class):
    env = ReachTargetEnv()
    knobs = dict(
        ERA_DEFAULTS,
        target_entropy=-2.0,
        log_std_min=-6.0,
        log_std_max=0.5,
        action_distribution="tanh",
        floor="batch",
        floor_momentum=0.05,
    )
    policy = policy_class(env.observation_space, env.action_space, lambda _: 1e-3, net_arch=TINY_NET, **knobs)
    saved = policy._get_constructor_parameters()
    assert {name: saved[name] for name in knobs} == knobs
    assert policy.actor.era_kwargs == knobs
    era = policy.actor.era
    assert (era.target_entropy, era.log_std_min, era.log_std_max, era.momentum) == (-2.0, -6.0, 0.5, 0.05)


@pytest.mark.parametrize(
    "policy_class", [ERASACPolicy, ERATQCPolicy, ERACrossQPolicy], ids=lambda c: c.__name__
)
def test_host_positional_parameters_reach_the_host_policy(policy_class):
    env = ReachTargetEnv()
    policy = policy_class(env.observation_space, env.action_space, lambda _: 1e-3, [8], nn.ReLU)
    assert policy.net_arch == [8] and policy.activation_fn is nn.ReLU
    assert policy.actor.mu.in_features == 8
