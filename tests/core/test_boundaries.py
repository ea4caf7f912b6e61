"""Boundaries the fast tests had left open (found by mutation testing, README "Mutation testing").

Each test pins one edge: a bound that is inclusive or exclusive, a documented default, the dtype a result keeps,
a gradient that must reach every input that asks for it, a sample that rounding would push off the support.
"""

import math
import re

import pytest
import torch

import era_core.softmax as softmax_module
from era_core import (
    BatchGaussianERA,
    GaussianERA,
    SoftmaxERA,
    TruncatedNormal,
    attainable_logit_factors,
    check_softmax_era_args,
    logit_factors_from_response_entropy,
    max_feasible_target,
    max_probability,
    ndtri_exp,
    response_logit_factors,
    smallest_entropy,
    softmax_era_feasible_range,
    softmax_era_logits,
    top_entropy_mean,
    truncated_normal,
)
from era_core.gaussian import LOG_2PI_E, check_gaussian_era_args
from era_core.llm import (
    OUTSIDE_TOPK_LOGPROB,
    check_response_era_args,
    rescalable_responses,
    response_factor_values,
    topk_token_logprob,
)
from era_core.softmax import _newton_steps
from era_core.truncated_normal import _log1mexp, _ReparameterizedSample

# (loc, scale) pairs far outside [-1, 1] whose float32 quantile ``loc + scale * z`` rounds past a bound
# (found by a search over 200k pairs); ``u`` at the edge of rsample's uniform range.
F32_EPS = torch.finfo(torch.float32).eps
ROUNDS_BELOW_LOW = (-2.469135284423828, 0.009592873975634575, F32_EPS)
ROUNDS_ABOVE_HIGH = (2.5920023918151855, 0.028846535831689835, 1.0 - F32_EPS)


# --- era_core.llm -------------------------------------------------------------------------------------


def test_top_fraction_one_is_allowed_and_above_one_is_refused() -> None:
    entropy, mask = torch.rand(2, 5), torch.ones(2, 5, dtype=torch.bool)
    torch.testing.assert_close(top_entropy_mean(entropy, mask, top_fraction=1.0), entropy.mean(-1))
    with pytest.raises(ValueError, match="top_fraction must be in"):
        top_entropy_mean(entropy, mask, top_fraction=1.5)


def test_equal_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="need 0 <= lb < ub"):
        check_response_era_args(0.5, 0.5, 2.0)


def test_documented_defaults_k_two_and_any_positive_advantage() -> None:
    # Defaults: k = 2 and the paper's rule A > 0 (a small positive advantage is eligible).
    h_resp = torch.tensor([0.1, 5.0])
    non_empty = torch.ones(2, dtype=torch.bool)
    factors = logit_factors_from_response_entropy(h_resp, non_empty, torch.tensor([0.5, 0.5]), lb=1.0, ub=2.0)
    torch.testing.assert_close(factors, torch.tensor([2.0, 0.5]))
    assert rescalable_responses(torch.tensor([0.5, -0.5]), non_empty).tolist() == [True, False]


def test_response_entropy_exactly_at_a_bound_keeps_factor_one() -> None:
    # Spec 3.3: sharpen only below lb, flatten only above ub (strict inequalities).
    h_resp = torch.tensor([1.0, 2.0])
    factors = logit_factors_from_response_entropy(
        h_resp, torch.ones(2, dtype=torch.bool), torch.ones(2), lb=1.0, ub=2.0
    )
    torch.testing.assert_close(factors, torch.ones(2))


def test_per_token_advantages_are_read_at_the_first_token() -> None:
    advantages = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    eligible = rescalable_responses(advantages, torch.ones(2, dtype=torch.bool))
    assert eligible.tolist() == [True, False]


def test_factor_values_are_float32_whatever_the_default_dtype() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        sharpen, flatten = response_factor_values(3.0)
        factors = response_logit_factors(
            torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1), lb=1.0, ub=2.0, k=3.0
        )
    finally:
        torch.set_default_dtype(previous)
    assert sharpen == 3.0
    assert flatten == torch.tensor(1.0 / 3.0, dtype=torch.float32).item() != 1.0 / 3.0
    assert factors.item() == sharpen


