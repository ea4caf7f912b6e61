"""Boundaries the fast tests had left open (found by mutation testing, README "Mutation testing").

Each test pins one edge: a bound that is inclusive or exclusive, a documented default, the dtype a result keeps,
a gradient that must reach every input that asks for it, a sample that rounding would push off the support.
"""

import pytest
import torch

from era_core import (
    BatchGaussianERA,
    TruncatedNormal,
    logit_factors_from_response_entropy,
    response_logit_factors,
    top_entropy_mean,
)
from era_core.gaussian import LOG_2PI_E
from era_core.llm import (
    OUTSIDE_TOPK_LOGPROB,
    check_response_era_args,
    rescalable_responses,
    response_factor_values,
    topk_token_logprob,
)
from era_core.truncated_normal import _ReparameterizedSample

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


@pytest.mark.parametrize("case", [ROUNDS_BELOW_LOW, ROUNDS_ABOVE_HIGH], ids=["low", "high"])
def test_quantiles_that_round_past_a_bound_are_clamped_onto_it(case) -> None:
    loc, scale, u = (torch.tensor([value], dtype=torch.float32) for value in case)
    dist = TruncatedNormal(loc, scale, -1.0, 1.0)
    for x in (dist.icdf(u), _ReparameterizedSample.apply(loc, scale, u, -1.0, 1.0)):
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


def test_a_sample_clamped_onto_a_bound_gets_no_gradient() -> None:
    loc, scale, u = (torch.tensor([value], dtype=torch.float32) for value in ROUNDS_BELOW_LOW)
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    _ReparameterizedSample.apply(loc, scale, u, -1.0, 1.0).sum().backward()
    assert loc.grad.item() == 0.0
    assert scale.grad.item() == 0.0


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
def test_rsample_keeps_its_uniform_draw_inside_eps_and_one_minus_eps(drawn, monkeypatch) -> None:
    # torch.rand draws from [0, 1): its extreme values are moved to eps and 1 - eps, as the docstring says.
    dist = TruncatedNormal(torch.tensor([0.3]), torch.tensor([0.8]))
    monkeypatch.setattr(torch, "rand", lambda shape, **kwargs: torch.full(shape, drawn, **kwargs))
    sample = dist.rsample()
    monkeypatch.undo()
    expected = dist.icdf(torch.tensor([min(max(drawn, F32_EPS), 1.0 - F32_EPS)]))
    torch.testing.assert_close(sample, expected, rtol=0.0, atol=1e-6)
    assert not torch.equal(sample, dist.icdf(torch.tensor([drawn])))
