"""TruncatedNormalDistribution: an SB3 Distribution that agrees with era_core.TruncatedNormal (spec 1.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

from era_core import GaussianERA, TruncatedNormal
from sb3_era import TruncatedNormalDistribution
from sb3_era.distributions import RolloutSquashedDiagGaussianDistribution
from sb3_era.fused_log_prob import tanh_location


def _params(batch: int = 64, dim: int = 3, seed: int = 0) -> tuple[th.Tensor, th.Tensor]:
    generator = th.Generator().manual_seed(seed)
    mean = 3.0 * th.randn(batch, dim, generator=generator)
    log_std = th.empty(batch, dim).uniform_(-8.0, 0.0, generator=generator)
    return mean, log_std


def test_log_prob_and_entropy_match_era_core_truncated_normal_summed_over_dims():
    mean, log_std = _params()
    dist = TruncatedNormalDistribution(3).proba_distribution(mean, log_std)
    reference = TruncatedNormal(th.tanh(mean).clamp(-1 + 1e-7, 1 - 1e-7), log_std.exp(), -1.0, 1.0)
    actions = dist.sample()
    th.testing.assert_close(dist.log_prob(actions), reference.log_prob(actions).sum(-1))
    th.testing.assert_close(dist.entropy(), reference.entropy().sum(-1))


def test_samples_stay_in_bounds_and_mode_is_tanh_of_mean():
    mean, log_std = _params()
    dist = TruncatedNormalDistribution(3).proba_distribution(mean, log_std)
    actions = dist.sample()
    assert actions.abs().max() <= 1.0
    assert th.isfinite(dist.log_prob(actions)).all()
    th.testing.assert_close(dist.mode(), th.tanh(mean).clamp(-1 + 1e-7, 1 - 1e-7))
    th.testing.assert_close(dist.get_actions(deterministic=True), dist.mode())


def test_log_prob_gradients_are_finite_at_the_smallest_std_and_saturated_means():
    mean = th.tensor([[40.0, -40.0, 0.0]], requires_grad=True)
    log_std = th.full((1, 3), -8.0, requires_grad=True)
    dist = TruncatedNormalDistribution(3)
    actions, log_prob = dist.log_prob_from_params(mean, log_std)
    log_prob.sum().backward()
    assert th.isfinite(log_prob).all() and th.isfinite(actions).all()
    assert th.isfinite(mean.grad).all() and th.isfinite(log_std.grad).all()


def test_non_unit_bounds_rescale_actions_and_shift_log_prob_by_the_jacobian():
    low, high = np.array([-2.0, 0.0, -0.4]), np.array([2.0, 1.0, 0.4])
    mean, log_std = _params()
    unit = TruncatedNormalDistribution(3).proba_distribution(mean, log_std)
    scaled = TruncatedNormalDistribution(3, low, high).proba_distribution(mean, log_std)
    unit_actions = unit.sample()
    actions = (
        th.as_tensor((high + low) / 2, dtype=th.float32)
        + th.as_tensor((high - low) / 2, dtype=th.float32) * unit_actions
    )
    log_jacobian = float(np.log((high - low) / 2).sum())
    # The float32 round trip through the affine map is resolved by stds down to exp(-8) ~ 3e-4.
    th.testing.assert_close(
        scaled.log_prob(actions), unit.log_prob(unit_actions) - log_jacobian, rtol=1e-4, atol=1e-3
    )
    th.testing.assert_close(scaled.entropy(), unit.entropy() + log_jacobian)
    samples = scaled.sample()
    assert (samples >= th.as_tensor(low, dtype=th.float32)).all() and (
        samples <= th.as_tensor(high, dtype=th.float32)
    ).all()


@pytest.mark.parametrize(
    ("low", "high"), [(-1.0, 1.0), (np.array([-2.0, 0.0, -0.4]), np.array([2.0, 1.0, 0.4]))]
)
def test_rollout_sample_returns_the_log_prob_of_its_actions(low, high):
    # A rollout (no gradient) computes the log-prob with the sample; it must be that of log_prob(actions).
    mean, log_std = (t.double() for t in _params())
    dist = TruncatedNormalDistribution(3, low, high)
    with th.no_grad():
        dist.proba_distribution(mean, log_std)
        actions = dist.sample()
        from_the_sample = dist.log_prob(actions)
        recomputed = dist.log_prob(actions.clone())
    assert from_the_sample is not recomputed
    th.testing.assert_close(from_the_sample, recomputed, rtol=1e-9, atol=1e-9)
    # Actions changed in place, or a log-prob asked for with gradient, are computed afresh.
    with th.no_grad():
        actions.mul_(0.5)
        th.testing.assert_close(dist.log_prob(actions), dist.log_prob(actions.clone()), rtol=0, atol=0)
    leaf = mean.clone().requires_grad_(True)
    dist.proba_distribution(leaf, log_std)
    with th.no_grad():
        actions = dist.sample()
    assert dist.log_prob(actions).requires_grad


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("era", [False, True], ids=["log-std", "era-pre-activation"])
@pytest.mark.parametrize(
    ("low", "high"), [(-1.0, 1.0), (np.array([-2.0, 0.0, -0.4]), np.array([2.0, 1.0, 0.4]))]
)
def test_rollout_sample_is_era_cores_sample_and_log_prob(low, high, era, dtype):
    # The CPU rollout runs from the parameters, without building the truncated normal: the same draws give the
    # same actions, bit for bit, and the same log-probabilities, summed in float64 before rounding.
    mean, log_std = (t.to(dtype) for t in _params())
    dist = TruncatedNormalDistribution(3, low, high)
    with th.no_grad():
        dist.proba_distribution(mean, log_std, log_std_era=GaussianERA(3) if era else None)
        th.manual_seed(0)
        actions = dist.sample()
        assert "distribution" not in dist.__dict__
        log_prob = dist.log_prob(actions)
        th.manual_seed(0)
        unit, unit_log_prob = dist.distribution.sample_and_log_prob()
    assert th.equal(actions, dist._from_unit_box(unit))
    expected = unit_log_prob.sum(-1) - dist.log_scale_correction
    assert log_prob.dtype == expected.dtype == dtype
    th.testing.assert_close(log_prob, expected, rtol=1e-6, atol=1e-5)


def test_rollout_sample_keeps_its_levels_off_0_and_1_as_era_core_does(monkeypatch):
    # torch.rand may return 0 and 1 - 2**-24: both move eps (of float32) inside (0, 1), as in era_core's sampler.
    levels = th.tensor([[0.0, 1.0 - 2.0**-24, 0.5]])
    monkeypatch.setattr(th, "rand", lambda *args, **kwargs: levels.clone())
    mean, log_std = th.zeros(1, 3), th.zeros(1, 3)
    with th.no_grad():
        actions = TruncatedNormalDistribution(3).proba_distribution(mean, log_std).sample()
        unit, _ = TruncatedNormal(tanh_location(mean), log_std.exp()).sample_and_log_prob()
    assert th.equal(actions, unit)
    assert (actions.abs() < 1.0).all()


@pytest.mark.parametrize(
    ("low", "high"), [(-1.0, 1.0), (np.array([-2.0, 0.0, -0.4]), np.array([2.0, 1.0, 0.4]))]
)
def test_rollout_sample_of_one_unbatched_state_takes_era_cores_sampler(low, high):
    # A 1-d mean (one state, no batch dimension) is not fusable: the rollout builds the truncated normal.
    mean, log_std = (t[0] for t in _params())
    dist = TruncatedNormalDistribution(3, low, high)
    with th.no_grad():
        dist.proba_distribution(mean, log_std)
        th.manual_seed(0)
        actions = dist.sample()
        log_prob = dist.log_prob(actions)
        assert dist.log_prob(actions) is log_prob
        th.manual_seed(0)
        unit, unit_log_prob = TruncatedNormal(tanh_location(mean), log_std.exp()).sample_and_log_prob()
    assert th.equal(actions, dist._from_unit_box(unit))
    assert th.equal(log_prob, unit_log_prob.sum() - dist.log_scale_correction)


def test_monte_carlo_entropy_agrees_with_the_closed_form():
    th.manual_seed(0)
    mean = th.zeros(20000, 2) + th.tensor([0.3, -2.0])
    log_std = th.zeros(20000, 2) + th.tensor([-0.5, -1.0])
    dist = TruncatedNormalDistribution(2).proba_distribution(mean, log_std)
    monte_carlo = -dist.log_prob(dist.sample()).mean().item()
    assert math.isclose(monte_carlo, dist.entropy()[0].item(), abs_tol=0.03)


def test_own_samples_follow_the_truncated_normal_in_env_units():
    """Bounds and shape checked on the distribution's own draws (no predict clip): per dimension the
    samples match SciPy's truncated normal mapped onto ``[low, high]``, and none pile up on a bound."""
    from scipy import stats

    th.manual_seed(0)
    low, high = np.array([-2.0, 0.0, -0.4]), np.array([2.0, 1.0, 0.4])
    mean = th.tensor([[0.8, -1.5, 3.0]]).expand(20_000, 3)
    log_std = th.tensor([[-0.5, -1.0, -2.0]]).expand(20_000, 3)
    samples = TruncatedNormalDistribution(3, low, high).proba_distribution(mean, log_std).sample().double()
    for dim in range(3):
        column = samples[:, dim].numpy()
        assert low[dim] <= column.min() and column.max() <= high[dim]
        assert np.mean((column == low[dim]) | (column == high[dim])) < 1e-3
        half = (high[dim] - low[dim]) / 2
        loc = (high[dim] + low[dim]) / 2 + half * math.tanh(mean[0, dim].item())
        scale = half * math.exp(log_std[0, dim].item())
        reference = stats.truncnorm((low[dim] - loc) / scale, (high[dim] - loc) / scale, loc=loc, scale=scale)
        # Seeded; over seeds 0-3 the smallest p-value was 5e-4 (seed 0), a mirrored map gives p ~ 0.
        assert stats.kstest(column, reference.cdf).pvalue > 1e-4