def test_topk_log_prob_counts_a_tie_with_the_kth_logit_as_inside() -> None:
    top = torch.tensor([3.0, 1.0])
    expected = 1.0 - torch.logsumexp(top, -1)
    # Without the selected indices: a logit equal to the k-th largest is inside.
    torch.testing.assert_close(topk_token_logprob(torch.tensor(1.0), top), expected)
    # A tied token that the top-k search did not select stays inside too.
    torch.testing.assert_close(topk_token_logprob(torch.tensor(1.0), top, torch.tensor(False)), expected)
    # Below the k-th largest and not selected: outside.
    assert topk_token_logprob(torch.tensor(0.5), top, torch.tensor(False)).item() == OUTSIDE_TOPK_LOGPROB


# --- era_core.truncated_normal ------------------------------------------------------------------------


# Number bounds take the one-pass formula, tensor bounds (as TruncatedNormal passes them) the quantile of icdf.
BOUNDS = {"numbers": (-1.0, 1.0), "tensors": (torch.tensor([-1.0]), torch.tensor([1.0]))}


@pytest.mark.parametrize("bounds", sorted(BOUNDS))
@pytest.mark.parametrize("case", [ROUNDS_BELOW_LOW, ROUNDS_ABOVE_HIGH], ids=["low", "high"])
def test_quantiles_that_round_past_a_bound_are_clamped_onto_it(case, bounds: str) -> None:
    loc, scale, u = (torch.tensor([value], dtype=torch.float32) for value in case)
    dist = TruncatedNormal(loc, scale, -1.0, 1.0)
    for x in (dist.icdf(u), _ReparameterizedSample.apply(loc, scale, u, *BOUNDS[bounds])):
        assert -1.0 <= x.item() <= 1.0


@pytest.mark.parametrize("wrt", ["loc", "scale"])
def test_one_parameter_alone_gets_the_closed_form_gradient(wrt) -> None:
    # Only one of loc and scale asks for a gradient (the other is fixed): it must still get its derivative.
    u = torch.tensor([0.3, 0.7], dtype=torch.float64)
    params = {
        "loc": torch.tensor([0.2, -0.4], dtype=torch.float64),
        "scale": torch.tensor([0.5, 2.0], dtype=torch.float64),
    }
    params[wrt].requires_grad_(True)
    _ReparameterizedSample.apply(params["loc"], params["scale"], u, -1.0, 1.0).sum().backward()

    def icdf(value: torch.Tensor) -> torch.Tensor:
        return TruncatedNormal(**{**params, wrt: value}, low=-1.0, high=1.0).icdf(u)

    expected = torch.autograd.functional.jacobian(icdf, params[wrt].detach()).diagonal()
    assert params[wrt].grad is not None
    torch.testing.assert_close(params[wrt].grad, expected)


@pytest.mark.parametrize("backend", ["torch", "scipy", "tensor-bounds"])
def test_a_sample_clamped_onto_a_bound_gets_no_gradient(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "torch":
        monkeypatch.setattr(truncated_normal, "_scipy_ops", lambda: None)
    loc, scale, u = (torch.tensor([value], dtype=torch.float32) for value in ROUNDS_BELOW_LOW)
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    x = _ReparameterizedSample.apply(
        loc, scale, u, *BOUNDS["tensors" if backend == "tensor-bounds" else "numbers"]
    )
    x.sum().backward()
    assert x.item() == -1.0
    if backend != "scipy":  # float32 rounds the quantile past the bound: clamped, it does not move
        assert loc.grad.item() == 0.0
        assert scale.grad.item() == 0.0
    else:  # float64 keeps it a hair inside: its own (vanishing) derivatives, rounded to -1.0 in float32
        assert 0.0 < abs(loc.grad.item()) < 1e-8
        assert abs(scale.grad.item()) < 1e-6


def test_icdf_takes_a_python_float_in_the_distribution_dtype() -> None:
    dist = TruncatedNormal(torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.7], dtype=torch.float64))
    assert torch.equal(dist.icdf(0.1), dist.icdf(torch.tensor([0.1], dtype=torch.float64)))


def test_icdf_returns_the_parameters_half_precision_dtype() -> None:
    dist = TruncatedNormal(torch.zeros(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16))
    assert dist.icdf(torch.full((3,), 0.5)).dtype == torch.bfloat16


def test_log_prob_rounds_the_value_to_the_distribution_dtype_first() -> None:
    # A float64 value a hair above the bound is the bound itself in float32: inside, finite log-prob (with
    # validation off, as SB3 runs; validation refuses the value before log_prob sees it).
    dist = TruncatedNormal(torch.zeros(1), torch.ones(1), -1.0, 1.0, validate_args=False)
    value = torch.tensor([1.0 + 1e-12], dtype=torch.float64)
    assert torch.isfinite(dist.log_prob(value)).all()


