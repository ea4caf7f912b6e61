"""Chunked log-probabilities of the sampled tokens under ERA's per-response logit scaling (spec 3.4 and 3.6).

ERA reads every sampled token's log-prob from ``log_softmax(c_r * logits / T)``, with one factor ``c_r`` per
response. TRL 1.16 never builds the ``(B, T, V)`` logits: its fused LM head (`trl.trainer.add_fused_lm_head`)
projects the backbone's hidden states through the LM head in vocabulary tiles. ERA keeps that property:

- ``c_r * logits / T == logits / (T / c_r)``, so a response with ``c_r != 1`` is scored by TRL's own fused head
  at the temperature ``T / c_r``, on that response's hidden states only (the rows with ``c_r == 1`` keep TRL's
  log-probs unchanged). Softcapping, logit scaling, ``cast_lm_head_to_fp32``, FSDP2 and ZeRO-3 are handled by
  TRL's head, since it is TRL's code that runs.
- the top-k variant (spec 3.6) needs the ``k`` largest logits of each token, which TRL's kernel does not
  produce: :func:`topk_token_logprobs` finds them tile by tile without gradient, then recomputes only those
  ``k`` logits (and the sampled token's) with gradient, so no tile of the logits is kept for the backward.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from trl.trainer.utils import add_fused_lm_head, maybe_gather_lm_head_ctx

#: Log-prob given to a sampled token outside the top-k logits (spec 3.6; the authors' value).
OUTSIDE_TOPK_LOGPROB = -1e4
#: Config fields through which transformers models rescale or softcap their logits after the LM head.
LOGIT_TRANSFORM_FIELDS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)
_TOKEN_CHUNK_SIZE = 4096
_VOCAB_CHUNK_SIZE = 32768
# Tokens whose gathered `(k + 1, H)` LM-head rows are held at once (float32: 1024 * 21 * 896 * 4 B = 77 MB).
_GATHER_CHUNK_SIZE = 1024


@contextmanager
def capture_last_hidden_state(model: PreTrainedModel) -> Iterator[dict[str, torch.Tensor]]:
    """Record the ``last_hidden_state`` that ``model``'s backbone (``model.base_model``) returns while inside.

    TRL's fused LM head calls the backbone and keeps the hidden states to itself; ERA needs them to score the
    rescaled responses a second time without running the backbone again.

    :param model: the (TRL-patched) causal LM, not a PEFT wrapper.
    :return: a dict that holds ``"last_hidden_state"`` after the forward ran.
    """
    captured: dict[str, torch.Tensor] = {}

    def record(module: nn.Module, args: tuple, output: BaseModelOutput) -> None:
        captured["last_hidden_state"] = output.last_hidden_state

    handle = model.base_model.register_forward_hook(record)
    try:
        yield captured
    finally:
        handle.remove()


class _TemperedFusedLMHead:
    """TRL's fused LM head of ``model`` at another temperature, fed with hidden states instead of a backbone.

    `add_fused_lm_head` reads the backbone (``base_model``), the head (``get_output_embeddings()``) and the
    logit transforms (``config``) from the object it patches, so this object lends it the model's head and
    config and returns the given hidden states as the backbone output.
    """

    def __init__(self, model: PreTrainedModel, temperature: float, cast_lm_head_to_fp32: bool) -> None:
        self._model = model
        self._hidden_states: torch.Tensor | None = None
        config = model.config.get_text_config()
        if getattr(config, "output_router_logits", False):
            # The MoE auxiliary loss comes from TRL's own pass; this head sees no router logits.
            config = copy.copy(config)
            config.output_router_logits = False
        self.config = config
        add_fused_lm_head(self, temperature=temperature, cast_lm_head_to_fp32=cast_lm_head_to_fp32)

    def forward(self, *args, **kwargs):
        raise TypeError("a tempered fused LM head is only called with fused_lm_head=True")

    def get_output_embeddings(self) -> nn.Module:
        return self._model.get_output_embeddings()

    def base_model(self, *args, **kwargs) -> BaseModelOutput:
        return BaseModelOutput(last_hidden_state=self._hidden_states)

    def __call__(self, hidden_states: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Log-probs ``(N, L - 1)`` of ``labels[:, 1:]`` given ``hidden_states`` ``(N, L, H)`` (``-100``: unscored)."""
        self._hidden_states = hidden_states
        try:
            return self.forward(labels=labels, fused_lm_head=True).log_probs
        finally:
            self._hidden_states = None