def test_unbounded_or_inverted_bounds_raise():
    for low, high in [(-np.inf, 1.0), (1.0, -1.0), (0.5, 0.5)]:
        try:
            TruncatedNormalDistribution(2, low, high)
        except ValueError as error:
            assert "low < high" in str(error)
        else:
            raise AssertionError(f"bounds {low}, {high} were accepted")


@pytest.mark.parametrize("dtype", [th.float32, th.float64], ids=str)
def test_saturated_means_keep_the_location_strictly_inside_the_box(dtype):
    # tanh of a saturated mean rounds to +-1; the location is kept one eps inside, as documented.
    mean = th.tensor([[100.0, -100.0, 0.5]], dtype=dtype)
    dist = TruncatedNormalDistribution(3).proba_distribution(mean, th.zeros(1, 3, dtype=dtype))
    edge = 1.0 - th.finfo(dtype).eps
    th.testing.assert_close(dist.distribution.loc, th.tensor([[edge, -edge, math.tanh(0.5)]], dtype=dtype))
    assert th.all(dist.mode().abs() < 1.0)


# float32 boxes whose affine map sends a bound a hair outside [-1, 1] (found by a search).
ROUNDS_ABOVE_ONE = (-1.8151915073394775, -0.43992894887924194)
ROUNDS_BELOW_MINUS_ONE = (-3.651066541671753, -2.3715548515319824)


