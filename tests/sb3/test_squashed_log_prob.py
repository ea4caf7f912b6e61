"""The tanh-squashed Gaussian's log-probability in one pass (sb3_era.fused_log_prob.TanhGaussianLogProb) against
SB3's ops: the rollouts and minibatches of PPO and A2C with ``action_distribution="tanh"``."""

from __future__ import annotations

import math

import pytest
import torch as th
from fused_training import assert_training_matches_reference
from sb3_era_envs import TINY_NET, ReachTargetEnv
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

from era_core import GaussianERA
from sb3_era import ERAA2C, ERAPPO
from sb3_era.distributions import RolloutSquashedDiagGaussianDistribution

BATCH, DIM = 32, 3


@pytest.fixture
def eager(monkeypatch):
    """Run the body on SB3's ops: no training pass is fused."""

    def without_fusion():
        monkeypatch.setattr(RolloutSquashedDiagGaussianDistribution, "fuse_training_pass", False)

    return without_fusion


def _inputs(shared_std: bool, dtype: th.dtype, seed: int = 0):
    generator = th.Generator().manual_seed(seed)
    mean = 3.0 * th.randn(BATCH, DIM, generator=generator, dtype=dtype)
    std_shape = (DIM,) if shared_std else (BATCH, DIM)
    pre_activation = 2.0 * th.randn(std_shape, generator=generator, dtype=dtype)
    actions = th.tanh(th.randn(BATCH, DIM, generator=generator, dtype=dtype))
    actions[0] = th.tensor([1.0, -1.0, 0.0])  # on the bounds, where SB3 clips before atanh
    return mean.requires_grad_(True), pre_activation.requires_grad_(True), actions


def _pass(era: GaussianERA | None, mean, pre_activation, actions):
    """(log_prob, d/d mean, d/d pre-activation, whether the Normal was built) of one training pass."""
    mean.grad = pre_activation.grad = None
    dist = RolloutSquashedDiagGaussianDistribution(DIM)
    dist.proba_distribution(mean, pre_activation if era is None else era(pre_activation))
    log_prob = dist.log_prob(actions)
    # Weights that give every element its own gradient.
    (th.linspace(-1.0, 2.0, BATCH, dtype=log_prob.dtype) * log_prob).sum().backward()
    return log_prob.detach(), mean.grad.clone(), pre_activation.grad.clone(), "distribution" in dist.__dict__


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("shared_std", [True, False], ids=["state_independent", "state_dependent"])
@pytest.mark.parametrize("with_era", [True, False], ids=["era", "log_std"])
def test_fused_pass_gives_sb3s_values_and_gradients(eager, dtype, shared_std, with_era):
    era = GaussianERA(DIM, log_std_min=-3.0, log_std_max=-0.5).to(dtype) if with_era else None
    inputs = _inputs(shared_std, dtype)
    *fused, fused_built = _pass(era, *inputs)
    eager()
    *reference, reference_built = _pass(era, *inputs)
    assert not fused_built and reference_built
    # float64 on the fused path; SB3's float32 ops differ by their rounding (1 - a^2 near the bounds the most).
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == th.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, expected in zip(fused, reference, strict=True):
        assert got.dtype == expected.dtype == dtype
        assert th.isfinite(got).all()
        th.testing.assert_close(got, expected, **tolerance)


def test_the_distributions_epsilon_reaches_the_squash_correction():
    mean, log_std, actions = _inputs(True, th.float64)
    for grad in (False, True):
        with th.set_grad_enabled(grad):
            ours = RolloutSquashedDiagGaussianDistribution(DIM, epsilon=1e-2).proba_distribution(
                mean, log_std
            )
            sb3 = SquashedDiagGaussianDistribution(DIM, epsilon=1e-2).proba_distribution(mean, log_std)
            th.testing.assert_close(ours.log_prob(actions), sb3.log_prob(actions), rtol=1e-12, atol=1e-12)


