"""The fused training pass of TruncatedNormalDistribution (sb3_era.fused_log_prob) against the op-by-op path: the
log-probability and entropy of PPO and A2C's minibatches, and the reparameterised sample of SAC, TQC and CrossQ."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch as th
from fused_training import assert_training_matches_reference
from sb3_era_envs import TINY_NET, ReachTargetEnv

from era_core import GaussianERA
from sb3_era import ERAA2C, ERAPPO, ERASAC, ERATQC, ERACrossQ, TruncatedNormalDistribution, fused_log_prob
from sb3_era.fused_log_prob import fusable

BATCH, DIM = 32, 3
BOXES = [(-1.0, 1.0), (np.array([-2.0, 0.0, -0.4]), np.array([2.0, 1.0, 0.4]))]


@pytest.fixture
def eager(monkeypatch):
    """Run the body on the op-by-op path: no training pass is fused."""

    def without_fusion():
        monkeypatch.setattr(TruncatedNormalDistribution, "fuse_training_pass", False)

    return without_fusion


def _inputs(shared_std: bool, dtype: th.dtype, low, high, seed: int = 0):
    generator = th.Generator().manual_seed(seed)
    mean = 3.0 * th.randn(BATCH, DIM, generator=generator, dtype=dtype)
    # Saturated means (the clamp holds the location) and one exactly at the middle.
    mean[0] = th.tensor([40.0, -40.0, 0.0], dtype=dtype)
    std_shape = (DIM,) if shared_std else (BATCH, DIM)
    pre_activation = 2.0 * th.randn(std_shape, generator=generator, dtype=dtype)
    unit = 2.0 * th.rand(BATCH, DIM, generator=generator, dtype=th.float64) - 1.0
    unit[0] = th.tensor([1.0, -1.0, 0.0])  # on the bounds
    center, half_range = (np.asarray(high) + np.asarray(low)) / 2, (np.asarray(high) - np.asarray(low)) / 2
    actions = th.as_tensor(center + half_range * unit.numpy(), dtype=th.float32)
    return mean.requires_grad_(True), pre_activation.requires_grad_(True), actions


def _pass(era: GaussianERA | None, mean, pre_activation, actions, low, high, entropy_needs_grad=True):
    """(log_prob, entropy, d/d mean, d/d pre-activation, whether the truncated normal was built)."""
    mean.grad = pre_activation.grad = None
    dist = TruncatedNormalDistribution(DIM, low, high)
    dist.entropy_needs_grad = entropy_needs_grad
    dist.proba_distribution(mean, pre_activation, log_std_era=era)
    log_prob, entropy = dist.log_prob(actions), dist.entropy()
    # Weights that give every element its own gradient, through both outputs.
    weights = th.linspace(-1.0, 2.0, BATCH, dtype=log_prob.dtype)
    loss = (weights * log_prob).sum() + ((1.0 - weights) * entropy).sum() * entropy_needs_grad
    loss.backward()
    built = "distribution" in dist.__dict__
    return log_prob.detach(), entropy.detach(), mean.grad.clone(), pre_activation.grad.clone(), built


@pytest.mark.parametrize(("low", "high"), BOXES, ids=["unit_box", "box"])
@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("shared_std", [True, False], ids=["state_independent", "state_dependent"])
@pytest.mark.parametrize("with_era", [True, False], ids=["era", "log_std"])
def test_fused_pass_gives_the_eager_values_and_gradients(eager, low, high, dtype, shared_std, with_era):
    era = GaussianERA(DIM, log_std_min=-3.0, log_std_max=-0.5).to(dtype) if with_era else None
    inputs = _inputs(shared_std, dtype, low, high)
    *fused, fused_built = _pass(era, *inputs, low, high)
    eager()
    *reference, reference_built = _pass(era, *inputs, low, high)
    assert not fused_built and reference_built
    # float64 sums and gradients on both paths; float32 ones differ by the rounding of the per-element values.
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == th.float32 else dict(rtol=1e-10, atol=1e-10)
    for got, expected in zip(fused, reference, strict=True):
        assert got.dtype == expected.dtype == dtype
        assert th.isfinite(got).all()
        th.testing.assert_close(got, expected, **tolerance)


def test_the_era_clamp_and_the_location_clamp_stop_their_gradients(eager):
    # Pre-activations that send one log-std below log_std_min (clamped there) and means past the location's clamp.
    era = GaussianERA(DIM, log_std_min=-3.0)
    mean, pre_activation, actions = _inputs(True, th.float32, -1.0, 1.0)
    with th.no_grad():
        pre_activation.copy_(th.tensor([6.0, 0.0, 0.0]))
        assert era(pre_activation)[0] == -3.0 and (era(pre_activation)[1:] > -3.0).all()
    fused = _pass(era, mean, pre_activation, actions, -1.0, 1.0)
    eager()
    reference = _pass(era, mean, pre_activation, actions, -1.0, 1.0)
    assert fused[2][0, :2].abs().max() == reference[2][0, :2].abs().max() == 0.0
    th.testing.assert_close(fused[3], reference[3], rtol=1e-5, atol=1e-6)


def test_large_pre_activations_of_different_rows_keep_finite_gradients(eager):
    # The softmax's shift is per row: rows thousands apart (and one far above zero) must not overflow or
    # underflow to NaN.
    era = GaussianERA(DIM, log_std_min=-3.0)
    mean, pre_activation, actions = _inputs(False, th.float32, -1.0, 1.0)
    with th.no_grad():
        pre_activation[::2] += 1000.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor does NumPy warn of an overflow on the way
        fused = _pass(era, mean, pre_activation, actions, -1.0, 1.0)
    eager()
    reference = _pass(era, mean, pre_activation, actions, -1.0, 1.0)
    for got, expected in zip(fused[:4], reference[:4], strict=True):
        assert th.isfinite(got).all()
        th.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_only_two_dimensional_cpu_float_parameters_of_one_dtype_are_fused():
    mean, shared, per_state = th.zeros(4, 3), th.zeros(3), th.zeros(4, 3)
    assert fusable(mean, shared) and fusable(mean, per_state) and fusable(mean.double(), shared.double())
    assert not fusable(th.zeros(2, 4, 3), shared)  # SB3 sums dimension 1 of 3-d log-probs, not the last
    assert not fusable(mean.half(), shared.half())
    assert not fusable(mean, shared.double())
    assert not fusable(mean, th.zeros(4))
    assert not fusable(mean, th.zeros(4, 1))


def test_entropy_without_graph_leaves_the_log_prob_gradients_unchanged(eager):
    inputs = _inputs(True, th.float32, -1.0, 1.0)
    era = GaussianERA(DIM)
    fused = _pass(era, *inputs, -1.0, 1.0, entropy_needs_grad=False)
    eager()
    reference = _pass(era, *inputs, -1.0, 1.0, entropy_needs_grad=False)
    for got, expected in zip(fused[:4], reference[:4], strict=True):
        th.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_invalid_parameters_and_actions_raise_as_on_the_eager_path():
    dist = TruncatedNormalDistribution(2)
    mean, log_std = th.zeros(4, 2, requires_grad=True), th.zeros(2, requires_grad=True)
    nan_mean = mean.detach().clone()
    nan_mean[1, 0] = math.nan
    with pytest.raises(ValueError, match="loc"):
        dist.proba_distribution(nan_mean, log_std)
    with pytest.raises(ValueError, match="scale"):
        dist.proba_distribution(mean, th.full((2,), -math.inf))
    for outside in (1.5, -1.5):
        with pytest.raises(ValueError, match="within the support"):
            dist.proba_distribution(mean, log_std).log_prob(th.tensor([[0.5, outside]] * 4))
    # An ERA pre-activation of -inf is valid (the activation maps it into [lmin, lmax]): the eager path takes it.
    era = GaussianERA(2)
    log_prob = dist.proba_distribution(mean, th.tensor([-math.inf, 0.0]), log_std_era=era).log_prob(
        th.zeros(4, 2)
    )
    assert th.isfinite(log_prob).all()
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        dist.proba_distribution(mean, th.zeros(3), log_std_era=era)


@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=["ERAPPO", "ERAA2C"])
@pytest.mark.parametrize("state_dependent_std", [False, True], ids=["state_independent", "state_dependent"])
def test_training_with_the_fused_pass_ends_where_the_eager_path_does(
    eager, monkeypatch, algo, state_dependent_std
):
    kwargs = dict(n_steps=128, batch_size=64, n_epochs=2) if algo is ERAPPO else dict(n_steps=16)
    policy_kwargs = dict(net_arch=TINY_NET, state_dependent_std=state_dependent_std)

    def learn():
        return algo("MlpPolicy", ReachTargetEnv(), policy_kwargs=policy_kwargs, seed=0, **kwargs).learn(512)

    assert_training_matches_reference(monkeypatch, "TanhTruncatedLogProbAndEntropy", learn, eager)


@pytest.mark.parametrize("algo", [ERAPPO, ERAA2C], ids=["ERAPPO", "ERAA2C"])
def test_skipping_a_zero_entropy_gradient_changes_no_parameter(monkeypatch, algo):
    """ent_coef=0: the node's backward skips the entropy's terms, and learn() ends on the same parameters."""
    kwargs = dict(n_steps=128, batch_size=64, n_epochs=2) if algo is ERAPPO else dict(n_steps=16)
    carries_gradient = fused_log_prob.carries_gradient
    skipped = []

    def counted(grad):
        carries = carries_gradient(grad)
        skipped.append(not carries)
        return carries

    def parameters_after_learn() -> list[th.Tensor]:
        model = algo("MlpPolicy", ReachTargetEnv(), policy_kwargs=dict(net_arch=TINY_NET), seed=0, **kwargs)
        return [p.detach().clone() for p in model.learn(512).policy.parameters()]

    monkeypatch.setattr(fused_log_prob, "carries_gradient", counted)
    with_skip = parameters_after_learn()
    assert skipped and all(skipped)
    monkeypatch.setattr(fused_log_prob, "carries_gradient", lambda grad: grad is not None)
    without_skip = parameters_after_learn()
    for got, expected in zip(with_skip, without_skip, strict=True):
        assert th.equal(got, expected)


def _sample_pass(mean, log_std, low, high, era=None):
    """(actions, d/d mean, d/d log-std, whether the truncated normal was built) of one reparameterised sample."""
    mean.grad = log_std.grad = None
    dist = TruncatedNormalDistribution(DIM, low, high).proba_distribution(mean, log_std, log_std_era=era)
    th.manual_seed(3)
    actions = dist.sample()
    # Weights that give every element its own gradient.
    (actions * th.linspace(-1.0, 2.0, actions.numel(), dtype=actions.dtype).view_as(actions)).sum().backward()
    return actions.detach(), mean.grad.clone(), log_std.grad.clone(), "distribution" in dist.__dict__


@pytest.mark.parametrize(("low", "high"), BOXES, ids=["unit_box", "box"])
@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("shared_std", [True, False], ids=["state_independent", "state_dependent"])
def test_fused_sample_draws_the_eager_actions_with_their_gradients(eager, low, high, dtype, shared_std):
    mean, log_std, _ = _inputs(shared_std, dtype, low, high)
    with th.no_grad():
        log_std.clamp_(-8.0, 0.0)  # scales from exp(-8) (deep tails on both sides) to 1
    *fused, fused_built = _sample_pass(mean, log_std, low, high)
    eager()
    *reference, reference_built = _sample_pass(mean, log_std, low, high)
    assert not fused_built and reference_built
    # Same levels, same float64 quantile: the same actions to the bit; the gradients differ by float32 rounding.
    assert th.equal(fused[0], reference[0]) and fused[0].dtype == dtype
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == th.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, expected in zip(fused[1:], reference[1:], strict=True):
        assert th.isfinite(got).all()
        th.testing.assert_close(got, expected, **tolerance)
    # Saturated means (row 0: 40 and -40) get no gradient through the location's clamp, on both paths.
    assert fused[1][0, :2].abs().max() == reference[1][0, :2].abs().max() == 0.0


def test_a_sample_from_era_pre_activations_with_gradient_takes_the_truncated_normal():
    # Without gradient the sample runs from the parameters (test_distributions checks it bit for bit).
    mean, pre_activation, _ = _inputs(True, th.float32, -1.0, 1.0)
    *_, built = _sample_pass(mean, pre_activation, -1.0, 1.0, era=GaussianERA(DIM))
    assert built


@pytest.mark.parametrize("algo", [ERASAC, ERATQC, ERACrossQ], ids=["ERASAC", "ERATQC", "ERACrossQ"])
def test_off_policy_training_with_the_fused_sample_ends_where_the_eager_path_does(eager, monkeypatch, algo):
    def learn():
        return algo(
            "MlpPolicy",
            ReachTargetEnv(),
            policy_kwargs=dict(net_arch=TINY_NET),
            learning_starts=32,
            batch_size=32,
            seed=0,
        ).learn(160)

    assert_training_matches_reference(monkeypatch, "TanhTruncatedSample", learn, eager)


@pytest.mark.parametrize("with_grad", ["mean", "log_std"])
def test_fused_sample_differentiates_either_parameter_alone(eager, with_grad):
    mean, log_std, _ = _inputs(False, th.float32, -1.0, 1.0)
    params = dict(mean=mean.detach(), log_std=log_std.detach().clamp(-8.0, 0.0))
    params[with_grad].requires_grad_(True)

    def gradient() -> th.Tensor:
        params[with_grad].grad = None
        dist = TruncatedNormalDistribution(DIM).proba_distribution(params["mean"], params["log_std"])
        th.manual_seed(3)
        dist.sample().sum().backward()
        return params[with_grad].grad.clone()

    fused = gradient()
    eager()
    th.testing.assert_close(fused, gradient(), rtol=1e-5, atol=1e-5)