@pytest.mark.parametrize("box", [ROUNDS_ABOVE_ONE, ROUNDS_BELOW_MINUS_ONE], ids=["high", "low"])
def test_actions_on_a_bound_stay_in_the_unit_box_after_the_affine_map(box):
    low, high = box
    dist = TruncatedNormalDistribution(1, low, high).proba_distribution(th.zeros(1, 1), th.zeros(1, 1))
    on_bounds = th.tensor([[low], [high]])
    unit_box = TruncatedNormalDistribution(1).proba_distribution(th.zeros(1, 1), th.zeros(1, 1))
    expected = unit_box.log_prob(th.tensor([[-1.0], [1.0]])) - dist.log_scale_correction
    th.testing.assert_close(dist.log_prob(on_bounds), expected)


def test_rollout_log_prob_of_the_sampled_actions_is_the_one_computed_with_them():
    dist = TruncatedNormalDistribution(2).proba_distribution(*_params(batch=8, dim=2))
    with th.no_grad():
        actions = dist.sample()
        cached = dist.log_prob(actions)
        assert dist.log_prob(actions) is cached  # not recomputed
        assert dist.log_prob(actions.clone()) is not cached  # other actions (here equal) are scored afresh


@pytest.mark.parametrize(("low", "high"), [(-1.0, 2.0), (-2.0, 1.0)])
def test_a_box_sharing_one_bound_with_the_unit_box_is_mapped(low, high):
    # Only [-1, 1] itself skips the affine map: one shared bound is not enough.
    mean, log_std = _params(dim=1)
    unit = TruncatedNormalDistribution(1).proba_distribution(mean, log_std)
    dist = TruncatedNormalDistribution(1, low, high).proba_distribution(mean, log_std)
    half_range = (high - low) / 2
    th.testing.assert_close(dist.mode(), (high + low) / 2 + half_range * unit.mode())
    th.testing.assert_close(dist.entropy(), unit.entropy() + math.log(half_range))


