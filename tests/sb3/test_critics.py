"""The ERA authors' critic (LayerNorm + ELU hidden layers, AdamW) on the ERA and the baseline SAC/TQC policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from sb3_contrib import TQC
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3 import SAC
from torch import nn

from sb3_era import (
    ERASAC,
    ERATQC,
    CriticOptionsSACPolicy,
    CriticOptionsTQCPolicy,
    ERASACPolicy,
    authors_critic_kwargs,
)
from sb3_era.critics import AUTHORS_CRITIC_WEIGHT_DECAY, LAYER_NORM_EPS

# (algorithm, policy): the ERA policies through their algorithms' alias, the baselines inside stock algorithms.
MODELS = {
    "ERASAC": (ERASAC, "MlpPolicy"),
    "ERATQC": (ERATQC, "MlpPolicy"),
    "SAC-baseline": (SAC, CriticOptionsSACPolicy),
    "TQC-baseline": (TQC, CriticOptionsTQCPolicy),
}
AUTHORS_HIDDEN_LAYER = [nn.Linear, nn.LayerNorm, nn.ELU]
OBS = np.random.default_rng(0).uniform(-1, 1, (64, 4)).astype(np.float32)


def _model(name: str, env=None, **kwargs):
    algo, policy = MODELS[name]
    policy_kwargs = {"net_arch": TINY_NET, **authors_critic_kwargs(), **kwargs.pop("policy_kwargs", {})}
    settings = {"learning_starts": 32, "batch_size": 16, "seed": 0, "device": "cpu", **kwargs}
    return algo(policy, env or ReachTargetEnv(), policy_kwargs=policy_kwargs, **settings)


def _layer_types(network: nn.Module) -> list[type[nn.Module]]:
    return [type(module) for module in network]


def _ids(parameters) -> set[int]:
    return {id(parameter) for parameter in parameters}


def _optimized_ids(optimizer: th.optim.Optimizer) -> set[int]:
    return {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}


@pytest.mark.parametrize("name", MODELS)
def test_authors_critic_has_linear_layernorm_elu_per_hidden_layer_and_a_linear_output(name):
    policy = _model(name).policy
    output_dim = 25 if "TQC" in name else 1  # TQC's critic outputs its quantiles
    for critic in (policy.critic, policy.critic_target):
        assert len(critic.q_networks) == 2
        for index, q_net in enumerate(critic.q_networks):
            assert getattr(critic, f"qf{index}") is q_net  # registered: in state_dict and .parameters()
            assert _layer_types(q_net) == AUTHORS_HIDDEN_LAYER * len(TINY_NET) + [nn.Linear]
            assert q_net[-1].out_features == output_dim
            for norm, linear in zip(q_net[1::3], q_net[0::3], strict=False):
                assert norm.normalized_shape == (linear.out_features,)
                assert norm.eps == LAYER_NORM_EPS
    # The actor is SB3's: ReLU hidden layers, no LayerNorm.
    actor_layers = _layer_types(policy.actor.latent_pi)
    assert actor_layers == [nn.Linear, nn.ReLU] * len(TINY_NET)
    th.testing.assert_close(policy.critic_target.state_dict(), policy.critic.state_dict(), rtol=0.0, atol=0.0)


@pytest.mark.parametrize("name", MODELS)
def test_critic_optimizer_is_adamw_over_the_critic_and_the_actor_keeps_adam(name):
    policy = _model(name, learning_rate=3e-4).policy
    critic_optimizer, actor_optimizer = policy.critic.optimizer, policy.actor.optimizer
    assert type(critic_optimizer) is th.optim.AdamW
    assert type(actor_optimizer) is th.optim.Adam
    # optax.adamw's defaults (torch's AdamW would decay with 0.01).
    assert critic_optimizer.defaults["weight_decay"] == AUTHORS_CRITIC_WEIGHT_DECAY == 1e-4
    assert critic_optimizer.defaults["eps"] == 1e-8
    assert critic_optimizer.defaults["betas"] == (0.9, 0.999)
    assert actor_optimizer.defaults["weight_decay"] == 0.0
    for optimizer in (critic_optimizer, actor_optimizer):
        assert [group["lr"] for group in optimizer.param_groups] == [3e-4]
    assert _optimized_ids(critic_optimizer) == _ids(policy.critic.parameters())
    assert _optimized_ids(actor_optimizer) == _ids(policy.actor.parameters())
    assert not _optimized_ids(critic_optimizer) & _ids(policy.critic_target.parameters())


def test_a_features_extractor_shared_with_the_actor_stays_out_of_the_critic_optimizer_as_in_sb3():
    policy = _model("SAC-baseline", policy_kwargs=dict(share_features_extractor=True)).policy
    critic_parameters = [
        parameter for name, parameter in policy.critic.named_parameters() if "features_extractor" not in name
    ]
    assert type(policy.critic.optimizer) is th.optim.AdamW
    assert _optimized_ids(policy.critic.optimizer) == _ids(critic_parameters)
    assert policy.critic.features_extractor is policy.actor.features_extractor


def test_default_options_build_exactly_sb3s_sac_policy():
    stock = SAC("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), seed=0).policy
    options = SAC(
        CriticOptionsSACPolicy, ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), seed=0
    ).policy
    assert stock.state_dict().keys() == options.state_dict().keys()
    th.testing.assert_close(options.state_dict(), stock.state_dict(), rtol=0.0, atol=0.0)
    for name in ("actor", "critic"):
        stock_optimizer, optimizer = getattr(stock, name).optimizer, getattr(options, name).optimizer
        assert type(optimizer) is type(stock_optimizer) is th.optim.Adam
        assert optimizer.defaults == stock_optimizer.defaults


def test_layer_norm_is_inserted_into_sb3s_critic_keeping_its_linear_weights():
    stock = SAC("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), seed=0).policy
    normalized = SAC(
        CriticOptionsSACPolicy,
        ReachTargetEnv(),
        policy_kwargs=dict(net_arch=TINY_NET, critic_layer_norm=True),
        seed=0,
    ).policy
    for stock_net, q_net in zip(stock.critic.q_networks, normalized.critic.q_networks, strict=True):
        assert _layer_types(q_net) == [nn.Linear, nn.LayerNorm, nn.ReLU] * len(TINY_NET) + [nn.Linear]
        stock_linears = [module for module in stock_net if isinstance(module, nn.Linear)]
        linears = [module for module in q_net if isinstance(module, nn.Linear)]
        for stock_linear, linear in zip(stock_linears, linears, strict=True):
            th.testing.assert_close(linear.weight, stock_linear.weight, rtol=0.0, atol=0.0)


def test_each_critic_option_works_alone():
    policy = _model(
        "ERASAC",
        policy_kwargs=dict(
            critic_layer_norm=False,
            critic_activation_fn=nn.Tanh,
            critic_optimizer_class=th.optim.SGD,
            critic_optimizer_kwargs=dict(momentum=0.5),
        ),
    ).policy
    assert _layer_types(policy.critic.qf0) == [nn.Linear, nn.Tanh] * len(TINY_NET) + [nn.Linear]
    assert type(policy.critic.optimizer) is th.optim.SGD
    assert policy.critic.optimizer.defaults["momentum"] == 0.5
    assert type(policy.actor.optimizer) is th.optim.Adam
    # Without critic_optimizer_kwargs the critic takes the shared optimizer_kwargs, as in SB3.
    shared = SAC(
        CriticOptionsSACPolicy,
        ReachTargetEnv(),
        policy_kwargs=dict(
            net_arch=TINY_NET,
            optimizer_kwargs=dict(eps=1e-5),
            critic_optimizer_class=th.optim.AdamW,
        ),
    ).policy
    assert shared.critic.optimizer.defaults["eps"] == shared.actor.optimizer.defaults["eps"] == 1e-5


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("critic_layer_norm", "yes", "critic_layer_norm must be True or False"),
        ("critic_activation_fn", nn.ELU(), r"critic_activation_fn must be None or a subclass of .*Module"),
        (
            "critic_optimizer_class",
            "AdamW",
            r"critic_optimizer_class must be None or a subclass of .*Optimizer",
        ),
        (
            "critic_optimizer_kwargs",
            [("weight_decay", 1e-4)],
            "critic_optimizer_kwargs must be None or a dict",
        ),
        ("critic_optimizer_kwargs", dict(lr=1e-3), "must not hold 'lr'"),
    ],
)
def test_bad_critic_options_raise_at_construction(option, value, message):
    env = ReachTargetEnv()
    for policy_class in (ERASACPolicy, CriticOptionsSACPolicy, CriticOptionsTQCPolicy):
        with pytest.raises(ValueError, match=message):
            policy_class(env.observation_space, env.action_space, lambda _: 1e-3, **{option: value})


@pytest.mark.parametrize("name", MODELS)
def test_model_save_load_keeps_the_authors_critic_its_optimizer_state_and_actions(name, tmp_path):
    algo = MODELS[name][0]
    model = _model(name)
    model.learn(64)
    model.save(tmp_path / "model")
    loaded = algo.load(tmp_path / "model", device="cpu")
    for option, value in authors_critic_kwargs().items():
        assert loaded.policy.critic_options[option] == value
        assert loaded.policy_kwargs[option] == value
    assert _layer_types(loaded.policy.critic.qf1) == AUTHORS_HIDDEN_LAYER * len(TINY_NET) + [nn.Linear]
    assert type(loaded.policy.critic.optimizer) is th.optim.AdamW
    assert type(loaded.policy.actor.optimizer) is th.optim.Adam
    saved_state = model.policy.critic.optimizer.state_dict()
    loaded_state = loaded.policy.critic.optimizer.state_dict()
    assert loaded_state["param_groups"] == saved_state["param_groups"]
    assert saved_state["state"]  # the critic has taken steps, so its AdamW moments are saved
    th.testing.assert_close(loaded_state["state"], saved_state["state"])
    th.testing.assert_close(loaded.policy.state_dict(), model.policy.state_dict())
    np.testing.assert_array_equal(
        loaded.predict(OBS, deterministic=True)[0], model.predict(OBS, deterministic=True)[0]
    )


@pytest.mark.parametrize("policy_class", [ERASACPolicy, CriticOptionsSACPolicy, CriticOptionsTQCPolicy])
def test_policy_save_load_keeps_the_critic_options(policy_class, tmp_path):
    env = ReachTargetEnv()
    policy = policy_class(
        env.observation_space, env.action_space, lambda _: 1e-3, net_arch=TINY_NET, **authors_critic_kwargs()
    )
    policy.save(tmp_path / "policy.pt")
    loaded = policy_class.load(tmp_path / "policy.pt", device="cpu")
    assert loaded.critic_options == policy.critic_options == authors_critic_kwargs()
    assert _layer_types(loaded.critic.qf0) == AUTHORS_HIDDEN_LAYER * len(TINY_NET) + [nn.Linear]
    th.testing.assert_close(loaded.state_dict(), policy.state_dict())
    obs = th.as_tensor(OBS)
    actions = th.as_tensor(policy.predict(OBS, deterministic=True)[0])
    th.testing.assert_close(loaded.critic(obs, actions), policy.critic(obs, actions))


def test_adamw_step_with_weight_decay_1e4_is_optaxs_adamw_update():
    # optax.adamw(lr, weight_decay=wd): p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p); on the first
    # step m_hat = g and v_hat = g**2.
    policy = _model("SAC-baseline", learning_rate=3e-4).policy
    parameters = list(policy.critic.parameters())
    before = [parameter.detach().clone() for parameter in parameters]
    gradients = [th.randn_like(parameter) for parameter in parameters]
    for parameter, gradient in zip(parameters, gradients, strict=True):
        parameter.grad = gradient
    policy.critic.optimizer.step()
    for parameter, start, gradient in zip(parameters, before, gradients, strict=True):
        expected = start - 3e-4 * (gradient / (gradient.abs() + 1e-8) + 1e-4 * start)
        th.testing.assert_close(parameter.detach(), expected)


@pytest.mark.parametrize("name", ["ERASAC", "SAC-baseline"])
def test_pendulum_training_steps_the_critic_with_adamw_and_the_actor_with_adam(name):
    model = _model(
        name,
        env="Pendulum-v1",
        learning_starts=100,
        batch_size=64,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs=dict(net_arch=[64, 64]),
    )
    policy = model.policy
    initial = {key: value.clone() for key, value in policy.state_dict().items()}
    model.learn(400)
    gradient_steps = model._n_updates
    assert gradient_steps == 400 - 100
    # Every critic and actor parameter (LayerNorm gains and biases included) was stepped by its own
    # optimizer, once per gradient step; the target followed by Polyak averaging.
    for network in (policy.critic, policy.actor):
        steps = {id(parameter): int(state["step"]) for parameter, state in network.optimizer.state.items()}
        assert steps == {id(parameter): gradient_steps for parameter in network.parameters()}
    # With one action dimension ERA pins the log-std at the floor: its head gets no gradient.
    frozen = ("actor.log_std.",) if name == "ERASAC" else ()
    trained = [
        f"{network}.{key}"
        for network in ("critic", "critic_target", "actor")
        for key, parameter in getattr(policy, network).named_parameters()
        if parameter.requires_grad or network == "critic_target"
    ]
    assert any(".1.weight" in key for key in trained)  # the LayerNorm gains are among them
    for key in trained:
        if not key.startswith(frozen):
            assert not th.equal(policy.state_dict()[key], initial[key]), key
    # The critic learned the sign and scale of Pendulum's values: every reward is in [-16.3, 0], so the
    # fitted Q(s, pi(s)) is negative in (almost) every visited state, where the untrained critic's outputs
    # scatter around 0 (after one gradient step: 57% negative, mean -0.18; after 300: all, mean -9).
    obs = th.as_tensor(model.replay_buffer.observations[:400, 0])
    with th.no_grad():
        q_values = th.min(*policy.critic(obs, policy.actor(obs, deterministic=True)))
    assert (q_values < 0).float().mean() > 0.95
    assert q_values.mean() < -1.0