# --- era_core.gaussian ----------------------------------------------------------------------------------


def test_batch_floor_module_in_float64_updates_its_running_shift() -> None:
    era = BatchGaussianERA(2, momentum=1.0).double().train()
    era(torch.zeros(4, 2, dtype=torch.float64))
    # Default target -D/2 = -1 for D = 2; the shift moves the log-std sum (0 here) onto what the target needs.
    needed = -1.0 - 0.5 * 2 * LOG_2PI_E
    assert era.running_shift.dtype == torch.float64
    assert era.running_shift.item() == pytest.approx(needed / 2)


@pytest.mark.parametrize("drawn", [0.0, 1.0 - F32_EPS / 2], ids=["zero", "largest-below-one"])
@pytest.mark.parametrize(("loc", "scale"), [(0.3, 0.8), (-0.9, 0.05), (0.9, 0.05)])
def test_rsample_keeps_its_uniform_draw_inside_eps_and_one_minus_eps(drawn, loc, scale, monkeypatch) -> None:
    # torch.rand draws from [0, 1): its extreme values are moved to eps and 1 - eps, as the docstring says. Near a
    # far bound (the last two cases) the quantile moves by ~1e-2 between those levels.
    dist = TruncatedNormal(torch.tensor([loc]), torch.tensor([scale]))
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.full(shape, drawn, **kwargs))
    sample = dist.rsample()
    monkeypatch.undo()
    expected = dist.icdf(torch.tensor([min(max(drawn, F32_EPS), 1.0 - F32_EPS)]))
    torch.testing.assert_close(sample, expected, rtol=0.0, atol=1e-6)
    assert not torch.equal(sample, dist.icdf(torch.tensor([drawn])))


# --- Third run (2026-11-30): era_core.gaussian --------------------------------------------------------


def test_batch_variant_accepts_the_largest_feasible_target() -> None:
    # The batch variant has no compensation: its feasibility check must not assume one (delta defaults to 0).
    largest = max_feasible_target(3, 0.5)
    assert BatchGaussianERA(3, target_entropy=largest, log_std_max=0.5).target_entropy == largest
    check_gaussian_era_args(3, largest, -8.0, 0.5)


@pytest.mark.parametrize(("log_std_min", "log_std_max"), [(-math.inf, 0.0), (-8.0, math.inf)])
def test_infinite_log_std_bounds_are_refused(log_std_min: float, log_std_max: float) -> None:
    with pytest.raises(ValueError, match="need finite log_std_min < log_std_max"):
        GaussianERA(2, log_std_min=log_std_min, log_std_max=log_std_max)


def test_a_compensation_that_makes_the_target_infeasible_is_refused_and_named() -> None:
    largest = max_feasible_target(2, 0.0)
    GaussianERA(2, target_entropy=largest - 0.5, delta=0.5)  # exactly at the cap: allowed
    with pytest.raises(ValueError, match=r"target_entropy=\S+ with delta=0.6 is above the largest feasible"):
        GaussianERA(2, target_entropy=largest - 0.5, delta=0.6)
    too_high = largest + 0.1
    with pytest.raises(ValueError, match=rf"^target_entropy={re.escape(str(too_high))} is above the largest"):
        GaussianERA(2, target_entropy=too_high)


@pytest.mark.parametrize("learn_delta", [True, False])
def test_learn_delta_is_kept_and_shown(learn_delta: bool) -> None:
    era = GaussianERA(2, learn_delta=learn_delta)
    assert era.learn_delta is learn_delta
    assert f"learn_delta={learn_delta}" in repr(era)


def test_compensation_loss_keeps_the_compensation_dtype() -> None:
    # float64 log-probs (a float64 policy) must not turn the float32 delta's loss into float64.
    era = GaussianERA(2, learn_delta=True)
    loss = era.compensation_loss(torch.full((4,), 3.0, dtype=torch.float64))
    assert loss.dtype == era.delta.dtype == torch.float32


# --- Third run (2026-11-30): era_core.softmax ---------------------------------------------------------


