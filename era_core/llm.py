"""Response-level ERA for LLM policy gradients (spec section 3): per-response logit factors."""

from __future__ import annotations

import math

import torch

OUTSIDE_TOPK_LOGPROB = -1e4
"""Log-prob given to a sampled token outside the top-k logits (spec 3.6; the authors' value)."""


def _check_top_fraction(top_fraction: float) -> None:
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")


def top_entropy_mean(
    token_entropy: torch.Tensor, response_mask: torch.Tensor, top_fraction: float = 0.2
) -> torch.Tensor:
    """Spec 3.2: ``H_resp``, the mean of the ``k = max(1, floor(top_fraction * len))`` largest token entropies.

    :param token_entropy: ``(B, T)`` per-token entropies of the current policy.
    :param response_mask: ``(B, T)`` mask (bool or 0/1) of the response tokens.
    :param top_fraction: share of the response's tokens (the "forking tokens") that are averaged.
    :return: ``(B,)`` float tensor; 0 for an empty response.
    """
    _check_top_fraction(top_fraction)
    if token_entropy.shape != response_mask.shape or token_entropy.dim() != 2:
        raise ValueError(
            f"token_entropy and response_mask must both be (B, T), got {tuple(token_entropy.shape)} "
            f"and {tuple(response_mask.shape)}"
        )
    mask = response_mask.bool()
    lengths = mask.sum(dim=-1)
    # float64 so that k equals Python's floor(top_fraction * len) exactly.
    k = torch.floor(lengths.double() * top_fraction).clamp_min(1).to(lengths.dtype)
    entropy = token_entropy.float().masked_fill(~mask, -math.inf)
    ranked = entropy.sort(dim=-1, descending=True).values
    chosen = torch.arange(ranked.shape[-1], device=ranked.device) < k.unsqueeze(-1)
    top_sum = torch.where(chosen & ranked.isfinite(), ranked, torch.zeros_like(ranked)).sum(dim=-1)
    return torch.where(lengths > 0, top_sum / k, torch.zeros_like(top_sum))


def response_logit_factors(
    token_entropy: torch.Tensor,
    response_mask: torch.Tensor,
    advantages: torch.Tensor,
    lb: float,
    ub: float,
    k: float = 2.0,
    top_fraction: float = 0.2,
    adv_threshold: float = 0.0,
) -> torch.Tensor:
    """Spec 3.3: the per-response factor ``c_r`` that multiplies the logits in the loss's log-probs.

    A response is eligible when ``A_r > 0`` and ``A_r >= adv_threshold``: ``0`` is the paper's ``A_r > 0``,
    ``1`` the released code's ``A_r >= 1`` (it cast advantages to integers). ``c_r = k`` (sharpen) for an
    eligible response with ``H_resp < lb``; ``c_r = 1/k`` (flatten) for one with ``H_resp > ub``; otherwise 1
    (also for empty responses).

    :param token_entropy: ``(B, T)`` per-token entropies of the current policy (after temperature).
    :param response_mask: ``(B, T)`` mask (bool or 0/1) of the response tokens.
    :param advantages: ``(B,)`` advantages, or ``(B, T)`` per-token ones (the first response token is read).
    :param lb: sharpen eligible responses with ``H_resp < lb``.
    :param ub: flatten eligible responses with ``H_resp > ub``.
    :param k: logit factor (``> 1``).
    :param top_fraction: share of a response's highest-entropy tokens averaged into ``H_resp``.
    :param adv_threshold: eligible when ``A_r > 0`` and ``A_r >= adv_threshold`` (``>= 0``).
    :return: ``(B,)`` float32 factors.
    """
    h_resp = top_entropy_mean(token_entropy, response_mask, top_fraction)
    non_empty = response_mask.bool().any(dim=-1)
    return logit_factors_from_response_entropy(h_resp, non_empty, advantages, lb, ub, k, adv_threshold)


