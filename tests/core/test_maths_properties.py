"""Properties that fail when the maths is wrong (issue 14), not only when it crashes.

Each test here was checked against a deliberately broken copy of ``era_core`` (the mutation named in its
docstring) and fails on it.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era_core import (
    BatchGaussianERA,
    GaussianERA,
    SoftmaxERA,
    TruncatedNormal,
    gaussian_entropy,
    gaussian_era_log_std,
    max_feasible_target,
    softmax_era_feasible_range,
    softmax_era_logits,
)


def _softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.double(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


# --- Gaussian ERA with log_std_max != 0 (mutation: the "+ log_std_max" term dropped) -----------------------


@settings(max_examples=60, deadline=None)
@given(
    dim=st.integers(1, 12),
    lmax=st.floats(-3.0, 2.0),
    below_max=st.floats(0.05, 6.0),
    seed=st.integers(0, 2**16),
)
def test_gaussian_floor_is_tight_and_bounded_for_any_log_std_max(
    dim: int, lmax: float, below_max: float, seed: int
) -> None:
    """Far from ``lmin`` the entropy equals the target exactly and every log-std stays at or below ``lmax``."""
    target = max_feasible_target(dim, lmax) - below_max * dim
    era = GaussianERA(dim, target_entropy=target, log_std_min=-200.0, log_std_max=lmax)
    z = torch.randn(64, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3.0
    log_std = era(z)
    entropy = gaussian_entropy(log_std.double())
    torch.testing.assert_close(
        entropy, torch.full_like(entropy, target), atol=1e-4 * (1 + abs(target)), rtol=0
    )
    assert torch.all(log_std <= lmax + 1e-6)
    assert era.entropy_floor().item() == pytest.approx(target)


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 8), lmax=st.floats(-2.0, 2.0), lmin_gap=st.floats(0.1, 4.0), seed=st.integers(0, 999)
)
def test_gaussian_floor_holds_with_an_active_lower_clamp(
    dim: int, lmax: float, lmin_gap: float, seed: int
) -> None:
    """With ``lmin`` close to ``lmax`` the clamp binds; it can only raise the entropy above the target."""
    lmin = lmax - lmin_gap
    target = max_feasible_target(dim, lmax) - 1.0 * dim
    z = torch.randn(128, dim, generator=torch.Generator().manual_seed(seed)) * 10.0
    log_std = gaussian_era_log_std(z, target, log_std_min=lmin, log_std_max=lmax)
    assert torch.all(log_std >= lmin) and torch.all(log_std <= lmax + 1e-5)
    assert torch.all(gaussian_entropy(log_std.double()) >= target - 1e-4 * (1 + abs(target)))


def test_largest_feasible_target_gives_constant_log_std_max() -> None:
    """At ``Ht = max_feasible_target`` (``K = 0``) every log-std is exactly ``lmax``, whatever ``z`` is."""
    era = GaussianERA(3, target_entropy=max_feasible_target(3, 0.7), log_std_max=0.7)
    torch.testing.assert_close(era(torch.randn(16, 3) * 5), torch.full((16, 3), 0.7))
    with pytest.raises(ValueError, match="largest feasible target"):
        GaussianERA(3, target_entropy=max_feasible_target(3, 0.7) + 1e-3, log_std_max=0.7)


# --- Batch-level variant (spec 1.4; mutation: the final clamp removed) --------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_batch_variant_clamp_is_reached_and_honoured(training: bool) -> None:
    """Raw log-stds spread far beyond ``[lmin, lmax]``: the output is clamped to exactly those bounds."""
    era = BatchGaussianERA(3, target_entropy=-6.0, log_std_min=-4.0, log_std_max=0.5, momentum=1.0)
    z = torch.linspace(-40.0, 40.0, 3 * 64).reshape(64, 3)
    era.train()(z)  # sets the running shift
    log_std = era.train(training)(z)
    assert log_std.min().item() == -4.0 and log_std.max().item() == 0.5
    # Between the bounds the output is z plus one common shift.
    inside = (log_std > -4.0) & (log_std < 0.5)
    shifts = (log_std - z)[inside]
    assert inside.any() and torch.allclose(shifts, shifts[0].expand_as(shifts))


def test_batch_variant_running_shift_follows_momentum() -> None:
    era = BatchGaussianERA(2, target_entropy=-1.0, log_std_min=-50.0, log_std_max=50.0, momentum=0.25)
    z = torch.full((8, 2), 3.0)
    era.train()(z)
    needed = (-1.0 - 0.5 * 2 * math.log(2 * math.pi * math.e) - 6.0) / 2
    assert era.running_shift.item() == pytest.approx(0.25 * needed)
    # In evaluation, or for a single unbatched vector, the running shift is used and not updated.
    single = era.train()(torch.zeros(2))
    torch.testing.assert_close(single, torch.full((2,), 0.25 * needed))
    assert era.running_shift.item() == pytest.approx(0.25 * needed)


# --- Softmax ERA for tau != 4 (mutation: constants computed with tau=4 whatever tau is) ---------------------


@settings(max_examples=50, deadline=None)
@given(
    num_classes=st.integers(2, 50),
    tau=st.floats(2.8, 30.0),
    fraction=st.floats(0.01, 1.0),
    log_scale=st.floats(-2.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_softmax_floor_and_share_cap_hold_for_any_tau(
    num_classes: int, tau: float, fraction: float, log_scale: float, seed: int
) -> None:
    """The floor holds for every tau; the exact inverse's probabilities-before-normalisation stay <= 1/tau
    and their shares ``-q ln q`` sum to ``exp(Hmin - 1)``."""
    low, high = softmax_era_feasible_range(num_classes, tau)
    # The interval is closed at high; low + 1.0 * (high - low) can round one ulp above it.
    min_entropy = min(low + fraction * (high - low), high)
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(32, num_classes, generator=gen, dtype=torch.float64) * 10**log_scale
    for inverse in ("approx", "newton"):
        out = SoftmaxERA(num_classes, min_entropy, tau=tau, inverse=inverse)(logits)
        assert torch.isfinite(out).all()
        assert _softmax_entropy(out).min().item() >= min_entropy - 1e-9
    q = softmax_era_logits(logits, min_entropy, tau=tau, inverse="newton").exp()
    assert q.max().item() <= (1.0 / tau) * (1 + 1e-9)
    shares = (-q * q.log()).sum(-1)
    torch.testing.assert_close(shares, torch.full_like(shares, math.exp(min_entropy - 1)), rtol=1e-9, atol=0)


def test_softmax_one_hot_input_reaches_the_share_cap_for_tau_8() -> None:
    """A saturated logit gets the largest share ``ln(tau)/tau``, i.e. ``q = 1/tau`` before normalisation."""
    tau, min_entropy = 8.0, 1.0
    logits = torch.tensor([[1e4, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    q = softmax_era_logits(logits, min_entropy, tau=tau, inverse="newton").exp()
    assert q[0, 0].item() == pytest.approx(1.0 / tau, rel=1e-9)
    assert _softmax_entropy(q.log()).item() >= min_entropy


# --- Truncated normal reparameterised gradients (mutation: scale detached inside icdf) ---------------------

GRAD_CASES = [
    (0.0, 1.0, -1.0, 1.0),
    (0.6, 0.3, -1.0, 1.0),  # upper tail: the mirrored branch
    (-0.7, 0.2, -1.0, 1.0),
    (0.95, 0.02, -1.0, 1.0),
    (0.1, 0.3, 0.0, 0.4),
    (2.0, 0.8, -1.0, 1.0),  # location outside the support
]


@pytest.mark.parametrize(("loc", "scale", "low", "high"), GRAD_CASES)
def test_icdf_gradient_at_fixed_u_matches_finite_differences(
    loc: float, scale: float, low: float, high: float
) -> None:
    """``rsample`` is ``icdf(u)``: its autograd derivative in ``loc`` and ``scale`` equals the numerical one."""
    u = torch.tensor([0.03, 0.2, 0.5, 0.8, 0.97], dtype=torch.float64)
    params = (
        torch.tensor(loc, dtype=torch.float64, requires_grad=True),
        torch.tensor(scale, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(lambda m, s: TruncatedNormal(m, s, low, high).icdf(u), params)


@pytest.mark.parametrize(("loc", "scale", "low", "high"), GRAD_CASES)
def test_closed_form_gradients_match_finite_differences(
    loc: float, scale: float, low: float, high: float
) -> None:
    """Mean, variance, entropy, CDF and log-density are differentiated correctly in ``loc`` and ``scale``."""
    x = torch.tensor([low + 0.3 * (high - low), low + 0.77 * (high - low)], dtype=torch.float64)
    params = (
        torch.tensor(loc, dtype=torch.float64, requires_grad=True),
        torch.tensor(scale, dtype=torch.float64, requires_grad=True),
    )

    def closed_forms(m: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dist = TruncatedNormal(m, s, low, high)
        return dist.mean, dist.variance, dist.entropy(), dist.cdf(x), dist.log_prob(x)

    assert torch.autograd.gradcheck(closed_forms, params)


def test_pathwise_gradient_of_samples_equals_gradient_of_the_mean() -> None:
    """``E[d rsample / d theta] = d E[X] / d theta``: the value the issue measured (-0.41 not -0.26)."""
    torch.manual_seed(0)
    loc = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    dist = TruncatedNormal(loc, scale)
    pathwise = torch.autograd.grad(dist.rsample((200_000,)).mean(), (loc, scale))
    exact = torch.autograd.grad(TruncatedNormal(loc, scale).mean, (loc, scale))
    for got, want in zip(pathwise, exact, strict=True):
        assert got.item() == pytest.approx(want.item(), abs=5e-3)


@settings(max_examples=40, deadline=None)
@given(loc=st.floats(-3.0, 3.0), log_scale=st.floats(-8.0, 2.0), seed=st.integers(0, 2**16))
def test_samples_lie_in_support_and_cdf_of_sample_is_uniform_draw(
    loc: float, log_scale: float, seed: int
) -> None:
    """``rsample`` draws inside ``[low, high]`` and ``cdf(icdf(u)) = u`` wherever the density is resolvable."""
    dist = TruncatedNormal(
        torch.tensor([loc], dtype=torch.float64), torch.tensor([math.exp(log_scale)], dtype=torch.float64)
    )
    torch.manual_seed(seed)
    x = dist.rsample((64,))
    assert torch.all(x >= -1.0) and torch.all(x <= 1.0)
    u = torch.tensor([[0.25], [0.5], [0.75]], dtype=torch.float64)
    if math.exp(log_scale) > 1e-3 and abs(loc) < 1.0 + 5 * math.exp(log_scale):
        torch.testing.assert_close(dist.cdf(dist.icdf(u)), u, atol=1e-6, rtol=0)


# --- Survivors of the mutation run on era_core (scripts/mutation.py era_core) -------------------------------


def test_truncated_normal_expand_keeps_dtype_bounds_and_validation() -> None:
    """``expand`` with number bounds, half-precision parameters and unvalidated (here invalid) parameters."""
    dist = TruncatedNormal(
        torch.tensor([0.2, -0.5], dtype=torch.bfloat16), torch.tensor([0.3, 0.1], dtype=torch.bfloat16)
    )
    expanded = dist.expand((4, 2))
    assert expanded.low == -1.0 and expanded.high == 1.0
    assert expanded.entropy().dtype == expanded.mean.dtype == torch.bfloat16
    torch.testing.assert_close(expanded.entropy(), dist.entropy().expand(4, 2))
    unchecked = TruncatedNormal(torch.zeros(2), torch.tensor([1.0, -1.0]), validate_args=False)
    assert unchecked.expand((3, 2)).batch_shape == (3, 2)  # validation stays off, as in the original


def test_truncated_normal_expand_returns_the_subclass() -> None:
    class Shifted(TruncatedNormal):
        def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
            super().__init__(loc, scale, -1.0, 1.0)

        def expand(self, batch_shape, _instance=None):
            return super().expand(batch_shape, self._get_checked_instance(Shifted, _instance))

    assert type(Shifted(torch.zeros(2), torch.ones(2)).expand((3, 2))) is Shifted


def test_categorical_entropy_reduces_over_the_last_dimension_of_3d_logits() -> None:
    from era_core import categorical_entropy

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(categorical_entropy(logits), expected.float())


@pytest.mark.parametrize("topk", [None, 3])
def test_scaled_token_logprobs_dtype_and_top_k_membership(topk: int | None) -> None:
    """Half-precision logits are computed in float32; float64 factors do not promote float32 logits; with
    ``topk=3`` exactly the tokens among the three largest scaled logits are scored."""
    from era_core import scaled_token_logprobs

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64) * 3
    tokens = torch.randint(0, 6, (3, 4), generator=gen)
    factors = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    reference = scaled_token_logprobs(logits, tokens, factors, topk)
    for dtype in (torch.bfloat16, torch.float32):
        got = scaled_token_logprobs(
            logits.to(dtype), tokens, factors if dtype == torch.float32 else factors.float(), topk
        )
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), reference, atol=0.1, rtol=0.02)
    scaled = logits * factors.view(-1, 1, 1)
    picked = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if topk is None:
        torch.testing.assert_close(reference, picked - scaled.logsumexp(-1))
    else:
        top = scaled.topk(topk, dim=-1).values
        in_top = picked >= top[..., -1]
        assert in_top.any() and (~in_top).any()
        torch.testing.assert_close(reference[in_top], (picked - top.logsumexp(-1))[in_top])
        assert (reference[~in_top] == -1e4).all()


def test_truncated_normal_cdf_outside_the_support_is_zero_below_and_one_above() -> None:
    dist = TruncatedNormal(torch.tensor([0.3, -0.9]), torch.tensor([0.2, 0.5]))
    torch.testing.assert_close(dist.cdf(torch.tensor([-1.5, -3.0])), torch.zeros(2))
    torch.testing.assert_close(dist.cdf(torch.tensor([1.5, 3.0])), torch.ones(2))


def test_scaled_advantages_keep_the_advantages_dtype() -> None:
    from era_core import scaled_advantages

    got = scaled_advantages(
        torch.tensor([1.0, -2.0, 3.0]), torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([0.5, -4.0, 3.0]))


@pytest.mark.parametrize("measured", [-5.0, 0.5])
def test_compensation_gradient_is_measured_minus_target_entropy(measured: float) -> None:
    """Spec 1.3: d loss / d delta = H_hat - H0, below and above the target."""
    era = GaussianERA(3, target_entropy=-1.5, learn_delta=True)
    era.compensation_loss(torch.full((16,), -measured, dtype=torch.float64)).backward()
    assert era.delta.grad.item() == pytest.approx(measured + 1.5)


def test_compensation_at_exactly_the_cap_stops_rising_but_can_fall() -> None:
    era = GaussianERA(2, target_entropy=-1.0, learn_delta=True)
    with torch.no_grad():
        era.delta.fill_(era.max_delta)
    era.compensation_loss(torch.full((8,), 10.0)).backward()  # entropy below target: no push upwards
    assert era.delta.grad.item() == 0.0
    era.delta.grad = None
    era.compensation_loss(torch.full((8,), 0.5)).backward()  # entropy -0.5 above target -1: delta falls
    assert era.delta.grad.item() == pytest.approx(0.5)


def test_batch_variant_arguments_defaults_and_errors() -> None:
    era = BatchGaussianERA(4)
    assert (era.target_entropy, era.log_std_min, era.log_std_max, era.momentum) == (-2.0, -8.0, 0.0, 0.01)
    assert BatchGaussianERA(4, target_entropy_per_dim=-1.0).target_entropy == -4.0
    assert BatchGaussianERA(4, target_entropy=-3.0).target_entropy == -3.0
    with pytest.raises(ValueError, match=r"momentum must be in \(0, 1\], got 1.5"):
        BatchGaussianERA(4, momentum=1.5)
    with pytest.raises(ValueError, match=r"expected pre-activations of shape \(\.\.\., 4\), got \(2, 3\)"):
        era(torch.zeros(2, 3))


def test_batch_variant_holds_the_mean_over_every_leading_dimension_and_keeps_dtype() -> None:
    era = BatchGaussianERA(3, target_entropy=-1.0, log_std_min=-50.0, log_std_max=50.0, momentum=1.0)
    z = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0)) * 2
    log_std = era.train()(z)
    assert gaussian_entropy(log_std.double()).mean().item() == pytest.approx(-1.0, abs=1e-5)
    assert era.train()(z.to(torch.bfloat16)).dtype == torch.bfloat16


def test_gaussian_entropy_and_shape_checks_use_the_last_dimension_of_3d_inputs() -> None:
    log_std = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = 0.5 * 4 * math.log(2 * math.pi * math.e) + log_std.sum(-1)
    torch.testing.assert_close(gaussian_entropy(log_std), expected)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        GaussianERA(3)(torch.zeros(2, 3, 4))
    assert BatchGaussianERA(4, target_entropy=-3.0).entropy_floor().item() == -3.0


def test_truncated_normal_cdf_returns_the_parameters_dtype() -> None:
    dist = TruncatedNormal(
        torch.tensor([0.2], dtype=torch.bfloat16), torch.tensor([0.3], dtype=torch.bfloat16)
    )
    cdf = dist.cdf(torch.tensor([0.1]))
    assert cdf.dtype == torch.bfloat16 and 0.0 < cdf.item() < 1.0


def test_truncated_normal_expand_keeps_validation_on() -> None:
    checked = TruncatedNormal(torch.zeros(2), torch.ones(2), validate_args=True).expand((3, 2))
    with pytest.raises(ValueError, match="support"):
        checked.log_prob(torch.full((3, 2), 1.5))


def test_gaussian_floor_on_3d_pre_activations_is_per_last_dimension() -> None:
    """A ``(B, T, D)`` input: the softmax and the count ``D`` come from the last dimension."""
    z = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    log_std = gaussian_era_log_std(z, -2.0, log_std_min=-100.0, log_std_max=0.5)
    # Computed in float32 (then cast back), hence the tolerances.
    torch.testing.assert_close(
        gaussian_entropy(log_std), torch.full((2, 3), -2.0, dtype=torch.float64), atol=1e-5, rtol=0
    )
    expected = 0.5 + (-2.0 - 4 * 0.5 - 2 * math.log(2 * math.pi * math.e)) * z.softmax(-1)
    torch.testing.assert_close(log_std, expected, atol=1e-5, rtol=0)