@pytest.mark.parametrize("construction", ["paper", "mixture"])
def test_bfloat16_logits_are_computed_in_float32(construction: str) -> None:
    era = SoftmaxERA(10, 0.6, construction=construction)
    logits = (torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * 4).to(torch.bfloat16)
    assert torch.equal(era(logits), era(logits.float()).to(torch.bfloat16))


@pytest.mark.parametrize("construction", ["paper", "mixture", "calibrated"])
def test_functional_form_on_3d_logits_is_the_module_per_row(construction: str) -> None:
    # (B, T, C) logits: the class count and the softmax come from the last dimension, with the construction given.
    logits = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    era = SoftmaxERA(10, 0.6, construction=construction)
    expected = era(logits.reshape(6, 10)).reshape(2, 3, 10)
    torch.testing.assert_close(softmax_era_logits(logits, 0.6, construction=construction), expected)
    torch.testing.assert_close(era(logits), expected)


def test_calibrated_floor_that_cannot_be_resolved_is_refused(monkeypatch) -> None:
    # Too few bisection steps stand in for a floor float64 cannot resolve: the solver's check must refuse it.
    monkeypatch.setattr(softmax_module, "_BISECTION_STEPS", 3)
    with pytest.raises(ValueError, match=r"construction='calibrated' cannot resolve min_entropy=0\.6"):
        SoftmaxERA(10, 0.6, construction="calibrated")


def test_wrong_class_count_error_names_the_shape_it_got() -> None:
    with pytest.raises(
        ValueError, match=r"expected logits with 10 classes in the last dim, got shape .*\[2, 5\]"
    ):
        SoftmaxERA(10, 0.6)(torch.zeros(2, 5))


def test_newton_step_count_refuses_an_unknown_inverse() -> None:
    assert (_newton_steps("approx"), _newton_steps("newton")) == (0, softmax_module.NEWTON_STEPS)
    with pytest.raises(ValueError, match=r"inverse must be one of \('approx', 'newton'\), got 'exact'"):
        _newton_steps("exact")


@pytest.mark.parametrize("construction", ["paper", "mixture", "calibrated"])
def test_softmax_era_keeps_and_shows_its_arguments(construction: str) -> None:
    tau, inverse = (4.0, "approx") if construction == "mixture" else (6.0, "newton")
    era = SoftmaxERA(10, 0.75, tau=tau, inverse=inverse, construction=construction)
    assert (era.num_classes, era.min_entropy, era.tau, era.inverse, era.construction) == (
        10,
        0.75,
        tau,
        inverse,
        construction,
    )
    assert repr(era) == (
        f"SoftmaxERA(num_classes=10, min_entropy=0.75, tau={tau}, inverse={inverse!r}, "
        f"construction={construction!r})"
    )


def test_smallest_entropy_of_a_floor_below_float64_resolution_is_about_zero() -> None:
    # The one-hot output's top probability rounds to 1 (the rest to 0): its entropy evaluates to about 0,
    # without taking the logarithm of 0.
    assert smallest_entropy(10, 1e-16, construction="mixture") == pytest.approx(0.0, abs=1e-15)
    assert max_probability(10, 1e-16, construction="mixture") == 1.0


def test_public_argument_check_defaults_to_the_paper_construction() -> None:
    low, high = softmax_era_feasible_range(10)
    check_softmax_era_args(10, high)  # the paper's interval is closed at ln C's side: allowed
    with pytest.raises(ValueError, match=r"construction='paper' and tau=4.0: the feasible interval"):
        check_softmax_era_args(10, low)


def test_tau_exactly_e_is_refused() -> None:
    with pytest.raises(ValueError, match="tau must be a finite number above e"):
        SoftmaxERA(10, 0.6, tau=math.e)


def test_paper_floor_exactly_at_the_open_low_end_is_refused() -> None:
    # At the low end the smallest share is 0 (spec 2): excluded.
    low, _ = softmax_era_feasible_range(10)
    with pytest.raises(ValueError, match="is infeasible"):
        SoftmaxERA(10, low)


@pytest.mark.parametrize(
    ("construction", "names"),
    [
        ("paper", "construction='paper' and tau=6.0: "),
        ("calibrated", "construction='calibrated' and tau=6.0: "),
        ("mixture", "construction='mixture': "),
    ],
)
def test_infeasible_floor_error_names_tau_only_where_it_is_used(construction: str, names: str) -> None:
    tau = 4.0 if construction == "mixture" else 6.0
    with pytest.raises(ValueError, match=re.escape(f"num_classes=10, {names}the feasible interval")):
        SoftmaxERA(10, 5.0, tau=tau, construction=construction)


