"""Spec section 1.1: the truncated normal on [low, high], checked against quadrature, Monte Carlo and SciPy."""

import math
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from era_core import TruncatedNormal, ndtri_exp, truncated_normal
from era_core.truncated_normal import _ReparameterizedSample

MIN_SCALE = math.exp(-8.0)
# (loc, scale): interior, near and at the bounds, the smallest scale the SAC actor produces, wide.
CASES = [
    (0.0, 1.0),
    (0.3, 0.05),
    (0.9, 0.3),
    (-0.999, 0.01),
    (1.0, MIN_SCALE),
    (-1.0, MIN_SCALE),
    (1.0 - 1e-6, MIN_SCALE),
    (0.0, MIN_SCALE),
    (0.5, 20.0),
]


def _scipy(loc: float, scale: float) -> stats.rv_continuous:
    return stats.truncnorm((-1 - loc) / scale, (1 - loc) / scale, loc=loc, scale=scale)


@pytest.mark.parametrize(("loc", "scale"), CASES)
def test_log_prob_integrates_to_one(loc: float, scale: float) -> None:
    dist = TruncatedNormal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    a, b = max(-1.0, loc - 40 * scale), min(1.0, loc + 40 * scale)

    def density(x: float) -> float:
        return math.exp(dist.log_prob(torch.tensor(x, dtype=torch.float64)).item())

    mass, _ = integrate.quad(density, a, b, points=[min(max(loc, a), b)], limit=200, epsabs=1e-12)
    assert mass == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("loc", "scale"), CASES)