def test_bounds_are_kept_in_float32_and_follow_a_half_precision_policy():
    # Bounds are read in float32, like the actions SB3 stores; a float16 policy gets float16 actions.
    dist = TruncatedNormalDistribution(2, np.array([-2.0, 0.1]), 0.7)
    assert dist.center.dtype == dist.half_range.dtype == th.float32
    mean, log_std = (t.to(th.float16) for t in _params(batch=4, dim=2))
    dist.proba_distribution(mean, log_std)
    assert dist.mode().dtype == dist.sample().dtype == th.float16


@pytest.mark.parametrize(
    "distribution_class", [TruncatedNormalDistribution, RolloutSquashedDiagGaussianDistribution]
)
def test_parameter_checks_run_in_training_and_are_skipped_in_rollouts(distribution_class):
    mean, log_std = _params(batch=4, dim=2)
    dist = distribution_class(2)
    assert (
        dist.proba_distribution(mean, log_std).distribution._validate_args
        is th.distributions.Distribution._validate_args
    )
    with th.no_grad():
        assert dist.proba_distribution(mean, log_std).distribution._validate_args is False
    with pytest.raises(ValueError, match="scale"):
        dist.proba_distribution(mean, th.full_like(log_std, -math.inf))


def test_rollout_squashed_gaussian_is_sb3s_in_rollouts_and_training():
    mean, log_std = _params(batch=4, dim=2)
    actions = th.tensor([[0.5, -0.9]] * 4)
    for grad in (False, True):
        with th.set_grad_enabled(grad):
            ours = RolloutSquashedDiagGaussianDistribution(2).proba_distribution(mean, log_std)
            sb3 = SquashedDiagGaussianDistribution(2).proba_distribution(mean, log_std)
            # SB3's formula in float64, rounded once; SB3's float32 ops round at every step.
            th.testing.assert_close(ours.log_prob(actions), sb3.log_prob(actions), rtol=1e-6, atol=1e-5)
            th.testing.assert_close(ours.mode(), sb3.mode(), rtol=0, atol=0)
            th.manual_seed(0)
            sample = ours.sample()
            th.manual_seed(0)
            th.testing.assert_close(sample, sb3.sample(), rtol=0, atol=0)
            # Given the values before squashing, SB3's ops compute the log-probability.
            th.testing.assert_close(
                ours.log_prob(sample, ours.gaussian_actions),
                sb3.log_prob(sample, sb3.gaussian_actions),
                rtol=0,
                atol=0,
            )


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "op_by_op"])
@pytest.mark.parametrize("after_log_prob", [False, True])
def test_entropy_records_a_graph_only_when_asked_and_under_grad(
    after_log_prob: bool, fused: bool, monkeypatch
):
    mean = th.tensor([[0.3, -1.2], [2.0, 0.1]], requires_grad=True)
    log_std = th.tensor([-0.5, -1.0], requires_grad=True)
    actions = th.tensor([[0.2, -0.7], [0.9, 0.0]])
    for needs_grad in (True, False):
        dist = TruncatedNormalDistribution(2)
        dist.fuse_training_pass = fused
        dist.entropy_needs_grad = needs_grad
        dist.proba_distribution(mean, log_std)
        log_prob = dist.log_prob(actions) if after_log_prob else None
        entropy = dist.entropy()
        assert entropy.requires_grad == needs_grad
        expected = dist.distribution.entropy().sum(dim=1)
        th.testing.assert_close(entropy.detach(), expected.detach())
        if after_log_prob:
            # The entropy computed beside the log-prob (one node) is the one returned, not recomputed.
            monkeypatch.setattr(dist.distribution, "entropy", lambda: pytest.fail("entropy recomputed"))
            th.testing.assert_close(dist.entropy().detach(), expected.detach())
            monkeypatch.undo()
            assert log_prob.requires_grad
        with th.no_grad():
            assert not dist.entropy().requires_grad