# --- Third run (2026-11-30): era_core.truncated_normal ------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_ndtri_exp_just_below_the_smallest_normal_level_is_exact(dtype: torch.dtype) -> None:
    # Below the smallest normal level the quantile comes from an asymptotic start refined by Newton steps; the
    # start alone is off by up to 9e-5 (float32) / 2e-6 (float64) relative, the refined value by under 2 ulps.
    from scipy import special

    tiny_log = math.log(torch.finfo(dtype).tiny) + 1.0
    log_p = torch.tensor([tiny_log - 0.5, tiny_log - 5.0, 2.0 * tiny_log, 10.0 * tiny_log], dtype=dtype)
    expected = torch.tensor([special.ndtri_exp(v) for v in log_p.double().tolist()], dtype=torch.float64)
    rtol = 2e-7 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(ndtri_exp(log_p).double(), expected, rtol=rtol, atol=0.0)


def _one_pass_sample(dist: TruncatedNormal, drawn: float, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``dist.sample_and_log_prob()`` with ``torch.rand`` drawing ``drawn`` everywhere."""
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.full(shape, drawn, **kwargs))
    try:
        return dist.sample_and_log_prob()
    finally:
        monkeypatch.undo()


# (loc, scale, u) whose float32 one-pass sample rounds past a bound before its clamp (found by a search).
ONE_PASS_ROUNDS_BELOW_LOW = (-3.036581516265869, 0.00013091742584947497, F32_EPS)
ONE_PASS_ROUNDS_ABOVE_HIGH = (2.313777446746826, 0.0002597356797195971, F32_EPS)


@pytest.mark.parametrize("case", [ONE_PASS_ROUNDS_BELOW_LOW, ONE_PASS_ROUNDS_ABOVE_HIGH], ids=["low", "high"])
def test_one_pass_samples_that_round_past_a_bound_are_clamped_onto_it(case, monkeypatch) -> None:
    loc, scale, u = case
    dist = TruncatedNormal(torch.tensor([loc]), torch.tensor([scale]), -1.0, 1.0)
    x, log_prob = _one_pass_sample(dist, u, monkeypatch)
    assert -1.0 <= x.item() <= 1.0 and math.isfinite(log_prob.item())


@pytest.mark.parametrize(
    ("loc", "scale", "drawn"),
    [(0.0, 0.3, 0.0), (0.5, 0.2, 1.0 - F32_EPS / 2)],
    ids=["zero", "largest-below-one"],
)
def test_one_pass_sampler_keeps_its_uniform_draw_inside_eps_and_one_minus_eps(
    loc: float, scale: float, drawn: float, monkeypatch
) -> None:
    dist = TruncatedNormal(torch.tensor([loc]), torch.tensor([scale]))
    x, _ = _one_pass_sample(dist, drawn, monkeypatch)
    reference = TruncatedNormal(
        torch.tensor([loc], dtype=torch.float64), torch.tensor([scale], dtype=torch.float64)
    )
    # loc at or above the middle: the one-pass sample is icdf(u) with u = drawn moved into [eps, 1 - eps].
    clamped = min(max(drawn, F32_EPS), 1.0 - F32_EPS)
    expected = reference.icdf(torch.tensor([clamped], dtype=torch.float64))
    torch.testing.assert_close(x.double(), expected, rtol=0.0, atol=2e-7)
    unclamped = reference.icdf(torch.tensor([drawn], dtype=torch.float64))
    assert abs(x.item() - unclamped.item()) > 5e-7


def test_one_pass_sample_near_the_top_keeps_the_upper_tail_exact(monkeypatch) -> None:
    # A level p = 1 - 2e-6 in float32: its quantile must come from 1 - p = -expm1(log p) (exact); taken from p
    # itself, which has lost most of those digits, the sample is off by 6e-6 (here it is within 3e-8).
    loc, scale = torch.tensor([0.0]), torch.tensor([0.29])
    x, _ = _one_pass_sample(TruncatedNormal(loc, scale), 1.0 - 2.0**-19, monkeypatch)
    reference = TruncatedNormal(loc.double(), scale.double())
    expected = reference.icdf(torch.tensor([1.0 - 2.0**-19], dtype=torch.float64))
    torch.testing.assert_close(x.double(), expected, rtol=0.0, atol=5e-7)


def test_one_pass_sample_and_log_prob_return_the_parameters_half_precision_dtype() -> None:
    dist = TruncatedNormal(torch.zeros(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16))
    x, log_prob = dist.sample_and_log_prob((2,))
    assert x.dtype == log_prob.dtype == torch.bfloat16
    assert x.shape == log_prob.shape == (2, 3)


def test_expand_expands_the_parameters() -> None:
    dist = TruncatedNormal(
        torch.tensor([0.2, -0.5]), torch.tensor([0.3, 0.1]), low=torch.tensor([-1.0, -0.5])
    )
    expanded = dist.expand((4, 2))
    for value in (
        expanded.loc,
        expanded.scale,
        expanded.low,
        expanded.high,
        expanded.mean,
        expanded.variance,
    ):
        assert value.shape == (4, 2)
    torch.testing.assert_close(expanded.mean, dist.mean.expand(4, 2))


def test_log1mexp_is_accurate_next_to_zero() -> None:
    # log(1 - exp(x)) for x -> 0-: 1 - exp(x) formed directly would keep only ~6 of float64's digits at 1e-10.
    x = torch.tensor([-1e-10, -1e-5, -0.5, -5.0], dtype=torch.float64)
    expected = torch.tensor([math.log(-math.expm1(v)) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(_log1mexp(x), expected, rtol=1e-14, atol=0.0)


def test_number_location_and_scale_make_a_scalar_distribution() -> None:
    dist = TruncatedNormal(0.2, 0.5)
    assert dist.batch_shape == () and dist.sample().shape == ()
    assert -1.0 < dist.mean.item() < 1.0


@pytest.mark.parametrize(
    ("loc", "scale"), [(torch.tensor(0.2), torch.ones(3)), (torch.zeros(3), torch.tensor(0.5))]
)
def test_location_and_scale_of_different_shapes_are_broadcast(loc: torch.Tensor, scale: torch.Tensor) -> None:
    dist = TruncatedNormal(loc, scale)
    assert dist.batch_shape == dist.loc.shape == dist.scale.shape == (3,)
    assert dist.sample((2,)).shape == (2, 3)


@pytest.mark.parametrize("high", [torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.4])], ids=["equal", "below"])
def test_tensor_bounds_with_low_not_below_high_are_refused(high: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="TruncatedNormal needs low < high everywhere"):
        TruncatedNormal(torch.zeros(2), torch.ones(2), low=torch.tensor([-1.0, 0.5]), high=high)


def test_quantile_of_level_one_has_a_finite_gradient() -> None:
    # A level whose log rounds to 0 for a narrow distribution at the centre: the upper bound, with a finite
    # gradient (the level is kept below 1 inside the quantile).
    loc = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.02], dtype=torch.float64, requires_grad=True)
    x = TruncatedNormal(loc, scale).icdf(torch.tensor([1.0], dtype=torch.float64))
    x.sum().backward()
    assert x.item() == 1.0
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()


# --- Third run (2026-11-30): era_core.llm -------------------------------------------------------------


def test_entropy_clamp_to_the_vocabulary_range_starts_at_zero() -> None:
    # With vocab_size given, H_resp is clamped to [0, log V]: a small entropy (0.5 < lb) is still sharpened,
    # a rounding error below 0 counts as 0, one above log V as log V.
    h_resp = torch.tensor([0.5, -1e-7, math.log(4) + 1e-6])
    factors = logit_factors_from_response_entropy(
        h_resp, torch.ones(3, dtype=torch.bool), torch.ones(3), lb=0.8, ub=1.2, k=2.0, vocab_size=4
    )
    torch.testing.assert_close(factors, torch.tensor([2.0, 2.0, 0.5]))


def test_largest_entropy_is_float32_whatever_the_default_dtype() -> None:
    # An upper bound a hair below log(3) is log(3) in float32, where the entropies live: no float32 entropy
    # exceeds it, so flattening is not attainable, whatever torch's default dtype.
    ub = math.log(3) - 1e-9
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        factors = attainable_logit_factors(0.5, ub, 2.0, 3)
    finally:
        torch.set_default_dtype(previous)
    assert factors == (2.0,)
    largest = torch.tensor([math.log(3)], dtype=torch.float32)
    given = logit_factors_from_response_entropy(
        largest, torch.ones(1, dtype=torch.bool), torch.ones(1), lb=0.5, ub=ub, k=2.0, vocab_size=3
    )
    assert given.item() == 1.0