def test_closed_forms_match_scipy(loc: float, scale: float) -> None:
    dist = TruncatedNormal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    ref = _scipy(loc, scale)
    assert dist.entropy().item() == pytest.approx(ref.entropy(), abs=1e-6)
    assert dist.mean.item() == pytest.approx(ref.mean(), abs=1e-9)
    assert dist.variance.item() == pytest.approx(ref.var(), rel=1e-5, abs=1e-14)
    for q in (0.01, 0.3, 0.5, 0.99):
        assert dist.icdf(torch.tensor(q, dtype=torch.float64)).item() == pytest.approx(ref.ppf(q), abs=1e-9)
    x = float(np.clip(loc + 0.5 * scale, -1, 1))
    assert dist.cdf(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(ref.cdf(x), abs=1e-9)


@pytest.mark.parametrize(("loc", "scale"), [(0.0, 1.0), (0.9, 0.3), (1.0, MIN_SCALE), (-0.999, 0.01)])
def test_entropy_matches_monte_carlo(loc: float, scale: float) -> None:
    torch.manual_seed(0)
    dist = TruncatedNormal(torch.tensor(loc), torch.tensor(scale))
    neg_log_prob = -dist.log_prob(dist.sample((200_000,))).double()
    standard_error = neg_log_prob.std().item() / math.sqrt(neg_log_prob.numel())
    assert abs(neg_log_prob.mean().item() - dist.entropy().item()) < 5 * standard_error + 1e-4


@pytest.mark.parametrize(("loc", "scale"), [(0.0, 1.0), (0.9, 0.3), (-0.999, 0.01), (1.0, 0.001)])
def test_samples_follow_the_distribution(loc: float, scale: float) -> None:
    torch.manual_seed(1)
    samples = TruncatedNormal(
        torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
    )
    result = stats.kstest(samples.sample((20_000,)).numpy(), _scipy(loc, scale).cdf)
    assert result.pvalue > 1e-3


@settings(max_examples=60, deadline=None)
@given(
    loc=st.floats(-1.0, 1.0),
    log_scale=st.floats(-8.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_samples_stay_in_support_with_finite_log_prob_and_gradients(
    loc: float, log_scale: float, seed: int
) -> None:
    torch.manual_seed(seed)
    loc_t = torch.tensor([loc, 1.0, -1.0], requires_grad=True)
    scale_t = torch.full((3,), math.exp(log_scale), requires_grad=True)
    dist = TruncatedNormal(loc_t, scale_t)
    x = dist.rsample((256,))
    assert torch.all(x >= -1.0) and torch.all(x <= 1.0)
    log_prob = dist.log_prob(x)
    assert torch.isfinite(log_prob).all()
    (log_prob.sum() + dist.entropy().sum() + x.sum()).backward()
    assert torch.isfinite(loc_t.grad).all() and torch.isfinite(scale_t.grad).all()


def test_bfloat16_parameters_give_finite_values_and_gradients() -> None:
    loc = torch.tensor([0.0, 0.99, -1.0, 1.0], dtype=torch.bfloat16, requires_grad=True)
    scale = torch.tensor([1.0, 0.01, MIN_SCALE, MIN_SCALE], dtype=torch.bfloat16, requires_grad=True)
    dist = TruncatedNormal(loc, scale)
    x = dist.rsample((64,))
    log_prob = dist.log_prob(x)
    assert x.dtype == log_prob.dtype == torch.bfloat16
    assert torch.isfinite(log_prob).all() and torch.isfinite(dist.entropy()).all()
    (log_prob.float().sum() + dist.entropy().float().sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()


def test_mode_is_the_clamped_location_and_outside_support_has_zero_density() -> None:
    loc, scale, outside = torch.tensor([0.2, 1.5, -3.0]), torch.full((3,), 0.1), torch.full((3,), 1.5)
    dist = TruncatedNormal(loc, scale, validate_args=False)
    torch.testing.assert_close(dist.mode, torch.tensor([0.2, 1.0, -1.0]))
    assert torch.isneginf(dist.log_prob(outside)).all()
    with pytest.raises(ValueError, match="support"):
        TruncatedNormal(loc, scale, validate_args=True).log_prob(outside)


def test_icdf_inverts_cdf() -> None:
    dist = TruncatedNormal(
        torch.tensor([0.0, 0.8, -0.95], dtype=torch.float64), torch.tensor([0.5, 0.05, 0.2])
    )
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(dist.cdf(dist.icdf(q)), q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tensor_bounds", [False, True])
def test_icdf_of_zero_and_one_are_the_bounds(dtype: torch.dtype, tensor_bounds: bool) -> None:
    # Bounds 50 standard deviations out on both sides, and locations near either bound (both sides of the
    # mirror image): the quantile's finite levels alone would stop some 13 (float32) or 37 (float64) out.
    loc = torch.tensor([0.0, 0.9, -0.9, 0.3], dtype=dtype)
    scale = torch.tensor([0.02, 0.02, 0.02, 0.5], dtype=dtype)
    low, high = (
        (-1.0, 1.0)
        if not tensor_bounds
        else (torch.tensor(-1.0, dtype=dtype), torch.tensor(1.0, dtype=dtype))
    )
    dist = TruncatedNormal(loc, scale, low=low, high=high)
    assert torch.equal(dist.icdf(torch.zeros(4, dtype=dtype)), torch.full((4,), -1.0, dtype=dtype))
    assert torch.equal(dist.icdf(torch.ones(4, dtype=dtype)), torch.ones(4, dtype=dtype))
    inner = dist.icdf(torch.tensor([1e-6, 1e-6, 1.0 - 1e-6, 1.0 - 1e-6], dtype=dtype))
    assert ((inner > -1.0) & (inner < 1.0)).all()


def test_icdf_of_a_level_outside_the_unit_interval() -> None:
    levels = torch.tensor([-0.1, 0.5, 1.5])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*-0.1"):
        TruncatedNormal(torch.zeros(3), torch.ones(3), validate_args=True).icdf(levels)
    quantiles = TruncatedNormal(torch.zeros(3), torch.ones(3), validate_args=False).icdf(levels)
    assert quantiles[0].isnan() and quantiles[2].isnan() and abs(quantiles[1].item()) < 1e-6


def test_batch_shapes_and_expand() -> None:
    dist = TruncatedNormal(torch.zeros(4, 3), torch.ones(3), low=-2.0, high=torch.tensor(1.0))
    assert dist.batch_shape == (4, 3) and dist.event_shape == ()
    assert dist.sample((5,)).shape == (5, 4, 3)
    expanded = dist.expand((2, 4, 3))
    assert expanded.batch_shape == (2, 4, 3)
    torch.testing.assert_close(expanded.entropy(), dist.entropy().expand(2, 4, 3))
    assert torch.all(expanded.sample() >= -2.0)


def test_custom_bounds_match_scipy() -> None:
    dist = TruncatedNormal(
        torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64), 0.0, 0.4
    )
    ref = stats.truncnorm((0.0 - 0.1) / 0.3, (0.4 - 0.1) / 0.3, loc=0.1, scale=0.3)
    assert dist.entropy().item() == pytest.approx(ref.entropy(), abs=1e-9)


def test_invalid_bounds_and_scale_raise() -> None:
    with pytest.raises(ValueError, match="low < high"):
        TruncatedNormal(torch.zeros(2), torch.ones(2), low=1.0, high=1.0)
    with pytest.raises(ValueError, match="scale"):
        TruncatedNormal(torch.zeros(2), -torch.ones(2), validate_args=True)


def test_ndtri_exp_matches_scipy_deep_in_the_tail() -> None:
    from scipy import special

    log_p = torch.tensor([-1e5, -700.0, -100.0, -10.0, -1.0, -1e-3, -1e-20], dtype=torch.float64)
    expected = torch.tensor([special.ndtri_exp(v) for v in log_p.tolist()], dtype=torch.float64)
    torch.testing.assert_close(ndtri_exp(log_p), expected, rtol=1e-7, atol=1e-7)
    assert torch.isfinite(ndtri_exp(log_p.float())).all()


def _quantile_of_log_level(log_p: float) -> float:
    """``Phi^-1(exp(log_p))`` to 50 digits: Newton in mpmath from the asymptotic start (SciPy's ``ndtri_exp`` is
    only good to ~7e-13 relative this deep)."""
    import mpmath

    with mpmath.workdps(50):
        level = mpmath.mpf(log_p)
        t = -2 * level
        x = -mpmath.sqrt(t - mpmath.log(t) - mpmath.log(2 * mpmath.pi))
        for _ in range(8):
            log_cdf = mpmath.log(mpmath.ncdf(x))
            x -= (log_cdf - level) * mpmath.exp(log_cdf + x * x / 2 + mpmath.log(2 * mpmath.pi) / 2)
        return float(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ndtri_exp_is_within_two_ulps_through_the_whole_deep_tail(dtype: torch.dtype) -> None:
    # Below the smallest normal level the torch formula (accelerators; the CPU without SciPy) refines an
    # asymptotic start by Newton; in float32 its old step, exp(log Phi(x) - log phi(x)), cancelled and gave NaN
    # below log_p ~ -1e8.
    tiny_log = math.log(torch.finfo(dtype).tiny) + 1.0
    log_p = np.concatenate(
        [tiny_log - np.logspace(-6, 1, 8), -np.logspace(math.log10(-tiny_log) + 0.1, 20, 24)]
    )
    expected = torch.tensor([_quantile_of_log_level(v) for v in log_p], dtype=torch.float64)
    got = ndtri_exp(torch.tensor(log_p, dtype=dtype)).double()
    torch.testing.assert_close(got, expected, rtol=2 * torch.finfo(dtype).eps, atol=0.0)
    # Down to the most negative float32: against the float64 formula, checked above to 1e20 (its start only
    # gets closer deeper down).
    extreme = torch.tensor([-torch.finfo(torch.float32).max, -1e30], dtype=dtype)
    torch.testing.assert_close(
        ndtri_exp(extreme).double(),
        ndtri_exp(extreme.double()),
        rtol=2 * torch.finfo(torch.float32).eps,
        atol=0.0,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ndtri_exp_gradient_is_the_quantiles_own_on_both_sides_of_the_deep_tail(dtype: torch.dtype) -> None:
    # dx/d log_p = Phi(x) / phi(x) = sqrt(pi / 2) erfcx(-x / sqrt 2). Autograd through the deep tail's Newton
    # step would take log_ndtr's backward, wrong by orders of magnitude from log_p ~ -1e6 (float32) / -1e15
    # (float64) on. Under anomaly detection (a user's debugging aid), which raises on a NaN in any backward:
    # the entries each branch discards must keep a finite gradient too.
    from scipy import special

    tiny_log = math.log(torch.finfo(dtype).tiny) + 1.0
    levels = [2.0 * tiny_log, tiny_log - 1.0, -1e6, -1e12, -5.0, -0.1, -1e-3]
    log_p = torch.tensor(levels, dtype=dtype, requires_grad=True)
    with torch.autograd.detect_anomaly():
        (grad,) = torch.autograd.grad(ndtri_exp(log_p).sum(), log_p)
    quantile = special.ndtri_exp(np.array(levels))
    expected = torch.tensor(math.sqrt(math.pi / 2) * special.erfcx(-quantile / math.sqrt(2)))
    # float32: the slope's relative error is about |x| times the quantile's (one ulp).
    torch.testing.assert_close(
        grad.double(), expected, rtol=3e-5 if dtype == torch.float32 else 1e-9, atol=0.0
    )
    # torch.func.grad takes the same derivative.
    func_grad = torch.func.grad(lambda levels: ndtri_exp(levels).sum())(log_p.detach())
    torch.testing.assert_close(func_grad, grad)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(ndtri_exp, (log_p.detach().requires_grad_(),))
        assert torch.autograd.gradgradcheck(ndtri_exp, (log_p.detach().requires_grad_(),))


def _rsample_and_reference(
    loc: torch.Tensor, scale: torch.Tensor, seed: int, shape=(64,), low=-1.0, high=1.0
):
    """The fused ``rsample`` and the autograd-through-``icdf`` reference for the same uniform draws."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (loc, scale, loc, scale)]
    torch.manual_seed(seed)
    fast = TruncatedNormal(leaves[0], leaves[1], low, high).rsample(shape)
    torch.manual_seed(seed)
    eps = torch.finfo(loc.dtype).eps
    u = torch.rand(shape + loc.shape, dtype=loc.dtype).clamp(eps, 1.0 - eps)
    reference = TruncatedNormal(leaves[2], leaves[3], low, high).icdf(u)
    weights = torch.linspace(-1.0, 2.0, fast.numel(), dtype=loc.dtype).reshape(fast.shape)
    (fast * weights).sum().backward()
    (reference * weights).sum().backward()
    return fast, reference, leaves


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_rsample_matches_the_icdf_reference_in_values_and_gradients(
    dtype: torch.dtype, array_backend: str
) -> None:
    loc = torch.tensor([c[0] for c in CASES] + [0.999, -0.5], dtype=dtype)
    scale = torch.tensor([c[1] for c in CASES] + [0.02, 3.0], dtype=dtype)
    fast, reference, (loc_f, scale_f, loc_r, scale_r) = _rsample_and_reference(loc, scale, seed=3)
    tolerance = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast, reference, **tolerance)
    assert torch.isfinite(loc_f.grad).all() and torch.isfinite(scale_f.grad).all()
    grad_tolerance = dict(rtol=1e-6, atol=1e-8) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(loc_f.grad, loc_r.grad, **grad_tolerance)
    torch.testing.assert_close(scale_f.grad, scale_r.grad, **grad_tolerance)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@settings(max_examples=40, deadline=None)
@given(loc=st.floats(-1.0, 1.0), log_scale=st.floats(-8.0, 3.0), seed=st.integers(0, 2**16))
def test_fused_rsample_gradients_match_the_reference_everywhere(
    backend: str, loc: float, log_scale: float, seed: int
) -> None:
    loc_t = torch.tensor([loc], dtype=torch.float64)
    scale_t = torch.tensor([math.exp(log_scale)], dtype=torch.float64)
    scipy_ops = truncated_normal._scipy_ops if backend == "scipy" else lambda: None
    with mock.patch.object(truncated_normal, "_scipy_ops", scipy_ops):
        fast, reference, (loc_f, scale_f, loc_r, scale_r) = _rsample_and_reference(loc_t, scale_t, seed)
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loc_f.grad, loc_r.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(scale_f.grad, scale_r.grad, rtol=1e-6, atol=1e-8)


BOUNDS_LOWS = torch.tensor([-2.0, -1.0, 0.0, -0.5, -3.0], dtype=torch.float64)
BOUNDS_HIGHS = torch.tensor([0.5, 1.0, 2.0, 1.0, -1.0], dtype=torch.float64)


@pytest.mark.parametrize(
    ("low", "high"),
    [(-2.0, 0.5), (0.0, 2.0), (BOUNDS_LOWS, 1.0), (-3.5, BOUNDS_HIGHS), (BOUNDS_LOWS, BOUNDS_HIGHS)],
    ids=["numbers-left", "numbers-right", "tensor-low", "tensor-high", "tensors"],
)
def test_rsample_matches_the_icdf_reference_on_other_intervals(low, high, array_backend: str) -> None:
    # Locations inside, near and outside each interval; number bounds take the one-pass formula, tensor bounds
    # the quantile of icdf.
    loc = torch.tensor([0.3, -0.9, 0.9, 1.5, -2.5], dtype=torch.float64)
    scale = torch.tensor([0.8, 0.05, 0.05, 0.3, 1.0], dtype=torch.float64)
    fast, reference, (loc_f, scale_f, loc_r, scale_r) = _rsample_and_reference(
        loc, scale, 5, (32,), low, high
    )
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(loc_f.grad, loc_r.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(scale_f.grad, scale_r.grad, rtol=1e-6, atol=1e-8)


def test_cpu_rsample_of_float32_parameters_is_the_float64_sample_rounded() -> None:
    # SciPy's path computes in float64 and rounds once, at the end.
    torch.manual_seed(6)
    loc = torch.rand(64) * 2.4 - 1.2
    scale = torch.exp(torch.rand(64) * 6.0 - 5.0)
    u = torch.rand(64).clamp(torch.finfo(torch.float32).eps, 1.0 - torch.finfo(torch.float32).eps)
    x32 = _ReparameterizedSample.apply(loc, scale, u, -1.0, 1.0)
    x64 = _ReparameterizedSample.apply(loc.double(), scale.double(), u.double(), -1.0, 1.0)
    assert x32.dtype == torch.float32 and torch.equal(x32, x64.float())


def test_rsample_with_tensor_bounds_and_no_gradient() -> None:
    dist = TruncatedNormal(torch.zeros(3), torch.ones(3), low=torch.tensor([-2.0, 0.0, -0.5]), high=1.0)
    torch.manual_seed(0)
    x = dist.rsample((1000,))
    assert not x.requires_grad
    assert torch.all(x >= dist.low) and torch.all(x <= 1.0)


def test_rsample_without_gradient_equals_the_differentiable_sample() -> None:
    # Without gradient the distribution's own alpha, beta and log Z are shared with log_prob; same numbers.
    loc = torch.tensor([c[0] for c in CASES])
    scale = torch.tensor([c[1] for c in CASES])
    torch.manual_seed(4)
    with_grad = TruncatedNormal(loc.clone().requires_grad_(True), scale).rsample((16,))
    torch.manual_seed(4)
    with torch.no_grad():
        without = TruncatedNormal(loc, scale).rsample((16,))
    assert torch.equal(with_grad.detach(), without)


@pytest.fixture(params=["scipy", "torch"])
def array_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The array formulas (the one-pass sample, the update's fused log-prob and entropy) through SciPy's float64
    ufuncs (CPU default) or through torch (accelerators)."""
    if request.param == "torch":
        monkeypatch.setattr(truncated_normal, "_scipy_ops", lambda: None)
    return request.param


def _sample_and_log_prob_with_reference(loc, scale, low, high, seed, shape=(40,)):
    """The one-pass sample and log-prob, and ``icdf`` + ``log_prob`` (float64) for the same uniform draws."""
    dist = TruncatedNormal(loc, scale, low, high)
    torch.manual_seed(seed)
    x, log_prob = dist.sample_and_log_prob(shape)
    torch.manual_seed(seed)
    eps = torch.finfo(loc.dtype).eps
    u = torch.rand(shape + loc.shape, dtype=loc.dtype).clamp(eps, 1.0 - eps).double()
    reference = TruncatedNormal(loc.double(), scale.double(), low, high)
    # Below the middle of the interval the one-pass sample is the quantile of 1 - u (same distribution).
    level = torch.where(loc.double() < 0.5 * (low + high), 1.0 - u, u)
    expected = reference.icdf(level)
    return x, log_prob, expected, reference.log_prob(expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("low", "high"), [(-1.0, 1.0), (-2.0, 0.5), (0.0, 2.0)])
def test_sample_and_log_prob_match_icdf_and_log_prob(
    dtype: torch.dtype, low: float, high: float, array_backend: str
) -> None:
    width = 0.5 * (high - low)
    loc = torch.tensor([0.5 * (low + high) + width * c[0] for c in CASES] + [high - 1e-3, low], dtype=dtype)
    scale = torch.tensor([width * c[1] for c in CASES] + [0.02, 3.0], dtype=dtype)
    x, log_prob, expected, expected_log_prob = _sample_and_log_prob_with_reference(loc, scale, low, high, 5)
    assert x.dtype == log_prob.dtype == dtype and not x.requires_grad
    assert torch.all(x >= low) and torch.all(x <= high) and torch.isfinite(log_prob).all()
    if dtype == torch.float64:
        torch.testing.assert_close(x, expected, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(log_prob, expected_log_prob, rtol=1e-9, atol=1e-9)
    else:
        torch.testing.assert_close(x.double(), expected, rtol=1e-4, atol=1e-5)
        # Read off the quantile, the log-density keeps float32's resolution even where the sample's does
        # not resolve the density (scale exp(-8) at a bound; log_prob of the rounded sample is off by ~1e-4).
        torch.testing.assert_close(log_prob.double(), expected_log_prob, rtol=5e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@settings(max_examples=40, deadline=None)
@given(loc=st.floats(-1.0, 1.0), log_scale=st.floats(-8.0, 3.0), seed=st.integers(0, 2**16))
def test_sample_and_log_prob_match_the_reference_everywhere(
    backend: str, loc: float, log_scale: float, seed: int
) -> None:
    loc_t = torch.tensor([loc], dtype=torch.float64)
    scale_t = torch.tensor([math.exp(log_scale)], dtype=torch.float64)
    scipy_ops = truncated_normal._scipy_ops if backend == "scipy" else lambda: None
    with mock.patch.object(truncated_normal, "_scipy_ops", scipy_ops):
        x, log_prob, expected, expected_log_prob = _sample_and_log_prob_with_reference(
            loc_t, scale_t, -1.0, 1.0, seed
        )
    torch.testing.assert_close(x, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(log_prob, expected_log_prob, rtol=1e-9, atol=1e-9)


def test_sample_and_log_prob_far_outside_the_support_take_the_deep_tail(array_backend: str) -> None:
    # Locations far outside [-1, 1] put every quantile level below float32's smallest normal number.
    loc = torch.tensor([12.0, -12.0, 3.0])
    scale = torch.tensor([0.1, 0.1, 0.05])
    x, log_prob, expected, expected_log_prob = _sample_and_log_prob_with_reference(loc, scale, -1.0, 1.0, 2)
    assert torch.isfinite(x).all() and torch.isfinite(log_prob).all()
    torch.testing.assert_close(x.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(log_prob.double(), expected_log_prob, rtol=1e-4, atol=2e-2)


def test_sample_and_log_prob_with_tensor_bounds_and_under_grad_mode(array_backend: str) -> None:
    loc = torch.zeros(3, requires_grad=True)
    dist = TruncatedNormal(loc, torch.ones(3), low=torch.tensor([-2.0, 0.0, -0.5]), high=1.0)
    x, log_prob = dist.sample_and_log_prob((500,))
    assert not x.requires_grad and not log_prob.requires_grad
    assert torch.all(x >= dist.low) and torch.all(x <= 1.0)
    torch.testing.assert_close(log_prob, dist.log_prob(x).detach())
    x, log_prob = TruncatedNormal(loc, torch.ones(3)).sample_and_log_prob((4,))
    assert not x.requires_grad and not log_prob.requires_grad


def _reference_statistics(loc: torch.Tensor, scale: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """log_prob, entropy, mean and variance by plain autograd through ``log_ndtr_diff`` (no custom backward)."""
    from era_core.truncated_normal import log_ndtr_diff

    alpha, beta = (-1.0 - loc) / scale, (1.0 - loc) / scale
    log_z = log_ndtr_diff(beta, alpha)
    pa = torch.exp(-0.5 * alpha**2 - 0.5 * math.log(2 * math.pi) - log_z)
    pb = torch.exp(-0.5 * beta**2 - 0.5 * math.log(2 * math.pi) - log_z)
    xi = (value - loc) / scale
    log_prob = -0.5 * xi**2 - 0.5 * math.log(2 * math.pi) - torch.log(scale) - log_z
    entropy = 0.5 * math.log(2 * math.pi * math.e) + torch.log(scale) + log_z + 0.5 * (alpha * pa - beta * pb)
    mean = loc + scale * (pa - pb)
    variance = scale**2 * (1.0 + alpha * pa - beta * pb - (pa - pb) ** 2)
    return torch.stack([log_prob, entropy, mean, variance])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closed_form_log_z_gradient_matches_autograd_through_the_reference(dtype: torch.dtype) -> None:
    loc = torch.tensor([c[0] for c in CASES] + [0.999, -0.5], dtype=dtype)
    scale = torch.tensor([c[1] for c in CASES] + [0.02, 3.0], dtype=dtype)
    value = (loc + 0.5 * scale).clamp(-1.0, 1.0)
    weights = torch.linspace(-1.0, 2.0, 4, dtype=dtype)[:, None]
    grads = []
    for statistics in (
        lambda lo, sc: torch.stack(
            [(d := TruncatedNormal(lo, sc)).log_prob(value), d.entropy(), d.mean, d.variance]
        ),
        lambda lo, sc: _reference_statistics(lo, sc, value),
    ):
        leaves = (loc.clone().requires_grad_(True), scale.clone().requires_grad_(True))
        (statistics(*leaves) * weights).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    (fast_loc, fast_scale), (ref_loc, ref_scale) = grads
    assert torch.isfinite(fast_loc).all() and torch.isfinite(fast_scale).all()
    tolerance = dict(rtol=1e-7, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(fast_loc, ref_loc, **tolerance)
    torch.testing.assert_close(fast_scale, ref_scale, **tolerance)


def test_closed_form_log_z_gradient_passes_gradcheck() -> None:
    from era_core.truncated_normal import _LogZAndDensityRatios

    alpha = torch.tensor([-3.0, -0.2, -40.0, 0.5, -1e-3, -5.0], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([-1.0, 0.3, -38.0, 30.0, 1e-3, 5.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_LogZAndDensityRatios.apply, (alpha, beta))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_and_log_prob_backends_agree_draw_for_draw(dtype: torch.dtype) -> None:
    # The same uniform draws through SciPy (float64) and through torch give the same samples and log-probs.
    loc = torch.tensor([c[0] for c in CASES] + [12.0, -3.0], dtype=dtype)
    scale = torch.tensor([c[1] for c in CASES] + [0.1, 0.05], dtype=dtype)
    results = []
    for scipy_ops in (truncated_normal._scipy_ops, lambda: None):
        with mock.patch.object(truncated_normal, "_scipy_ops", scipy_ops):
            torch.manual_seed(3)
            results.append(TruncatedNormal(loc, scale).sample_and_log_prob((50,)))
    (x_scipy, lp_scipy), (x_torch, lp_torch) = results
    assert x_scipy.dtype == lp_scipy.dtype == dtype and x_scipy.shape == (50, len(CASES) + 2)
    tolerance = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x_scipy, x_torch, **tolerance)
    torch.testing.assert_close(
        lp_scipy, lp_torch, **(tolerance if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-2))
    )


def test_sample_and_log_prob_keeps_half_precision_and_cpu_tensors(array_backend: str) -> None:
    dist = TruncatedNormal(
        torch.tensor([0.2, -0.9], dtype=torch.bfloat16), torch.tensor([0.3, 0.01]).bfloat16()
    )
    x, log_prob = dist.sample_and_log_prob((7,))
    assert x.dtype == log_prob.dtype == torch.bfloat16 and x.shape == log_prob.shape == (7, 2)
    assert torch.all(x >= -1.0) and torch.all(x <= 1.0) and torch.isfinite(log_prob).all()


def _fused_and_reference(loc, scale, value):
    """Values and (loc, scale, value) gradients of ``log_prob_and_entropy`` and of the plain-autograd reference."""
    weights = torch.linspace(-1.0, 2.0, 2, dtype=loc.dtype)[:, None]
    out = []
    for fused in (True, False):
        leaves = [t.clone().requires_grad_(True) for t in (loc, scale, value)]
        if fused:
            stats_ = torch.stack(TruncatedNormal(leaves[0], leaves[1]).log_prob_and_entropy(leaves[2]))
        else:
            stats_ = _reference_statistics(leaves[0], leaves[1], leaves[2])[:2]
        (stats_ * weights).sum().backward()
        out.append((stats_.detach(), [leaf.grad for leaf in leaves]))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_log_prob_and_entropy_match_the_reference_in_values_and_gradients(
    array_backend: str, dtype: torch.dtype
) -> None:
    loc = torch.tensor([c[0] for c in CASES] + [0.999, -0.5], dtype=dtype)
    scale = torch.tensor([c[1] for c in CASES] + [0.02, 3.0], dtype=dtype)
    value = (loc + 0.5 * scale).clamp(-1.0, 1.0)
    (fused, fused_grads), (reference, reference_grads) = _fused_and_reference(loc, scale, value)
    tolerance = dict(rtol=1e-7, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(fused, reference, **tolerance)
    for grad, expected in zip(fused_grads, reference_grads, strict=True):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, expected, **tolerance)


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@settings(max_examples=60, deadline=None)
@given(
    loc=st.floats(-1.0, 1.0),
    log_scale=st.floats(-8.0, 3.0),
    position=st.floats(0.0, 1.0),
)
def test_log_prob_and_entropy_gradients_match_the_reference_everywhere(
    backend: str, loc: float, log_scale: float, position: float
) -> None:
    loc_t = torch.tensor([loc], dtype=torch.float64)
    scale_t = torch.tensor([math.exp(log_scale)], dtype=torch.float64)
    # A point of the support around the location, where the density is not negligible.
    value_t = (loc_t + (2.0 * position - 1.0) * scale_t).clamp(-1.0, 1.0)
    scipy_ops = truncated_normal._scipy_ops if backend == "scipy" else lambda: None
    with mock.patch.object(truncated_normal, "_scipy_ops", scipy_ops):
        (fused, fused_grads), (reference, reference_grads) = _fused_and_reference(loc_t, scale_t, value_t)
    torch.testing.assert_close(fused, reference, rtol=1e-7, atol=1e-8)
    for grad, expected in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)


def test_log_prob_and_entropy_pass_gradcheck(array_backend: str) -> None:
    from era_core.truncated_normal import _LogProbAndEntropy

    loc = torch.tensor([0.0, 0.9, -0.99, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([1.0, 0.3, 0.05, 4.0, 0.5], dtype=torch.float64, requires_grad=True)
    value = torch.tensor([0.2, 0.8, -0.95, -0.7, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: _LogProbAndEntropy.apply(*a, -1.0, 1.0), (loc, scale, value))


def test_log_prob_is_one_node_that_agrees_with_the_graph_free_path(array_backend: str) -> None:
    loc = torch.tensor([0.1, -0.7, 0.95], requires_grad=True)
    scale = torch.tensor([0.2, 0.5, 0.01], requires_grad=True)
    value = torch.tensor([0.0, -1.0, 1.0])
    dist = TruncatedNormal(loc, scale)
    log_prob = dist.log_prob(value)
    assert type(log_prob.grad_fn).__name__ == "_LogProbAndEntropyBackward"
    with torch.no_grad():
        torch.testing.assert_close(log_prob.detach(), TruncatedNormal(loc, scale).log_prob(value))
    # Outside the support: -inf, and no gradient from there.
    outside = TruncatedNormal(loc, scale, validate_args=False).log_prob(torch.tensor([0.0, 0.0, 1.5]))
    assert torch.isneginf(outside[2]) and torch.isfinite(outside[:2]).all()
    outside[:2].sum().backward()
    assert scale.grad[2] == 0.0 and loc.grad[2] == 0.0


def test_log_prob_and_entropy_fall_back_for_tensor_bounds_and_broadcast_values() -> None:
    loc = torch.tensor([0.1, -0.4], requires_grad=True)
    scale = torch.tensor([0.3, 0.6])
    dist = TruncatedNormal(loc, scale, low=torch.tensor([-2.0, 0.0]), high=1.0)
    log_prob, entropy = dist.log_prob_and_entropy(torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(log_prob, dist.log_prob(torch.tensor([0.5, 0.5])))
    torch.testing.assert_close(entropy, dist.entropy())
    unit = TruncatedNormal(loc, scale)
    values = torch.tensor([[0.0, 0.2], [0.5, -0.9], [1.0, -1.0]])
    log_prob, entropy = unit.log_prob_and_entropy(values)
    assert log_prob.shape == (3, 2) and entropy.shape == (2,)
    torch.testing.assert_close(log_prob, unit.log_prob(values))
    with pytest.raises(ValueError, match="support"):
        TruncatedNormal(loc, scale, validate_args=True).log_prob_and_entropy(torch.tensor([0.0, 1.5]))


@pytest.mark.parametrize("shape", [(), (3,)])
def test_sample_and_log_prob_of_scalar_parameters(array_backend: str, shape: tuple) -> None:
    for dist in (TruncatedNormal(torch.tensor(0.3), torch.tensor(0.5)), TruncatedNormal(0.3, 0.5)):
        x, log_prob = dist.sample_and_log_prob(shape)
        assert x.shape == log_prob.shape == shape and x.dtype == log_prob.dtype == torch.float32
        assert torch.all(x.abs() <= 1.0)
        torch.testing.assert_close(log_prob, dist.log_prob(x), rtol=1e-5, atol=1e-5)


def _formula_namespaces(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the array namespace each one-pass sample computes with."""
    seen = []
    formula = truncated_normal._sample_in_interval

    def spy(ops, *args):
        seen.append(ops)
        return formula(ops, *args)

    monkeypatch.setattr(truncated_normal, "_sample_in_interval", spy)
    return seen


def test_cpu_rollouts_take_the_scipy_path_unless_compiled_or_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _formula_namespaces(monkeypatch)
    dist = TruncatedNormal(torch.tensor([0.2, -0.3]), torch.tensor([0.5, 0.1]))
    dist.sample_and_log_prob()
    assert seen == [truncated_normal._scipy_ops()] and seen[0] is not None
    for flag in ("torch.compiler.is_compiling", "torch.jit.is_tracing"):
        with mock.patch(flag, lambda: True):
            dist.sample_and_log_prob()
        assert seen[-1] is truncated_normal._TorchOps
    # Tensor bounds take the two-call route (rsample + log_prob), whatever the backend.
    rsample = mock.Mock(wraps=TruncatedNormal.rsample)
    monkeypatch.setattr(TruncatedNormal, "rsample", lambda self, *a: rsample(self, *a))
    for low, high in ((torch.tensor([-1.0, -2.0]), 1.0), (-1.0, torch.tensor([1.0, 0.5]))):
        x, log_prob = TruncatedNormal(
            torch.tensor([0.2, -0.3]), torch.tensor([0.5, 0.1]), low, high
        ).sample_and_log_prob()
        assert torch.isfinite(log_prob).all() and torch.all(x <= torch.as_tensor(high))
    assert rsample.call_count == 2 and len(seen) == 3


def test_cpu_updates_take_the_scipy_path_unless_compiled_or_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    formula = truncated_normal._log_prob_and_entropy_in_interval
    monkeypatch.setattr(
        truncated_normal,
        "_log_prob_and_entropy_in_interval",
        lambda ops, *a: seen.append(ops) or formula(ops, *a),
    )
    loc = torch.tensor([0.2, -0.3], requires_grad=True)
    dist = TruncatedNormal(loc, torch.tensor([0.5, 0.1]))
    dist.log_prob_and_entropy(torch.tensor([0.1, -0.2]))
    assert seen == [truncated_normal._scipy_ops()] and seen[0] is not None
    for flag in ("torch.compiler.is_compiling", "torch.jit.is_tracing"):
        with mock.patch(flag, lambda: True):
            dist.log_prob_and_entropy(torch.tensor([0.1, -0.2]))
        assert seen[-1] is truncated_normal._TorchOps


def test_log_prob_and_entropy_on_an_interval_off_zero_match_the_two_calls(array_backend: str) -> None:
    # Number bounds whose centre is not 0: the fused node's mirror image is taken about the centre.
    loc = torch.tensor([0.3, 1.9, 1.0, -0.4], dtype=torch.float64)
    scale = torch.tensor([0.5, 0.1, 2.0, 0.3], dtype=torch.float64)
    value = torch.tensor([0.2, 1.95, 0.0, 0.1], dtype=torch.float64)
    results = []
    for fused in (True, False):
        leaves = [loc.clone().requires_grad_(True), scale.clone().requires_grad_(True)]
        dist = TruncatedNormal(*leaves, low=0.0, high=2.0)
        if fused:
            log_prob, entropy = dist.log_prob_and_entropy(value)
        else:  # the two-call path differentiates ln Z through _LogZAndDensityRatios
            log_prob, entropy = dist.log_prob(value.expand(1, 4))[0], dist.entropy()
        (log_prob.sum() + 2.0 * entropy.sum()).backward()
        results.append([log_prob.detach(), entropy.detach(), *(leaf.grad for leaf in leaves)])
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("output", ["log_prob", "entropy"])
def test_a_gradient_of_one_output_alone_matches_the_reference(array_backend: str, output: str) -> None:
    # The loss may read only one of the two (SAC's actor: the log-prob; an entropy bonus: the entropy).
    loc = torch.tensor([0.3, -0.95, 0.0], dtype=torch.float64)
    scale = torch.tensor([0.2, 0.05, 2.0], dtype=torch.float64)
    value = torch.tensor([0.1, -0.99, 0.7], dtype=torch.float64)
    index = ["log_prob", "entropy"].index(output)
    grads = []
    for fused in (True, False):
        leaves = [loc.clone().requires_grad_(True), scale.clone().requires_grad_(True)]
        if fused:
            stats_ = TruncatedNormal(*leaves).log_prob_and_entropy(value)[index]
        else:
            stats_ = _reference_statistics(*leaves, value)[index]
        stats_.sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for grad, expected in zip(*grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-7, atol=1e-9)


def test_log_prob_keeps_the_parameters_dtype_and_is_minus_infinity_outside_the_support(
    array_backend: str,
) -> None:
    loc, scale = torch.tensor([0.1, -0.5]), torch.tensor([0.3, 0.2])
    value = torch.tensor([0.3, -1.5], dtype=torch.float64)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            dist = TruncatedNormal(loc.clone().requires_grad_(grad), scale, validate_args=False)
            log_prob = dist.log_prob(value)
            assert (
                log_prob.dtype == torch.float32
                and torch.isneginf(log_prob[1])
                and torch.isfinite(log_prob[0])
            )
            assert all(t.dtype == torch.float32 for t in dist.log_prob_and_entropy(value))
    half = TruncatedNormal(loc.bfloat16().requires_grad_(True), scale.bfloat16())
    assert half.log_prob(value[:1].expand(2).float()).dtype == torch.bfloat16
    assert [t.dtype for t in half.log_prob_and_entropy(value[:1].expand(2).float())] == [torch.bfloat16] * 2


def test_log_prob_and_entropy_is_one_node_and_broadcast_values_get_the_reference_gradient(
    array_backend: str,
) -> None:
    loc = torch.tensor([0.1, -0.4], requires_grad=True)
    scale = torch.tensor([0.3, 0.6], requires_grad=True)
    log_prob, entropy = TruncatedNormal(loc, scale).log_prob_and_entropy(torch.tensor([0.5, 0.5]))
    assert type(log_prob.grad_fn).__name__ == type(entropy.grad_fn).__name__ == "_LogProbAndEntropyBackward"
    values = torch.tensor([[0.0, 0.2], [0.5, -0.9], [1.0, -1.0]])
    grads = []
    for method in ("log_prob_and_entropy", "two calls"):
        loc.grad = scale.grad = None
        dist = TruncatedNormal(loc, scale)
        if method == "two calls":  # autograd through the broadcast log_prob and the entropy
            log_prob, entropy = dist.log_prob(values), dist.entropy()
        else:
            log_prob, entropy = dist.log_prob_and_entropy(values)
        (log_prob.sum() + entropy.sum()).backward()
        grads.append((loc.grad.clone(), scale.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sample_and_log_prob_clamp_the_uniform_draw_like_rsample(
    array_backend: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.rand can return 0 and values above 1 - eps; the draw is used as clamp(u, eps, 1 - eps), as in rsample.
    eps = torch.finfo(dtype).eps
    draws = torch.tensor([0.0, 1.0 - eps / 2, 0.5, 0.0, 1.0 - eps / 2, 0.25], dtype=dtype)
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: draws.reshape(shape).clone())
    loc = torch.tensor([0.3, 0.3, 0.3, -0.6, -0.6, -0.6], dtype=dtype)
    scale = torch.tensor([0.2, 0.2, 0.2, 0.5, 0.5, 0.5], dtype=dtype)
    x, log_prob = TruncatedNormal(loc, scale).sample_and_log_prob()
    u = draws.double().clamp(eps, 1.0 - eps)
    reference = TruncatedNormal(loc.double(), scale.double())
    expected = reference.icdf(torch.where(loc.double() < 0.0, 1.0 - u, u))
    tolerance = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x.double(), expected, **tolerance)
    assert torch.all(x.abs() < 1.0) and torch.isfinite(log_prob).all()
