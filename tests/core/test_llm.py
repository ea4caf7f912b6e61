"""Spec section 3: response-level factors, H_resp and the transformed log-probs against plain references."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era_core import (
    attainable_logit_factors,
    categorical_entropy,
    logit_factors_from_response_entropy,
    response_logit_factors,
    scaled_advantages,
    scaled_token_logprobs,
    top_entropy_mean,
)


def _reference_factors(entropy, mask, advantages, lb, ub, k, top_fraction, threshold):
    """Spec 3 written as a plain loop over responses."""
    factors = []
    for row in range(entropy.shape[0]):
        values = sorted((entropy[row][mask[row]]).tolist(), reverse=True)
        if not values:
            factors.append(1.0)
            continue
        top = max(1, math.floor(top_fraction * len(values)))
        h_resp = sum(values[:top]) / top
        eligible = advantages[row] > 0 and advantages[row] >= threshold
        if eligible and h_resp < lb:
            factors.append(k)
        elif eligible and h_resp > ub:
            factors.append(1.0 / k)
        else:
            factors.append(1.0)
    return torch.tensor(factors)


@settings(max_examples=80, deadline=None)
@given(
    batch=st.integers(1, 9),
    length=st.integers(1, 40),
    lb=st.floats(0.0, 1.5),
    width=st.floats(0.01, 3.0),
    k=st.floats(1.01, 5.0),
    top_fraction=st.floats(0.01, 1.0),
    threshold=st.sampled_from([0.0, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_response_logit_factors_match_reference(batch, length, lb, width, k, top_fraction, threshold, seed):
    gen = torch.Generator().manual_seed(seed)
    entropy = torch.rand(batch, length, generator=gen) * 4.0
    lengths = torch.randint(0, length + 1, (batch,), generator=gen)
    mask = torch.arange(length) < lengths[:, None]
    advantages = torch.randn(batch, generator=gen) * 2.0
    ub = lb + width
    got = response_logit_factors(entropy, mask, advantages, lb, ub, k, top_fraction, threshold)
    expected = _reference_factors(entropy, mask, advantages, lb, ub, k, top_fraction, threshold)
    torch.testing.assert_close(got, expected.float())


def test_top_entropy_mean_uses_the_largest_fifth() -> None:
    entropy = torch.tensor([[0.1, 5.0, 0.2, 4.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    mask = torch.tensor([[1] * 10 + [0]])  # the 9.0 is padding and must be ignored
    assert top_entropy_mean(entropy, mask).item() == pytest.approx(4.5)  # k = floor(0.2 * 10) = 2
    short = torch.tensor([[0.5, 2.0, 0.1]])
    assert top_entropy_mean(short, torch.ones_like(short)).item() == pytest.approx(2.0)  # k = max(1, 0)


def test_empty_responses_get_factor_one() -> None:
    entropy = torch.zeros(2, 4)
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 0]])
    factors = response_logit_factors(entropy, mask, torch.tensor([1.0, 1.0]), lb=0.45, ub=3.0)
    torch.testing.assert_close(factors, torch.tensor([1.0, 2.0]))


def test_advantage_threshold_reproduces_released_code_rule() -> None:
    entropy, mask = torch.zeros(5, 5), torch.ones(5, 5)
    advantages = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.5])
    paper = response_logit_factors(entropy, mask, advantages, lb=0.45, ub=3.0)
    released = response_logit_factors(entropy, mask, advantages, lb=0.45, ub=3.0, adv_threshold=1.0)
    torch.testing.assert_close(paper, torch.tensor([1.0, 2.0, 2.0, 2.0, 2.0]))
    # The released code compares integer-cast advantages, int(A) > 0, i.e. A >= 1.
    integer_rule = (advantages.to(torch.int64) > 0).float() + 1.0
    torch.testing.assert_close(released, integer_rule)
    torch.testing.assert_close(released, torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0]))


def test_per_token_advantages_are_accepted() -> None:
    entropy, mask = torch.full((2, 3), 5.0), torch.ones(2, 3)
    factors = response_logit_factors(entropy, mask, torch.tensor([[1.0] * 3, [-1.0] * 3]), lb=0.45, ub=3.0)
    torch.testing.assert_close(factors, torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lb=3.0, ub=0.45), "0 <= lb < ub"),
        (dict(lb=-0.1, ub=1.0), "0 <= lb < ub"),
        (dict(lb=0.1, ub=1.0, k=1.0), "k must be"),
        (dict(lb=0.1, ub=1.0, top_fraction=0.0), "top_fraction"),
        (dict(lb=0.1, ub=1.0, adv_threshold=-1.0), "adv_threshold must be a finite number >= 0"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        response_logit_factors(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1), **kwargs)


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        top_entropy_mean(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="advantages must be"):
        response_logit_factors(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(3), lb=0.1, ub=1.0)


def test_scaled_token_logprobs_match_log_softmax_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=gen, dtype=torch.float64) * 3
    tokens = torch.randint(0, 11, (3, 5), generator=gen)
    factors = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    expected = torch.stack(
        [
            torch.log_softmax(c * logits[i], -1).gather(-1, tokens[i, :, None]).squeeze(-1)
            for i, c in enumerate(factors)
        ]
    )
    torch.testing.assert_close(scaled_token_logprobs(logits, tokens, factors), expected)


def test_unit_factors_leave_log_probs_unchanged() -> None:
    logits = torch.randn(2, 4, 7)
    tokens = torch.randint(0, 7, (2, 4))
    plain = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    torch.testing.assert_close(scaled_token_logprobs(logits, tokens, torch.ones(2)), plain)


def test_topk_logprobs_renormalise_and_penalise_outside_tokens() -> None:
    logits = torch.tensor([[[4.0, 3.0, 2.0, 1.0, 0.0]]])
    inside = scaled_token_logprobs(logits, torch.tensor([[1]]), torch.ones(1), topk=2)
    assert inside.item() == pytest.approx(3.0 - math.log(math.exp(4.0) + math.exp(3.0)), abs=1e-6)
    outside = scaled_token_logprobs(logits, torch.tensor([[3]]), torch.ones(1), topk=2)
    assert outside.item() == -1e4


def test_scaled_advantages_divide_by_the_factor() -> None:
    advantages = torch.tensor([1.0, 2.0, -1.0])
    factors = torch.tensor([2.0, 0.5, 1.0])
    torch.testing.assert_close(scaled_advantages(advantages, factors), torch.tensor([0.5, 4.0, -1.0]))
    per_token = scaled_advantages(advantages[:, None].expand(3, 4), factors)
    torch.testing.assert_close(per_token[:, 0], torch.tensor([0.5, 4.0, -1.0]))


def test_categorical_entropy_matches_torch_distribution() -> None:
    logits = torch.randn(4, 9) * 5
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(categorical_entropy(logits), expected)


def test_factors_from_precomputed_response_entropy_match_the_one_call_form() -> None:
    gen = torch.Generator().manual_seed(3)
    entropy = torch.rand(6, 12, generator=gen) * 4
    mask = torch.arange(12) < torch.tensor([0, 3, 12, 7, 1, 12])[:, None]
    advantages = torch.randn(6, generator=gen)
    h_resp = top_entropy_mean(entropy, mask)
    torch.testing.assert_close(
        logit_factors_from_response_entropy(h_resp, mask.any(-1), advantages, lb=1.0, ub=2.5),
        response_logit_factors(entropy, mask, advantages, lb=1.0, ub=2.5),
    )


def test_attainable_factors_follow_the_entropy_range() -> None:
    log_v = math.log(300)
    assert attainable_logit_factors(0.0, 100.0, 2.0, 300) == ()
    assert attainable_logit_factors(0.0, log_v - 0.01, 2.0, 300) == (0.5,)
    # At exactly log V (as the float32 entropies hold it) no entropy is above the bound.
    assert attainable_logit_factors(0.0, torch.tensor(log_v).item(), 2.0, 300) == ()
    assert attainable_logit_factors(0.1, log_v + 0.01, 3.0, 300) == (3.0,)
    assert attainable_logit_factors(0.1, 1.0, 3.0, 300) == (3.0, torch.tensor(1 / 3.0).item())
    assert attainable_logit_factors(0.1, 1.0, 2.0, 300) == (2.0, 0.5)
    # One token: every entropy is 0, nothing is ever flattened.
    assert attainable_logit_factors(0.1, 0.2, 2.0, 1) == (2.0,)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="vocab_size must be an integer >= 1"):
            attainable_logit_factors(0.1, 1.0, 2.0, bad)
    with pytest.raises(ValueError, match="need 0 <= lb < ub"):
        attainable_logit_factors(1.0, 0.5, 2.0, 300)


@settings(deadline=None, max_examples=200)
@given(
    vocab_size=st.integers(1, 200_000),
    lb=st.sampled_from([0.0, 1e-50, 1e-8, 0.5]),
    ub_offset=st.sampled_from([-1e-3, -1e-7, 0.0, 1e-7, 1e-3, 50.0]),
    offsets=st.lists(st.sampled_from([-1e-6, -1e-7, 0.0, 1e-7, 1e-6]), min_size=4, max_size=4),
)
def test_factors_of_clamped_entropies_are_always_attainable(vocab_size, lb, ub_offset, offsets) -> None:
    """Entropies at, or a rounding error beyond, the ends of [0, log V] never get a factor ruled out."""
    log_v = math.log(vocab_size)
    ub = max(log_v + ub_offset, lb + 1e-6)
    h_resp = torch.tensor(
        [offsets[0], offsets[1], log_v + offsets[2], log_v + offsets[3]], dtype=torch.float32
    )
    factors = logit_factors_from_response_entropy(
        h_resp, torch.ones(4, dtype=torch.bool), torch.ones(4), lb, ub, vocab_size=vocab_size
    )
    allowed = {1.0, *attainable_logit_factors(lb, ub, 2.0, vocab_size)}
    assert set(factors.tolist()) <= allowed


def test_entropies_a_rounding_error_outside_their_range_are_clamped() -> None:
    h_resp = torch.tensor([-1e-7, math.log(300) + 1e-5])
    args = (h_resp, torch.ones(2, dtype=torch.bool), torch.ones(2), 0.0, math.log(300))
    assert logit_factors_from_response_entropy(*args).tolist() == [2.0, 0.5]
    assert logit_factors_from_response_entropy(*args, vocab_size=300).tolist() == [1.0, 1.0]