def test_a_rollout_gives_the_training_pass_log_probabilities_to_the_bit():
    # PPO's probability ratio starts at 1: the rollout's and the first update's log-probabilities agree exactly.
    mean, log_std, actions = _inputs(True, th.float32)
    training = (
        RolloutSquashedDiagGaussianDistribution(DIM).proba_distribution(mean, log_std).log_prob(actions)
    )
    with th.no_grad():
        rollout = RolloutSquashedDiagGaussianDistribution(DIM).proba_distribution(mean, log_std)
        log_prob = rollout.log_prob(actions)
    assert training.grad_fn is not None and log_prob.grad_fn is None
    assert "distribution" not in rollout.__dict__
    assert th.equal(log_prob, training.detach())


def test_either_parameter_alone_gets_its_gradient():
    mean, log_std, actions = _inputs(True, th.float64)
    for parameter, other in ((mean, log_std.detach()), (log_std, mean.detach())):
        parameter.grad = None
        params = (parameter, other) if parameter is mean else (other, parameter)
        log_prob = RolloutSquashedDiagGaussianDistribution(DIM).proba_distribution(*params).log_prob(actions)
        log_prob.sum().backward()
        expected = SquashedDiagGaussianDistribution(DIM).proba_distribution(*params).log_prob(actions)
        (grad,) = th.autograd.grad(expected.sum(), parameter)
        th.testing.assert_close(parameter.grad, grad, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_actions_outside_the_box_and_given_gaussian_actions_take_sb3s_ops():
    mean, log_std, _ = _inputs(True, th.float32)
    sb3 = SquashedDiagGaussianDistribution(DIM)
    for grad in (False, True):
        with th.set_grad_enabled(grad):
            ours = RolloutSquashedDiagGaussianDistribution(DIM).proba_distribution(mean, log_std)
            sb3.proba_distribution(mean, log_std)
            for outside in (1.5, -1.0001, math.nan):
                actions = th.zeros(BATCH, DIM)
                actions[1, 2] = outside
                if math.isnan(outside):
                    if grad:  # the training pass's sample check, as SB3's
                        for dist in (ours, sb3):
                            with pytest.raises(ValueError, match="within the support"):
                                dist.log_prob(actions)
                    else:  # a rollout checks nothing (SB3's own distribution would raise)
                        assert ours.log_prob(actions).isnan().tolist() == [i == 1 for i in range(BATCH)]
                    continue
                # SB3's squash correction is NaN there; its ops say so, NumPy does not warn.
                th.testing.assert_close(ours.log_prob(actions), sb3.log_prob(actions), equal_nan=True)
            gaussian = 3.0 * th.ones(BATCH, DIM)
            actions = th.tanh(gaussian)
            assert th.equal(ours.log_prob(actions, gaussian), sb3.log_prob(actions, gaussian))


def test_invalid_parameters_raise_as_sb3s_distribution_does():
    mean, log_std = th.zeros(4, 2, requires_grad=True), th.zeros(2, requires_grad=True)
    nan_mean = mean.detach().clone()
    nan_mean[1, 0] = math.nan
    dist = RolloutSquashedDiagGaussianDistribution(2)
    with pytest.raises(ValueError, match="loc"):
        dist.proba_distribution(nan_mean, log_std)
    with pytest.raises(ValueError, match="scale"):
        dist.proba_distribution(mean, th.full((2,), -math.inf))


@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=["ERAPPO", "ERAA2C"])
@pytest.mark.parametrize("state_dependent_std", [False, True], ids=["state_independent", "state_dependent"])
def test_training_with_the_fused_pass_ends_where_sb3s_ops_do(eager, monkeypatch, algo, state_dependent_std):
    kwargs = dict(n_steps=128, batch_size=64, n_epochs=2) if algo is ERAPPO else dict(n_steps=16)
    policy_kwargs = dict(net_arch=TINY_NET, state_dependent_std=state_dependent_std)

    def learn():
        return algo(
            "MlpPolicy",
            ReachTargetEnv(),
            action_distribution="tanh",
            policy_kwargs=policy_kwargs,
            seed=0,
            **kwargs,
        ).learn(512)

    assert_training_matches_reference(monkeypatch, "TanhGaussianLogProb", learn, eager)