class _GatheredLogits(torch.autograd.Function):
    """``logits[n, j] = hidden[n] . weight[index[n, j]] + bias[index[n, j]]`` for a few columns per token.

    The backward scatters into the weight's gradient without keeping the gathered ``(N, J, H)`` rows.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, index):
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        out = torch.empty(index.shape, device=hidden.device, dtype=dtype)
        # The few gathered logits are computed in float32 (like TRL's kernel accumulates), never autocast.
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], _GATHER_CHUNK_SIZE):
                rows = slice(start, start + _GATHER_CHUNK_SIZE)
                picked = weight[index[rows]].to(dtype)
                out[rows] = torch.einsum("nh,njh->nj", hidden[rows].to(dtype), picked)
            if bias is not None:
                out += bias[index].to(dtype)
        ctx.save_for_backward(hidden, weight, bias, index)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, index = ctx.saved_tensors
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        with maybe_gather_lm_head_ctx(weight, bias), torch.autocast(hidden.device.type, enabled=False):
            dtype = grad_out.dtype
            grad_hidden = (
                torch.zeros(hidden.shape, device=hidden.device, dtype=dtype) if needs_hidden else None
            )
            grad_weight = (
                torch.zeros(weight.shape, device=weight.device, dtype=dtype) if needs_weight else None
            )
            for start in range(0, hidden.shape[0], _GATHER_CHUNK_SIZE):
                rows = slice(start, start + _GATHER_CHUNK_SIZE)
                grad = grad_out[rows]
                if grad_hidden is not None:
                    grad_hidden[rows] = torch.einsum("nj,njh->nh", grad, weight[index[rows]].to(dtype))
                if grad_weight is not None:
                    contributions = grad.unsqueeze(-1) * hidden[rows].to(dtype).unsqueeze(1)
                    grad_weight.index_add_(
                        0, index[rows].reshape(-1), contributions.reshape(-1, hidden.shape[-1])
                    )
            grad_bias = None
            if needs_bias:
                grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=dtype)
                grad_bias.index_add_(0, index.reshape(-1), grad_out.reshape(-1))
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
        )


@torch.no_grad()
def _topk_indices(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int
) -> torch.Tensor:
    """Indices ``(N, k)`` of each token's ``k`` largest logits, found one vocabulary tile at a time."""
    compute_dtype = (
        torch.get_autocast_dtype(hidden.device.type)
        if torch.is_autocast_enabled(hidden.device.type)
        else hidden.dtype
    )
    indices = torch.empty((hidden.shape[0], k), device=hidden.device, dtype=torch.long)
    for token_start in range(0, hidden.shape[0], _TOKEN_CHUNK_SIZE):
        rows = slice(token_start, token_start + _TOKEN_CHUNK_SIZE)
        hidden_chunk = hidden[rows].to(compute_dtype)
        best_values = best_indices = None
        for start in range(0, weight.shape[0], _VOCAB_CHUNK_SIZE):
            tile = hidden_chunk @ weight[start : start + _VOCAB_CHUNK_SIZE].to(compute_dtype).t()
            if bias is not None:
                tile += bias[start : start + _VOCAB_CHUNK_SIZE].to(compute_dtype)
            values, tile_indices = tile.topk(min(k, tile.shape[-1]), dim=-1)
            tile_indices += start
            if best_values is not None:
                values = torch.cat([best_values, values], dim=-1)
                tile_indices = torch.cat([best_indices, tile_indices], dim=-1)
                values, order = values.topk(min(k, values.shape[-1]), dim=-1)
                tile_indices = tile_indices.gather(-1, order)
            best_values, best_indices = values, tile_indices
        indices[rows] = best_indices
    return indices