def logit_factors_from_response_entropy(
    h_resp: torch.Tensor,
    non_empty: torch.Tensor,
    advantages: torch.Tensor,
    lb: float,
    ub: float,
    k: float = 2.0,
    adv_threshold: float = 0.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Spec 3.3 from an already computed ``H_resp`` (see :func:`response_logit_factors`).

    :param h_resp: ``(B,)`` response entropies from :func:`top_entropy_mean`.
    :param non_empty: ``(B,)`` bool, responses with at least one token (the others get factor 1).
    :param advantages: ``(B,)`` advantages, or ``(B, T)`` per-token ones (the first response token is read).
    :param lb: sharpen eligible responses with ``H_resp < lb``.
    :param ub: flatten eligible responses with ``H_resp > ub``.
    :param k: logit factor (``> 1``).
    :param adv_threshold: eligible when ``A_r > 0`` and ``A_r >= adv_threshold``.
    :param vocab_size: when given, ``h_resp`` is first clamped to ``[0, log(vocab_size)]``, the range of an
        entropy over that many tokens, so that a rounding error cannot give a factor that
        :func:`attainable_logit_factors` ruled out.
    :return: ``(B,)`` float32 factors.
    """
    check_response_era_args(lb, ub, k)
    if vocab_size is not None:
        h_resp = h_resp.clamp(0.0, _max_entropy(vocab_size).item())
    eligible = rescalable_responses(advantages, non_empty, adv_threshold)
    sharpen, flatten = response_factor_values(k)
    ones = torch.ones_like(h_resp)
    factors = torch.where(eligible & (h_resp < lb), ones * sharpen, ones)
    return torch.where(eligible & (h_resp > ub), ones * flatten, factors)


def attainable_logit_factors(lb: float, ub: float, k: float, vocab_size: int) -> tuple[float, ...]:
    """Spec 3.3: the factors other than 1 that some response can get, whatever its entropy and advantage.

    A response's entropy lies in ``[0, log(vocab_size)]``: no response is sharpened when ``lb`` is 0, none is
    flattened when ``ub >= log(vocab_size)``. The comparisons are those of
    :func:`logit_factors_from_response_entropy` with ``vocab_size`` (float32, entropies clamped to that range),
    so a factor left out here is never given there.

    :param lb: the entropy lower bound (responses below it are sharpened).
    :param ub: the entropy upper bound (responses above it are flattened).
    :param k: logit factor (``> 1``).
    :param vocab_size: number of tokens the entropies are computed over (the LM head's outputs).
    :return: a subset of :func:`response_factor_values`, in its order (sharpen, then flatten).
    """
    check_response_era_args(lb, ub, k)
    sharpen, flatten = response_factor_values(k)
    possible = ((sharpen, bool(torch.tensor(0.0) < lb)), (flatten, bool(_max_entropy(vocab_size) > ub)))
    return tuple(factor for factor, reachable in possible if reachable)


def _max_entropy(vocab_size: int) -> torch.Tensor:
    """``log(vocab_size)`` in float32, the largest entropy over ``vocab_size`` tokens."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
    return torch.tensor(math.log(vocab_size), dtype=torch.float32)


def rescalable_responses(
    advantages: torch.Tensor, non_empty: torch.Tensor, adv_threshold: float = 0.0
) -> torch.Tensor:
    """Spec 3.3: ``(B,)`` bool, the responses whose factor may differ from 1, whatever their entropy.

    :param advantages: ``(B,)`` advantages, or ``(B, T)`` per-token ones (the first response token is read).
    :param non_empty: ``(B,)`` bool, responses with at least one token.
    :param adv_threshold: eligible when ``A_r > 0`` and ``A_r >= adv_threshold``.
    """
    check_adv_threshold(adv_threshold)
    if advantages.dim() == 2:
        advantages = advantages[:, 0]
    if advantages.shape != non_empty.shape:
        raise ValueError(
            f"advantages must be (B,) with B={non_empty.shape[0]}, got {tuple(advantages.shape)}"
        )
    # Positive advantages only; adv_threshold=1.0 is the released code's integer-cast rule A >= 1.
    return (advantages > 0) & (advantages >= adv_threshold) & non_empty


def response_factor_values(k: float) -> tuple[float, float]:
    """The sharpening and flattening factors ``(k, 1/k)`` exactly as the float32 factors hold them.

    Adapters that compare factors with these values, or scale logits by them, use this one definition.

    :param k: logit factor (``> 1``).
    :return: ``(k, 1/k)`` rounded to float32.
    """
    sharpen = torch.tensor(k, dtype=torch.float32)
    return sharpen.item(), (1.0 / sharpen).item()


def check_response_era_args(lb: float, ub: float, k: float, top_fraction: float = 0.2) -> None:
    """Raise ``ValueError`` unless ``0 <= lb < ub``, ``k > 1`` and ``0 < top_fraction <= 1``.

    :param lb: lower response-entropy bound (sharpen below it).
    :param ub: upper response-entropy bound (flatten above it).
    :param k: logit factor.
    :param top_fraction: share of a response's highest-entropy tokens averaged into ``H_resp``.
    """
    if not (math.isfinite(lb) and math.isfinite(ub) and 0.0 <= lb < ub):
        raise ValueError(f"need 0 <= lb < ub (finite), got lb={lb}, ub={ub}")
    if not (math.isfinite(k) and k > 1.0):
        raise ValueError(f"k must be a finite number > 1, got {k}")
    _check_top_fraction(top_fraction)


def check_adv_threshold(adv_threshold: float, name: str = "adv_threshold") -> None:
    """Raise ``ValueError`` unless ``adv_threshold`` is a finite number ``>= 0`` (see :func:`response_logit_factors`).

    :param adv_threshold: the advantage threshold to check.
    :param name: the argument's name in the error message.
    """
    if not (math.isfinite(adv_threshold) and adv_threshold >= 0.0):
        raise ValueError(
            f"{name} must be a finite number >= 0 (0: the paper's A > 0; 1: the released code's A >= 1), "
            f"got {adv_threshold}"
        )


def scaled_advantages(advantages: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Spec 3.5: ``A / k`` for sharpened and ``A * k`` for flattened responses, i.e. ``A / c_r``.

    :param advantages: ``(B,)`` or ``(B, T)`` advantages.
    :param factors: ``(B,)`` factors ``c_r`` from :func:`response_logit_factors`.
    :return: the advantages divided by their response's factor, in the advantages' dtype.
    """
    view = factors.view(factors.shape + (1,) * (advantages.dim() - factors.dim()))
    return advantages / view.to(advantages.dtype)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits)`` over the last dimension, computed in float32.

    :param logits: ``(..., V)`` logits.
    :return: ``(...)`` float32 entropies.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def scaled_token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, factors: torch.Tensor, topk: int | None = None
) -> torch.Tensor:
    """Spec 3.4/3.6: ``log_softmax(c_r * logits)`` at the sampled tokens, optionally over the top-k logits only.

    With ``topk`` the distribution is renormalised over the ``topk`` largest logits and a token outside
    them gets log-prob ``-1e4``. Reference form (it holds a scaled copy of the logits); adapters chunk it.

    :param logits: ``(B, T, V)`` logits (already divided by the temperature).
    :param tokens: ``(B, T)`` sampled token ids.
    :param factors: ``(B,)`` factors ``c_r`` from :func:`response_logit_factors`.
    :param topk: renormalise over the ``topk`` largest scaled logits; ``None`` (default): the whole vocabulary.
    :return: ``(B, T)`` log-probs in float32 (float64 for float64 logits).
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    scaled = logits.to(dtype) * factors.to(dtype).view(-1, 1, 1)
    picked = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if topk is None:
        return picked - torch.logsumexp(scaled, dim=-1)
    top, top_indices = scaled.topk(topk, dim=-1)
    return topk_token_logprob(picked, top, (top_indices == tokens.unsqueeze(-1)).any(dim=-1))


def topk_token_logprob(
    picked: torch.Tensor, top: torch.Tensor, picked_among_top: torch.Tensor | None = None
) -> torch.Tensor:
    """Spec 3.6: the sampled token's log-prob renormalised over the ``k`` largest (scaled) logits.

    A token is inside when it is one of the ``k`` selected indices or when its logit ties with or exceeds the
    ``k``-th largest (so ties count as inside whichever index a top-k search kept); outside, it gets
    :data:`OUTSIDE_TOPK_LOGPROB`.

    :param picked: ``(...)`` scaled logit of the sampled token.
    :param top: ``(..., k)`` the ``k`` largest scaled logits.
    :param picked_among_top: ``(...)`` bool, whether the sampled token's index is among the selected ones.
    :return: ``(...)`` log-probs.
    """
    inside = picked >= top.min(dim=-1).values
    if picked_among_top is not None:
        inside = inside | picked_among_top
    return torch.where(
        inside, picked - torch.logsumexp(top, dim=-1), torch.full_like(picked, OUTSIDE_TOPK_LOGPROB)
    )