def topk_token_logprobs(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    tokens: torch.Tensor,
    scale: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Spec 3.6: log-prob of each token under ``softmax(scale * logits)`` restricted to the ``k`` largest logits.

    A token outside its ``k`` largest logits (ties count as inside) gets ``OUTSIDE_TOPK_LOGPROB``, without
    gradient. Only ``k + 1`` logits per token are recomputed with gradient.

    :param hidden: ``(N, H)`` hidden states of the scored positions.
    :param lm_head: the model's output embedding (a linear layer, possibly sharded by FSDP2 or ZeRO-3).
    :param tokens: ``(N,)`` sampled token ids.
    :param scale: ``(N,)`` positive multipliers of the logits (``c_r / T``).
    :param k: number of logits kept, at most the vocabulary size.
    :return: ``(N,)`` log-probs in float32 (float64 for float64 inputs).
    """
    weight, bias = lm_head.weight, lm_head.bias
    if isinstance(weight, DTensor):
        weight = weight.full_tensor()
        bias = None if bias is None else bias.full_tensor()
    with maybe_gather_lm_head_ctx(weight, bias):
        if not 1 <= k <= weight.shape[0]:
            raise ValueError(f"top-k needs 1 <= k <= vocabulary size {weight.shape[0]}, got k={k}")
        top_indices = _topk_indices(hidden, weight, bias, k)
        logits = _GatheredLogits.apply(
            hidden, weight, bias, torch.cat([top_indices, tokens[:, None]], dim=-1)
        )
    logits = logits * scale.to(logits.dtype).unsqueeze(-1)
    top, picked = logits[:, :k], logits[:, k]
    in_top = (top_indices == tokens[:, None]).any(dim=-1) | (picked >= top.min(dim=-1).values)
    outside = torch.full_like(picked, OUTSIDE_TOPK_LOGPROB)
    return torch.where(in_top, picked - torch.logsumexp(top, dim=-1), outside)


class ScaledLogProbHead:
    """Per-token log-probs of the sampled tokens under ``log_softmax(c_r * logits / T)``, one ``c_r`` per row.

    :param model: the causal LM that TRL patched with its fused LM head (not a PEFT wrapper).
    :param temperature: the sampling temperature ``T`` that TRL divides the logits by.
    :param k: ERA's ``era_k``: rows carry ``c_r`` in ``{1, k, 1/k}``.
    :param topk: keep only the ``topk`` largest logits of every token, for every row (spec 3.6); ``None`` keeps
        the whole vocabulary and leaves rows with ``c_r == 1`` exactly as TRL scored them.
    :param cast_lm_head_to_fp32: as TRL's ``cast_lm_head_to_fp32`` (the head runs in float32).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        temperature: float,
        k: float,
        topk: int | None = None,
        cast_lm_head_to_fp32: bool = False,
    ) -> None:
        if topk is not None:
            config = model.config.get_text_config()
            transforms = [name for name in LOGIT_TRANSFORM_FIELDS if getattr(config, name, None) is not None]
            if transforms:
                raise NotImplementedError(
                    f"top-k ERA log-probs support LM heads without logit transforms; {type(model).__name__} sets "
                    f"{transforms}. Use topk=None (era_topk_logits=None) with this model."
                )
        self.model = model
        self.temperature = temperature
        self.topk = topk
        # The factor values exactly as `era_core.response_logit_factors` computes them (float32 `1 * k`, `1 / k`);
        # the top-k path scores every row itself.
        one = torch.ones(())
        self._heads = {
            factor: _TemperedFusedLMHead(model, temperature / factor, cast_lm_head_to_fp32)
            for factor in ((one * k).item(), (one / k).item())
            if topk is None
        }

    def rescaled_rows(self, factors: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: the rows whose log-probs differ from the plain policy's (every row in top-k mode)."""
        return torch.ones_like(factors, dtype=torch.bool) if self.topk is not None else factors != 1.0

    def __call__(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor,
        factors: torch.Tensor,
        log_probs: torch.Tensor,
    ) -> torch.Tensor:
        """ERA log-probs ``(B, K)`` of the last ``K`` labels.

        :param hidden_states: ``(B, L, H)`` backbone output of the forward that produced ``log_probs``.
        :param labels: ``(B, L)`` input ids, ``-100`` where a next token is not scored.
        :param factors: ``(B,)`` per-row factors ``c_r``.
        :param log_probs: ``(B, K)`` TRL's log-probs (``c_r = 1``) of the last ``K`` labels.
        """
        num_scored = log_probs.shape[1]
        # The K scored labels are predicted by the K positions before them.
        hidden_states = hidden_states[:, -(num_scored + 1) :]
        labels = labels[:, -(num_scored + 1) :]
        if self.topk is not None:
            return self._topk_log_probs(hidden_states, labels, factors)
        known = torch.tensor([1.0, *self._heads], device=factors.device, dtype=factors.dtype)
        if not torch.isin(factors, known).all():
            raise ValueError(f"factors must be 1 or one of {sorted(self._heads)}, got {factors.tolist()}")
        result = log_probs
        for factor, head in self._heads.items():
            rows = (factors == factor).nonzero().squeeze(-1)
            if rows.numel() > 0:
                result = result.index_put((rows,), head(hidden_states[rows], labels[rows]))
        return result

    def _topk_log_probs(self, hidden_states, labels, factors) -> torch.Tensor:
        hidden_states, labels = hidden_states[:, :-1], labels[:, 1:]
        mask = labels != -100
        scale = (factors.float() / self.temperature).unsqueeze(-1).expand_as(labels)
        lm_head = self.model.get_output_embeddings()
        hidden = hidden_states[mask].to(lm_head.weight.device)
        scored = topk_token_logprobs(hidden, lm_head, labels[mask], scale[mask], self.topk)
        # `masked_scatter` keeps the result connected to the model even when no label is scored.
        return scored.new_zeros(mask.shape).masked_scatter(mask, scored)
