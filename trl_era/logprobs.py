"""Chunked log-probabilities of the sampled tokens under ERA's per-response logit scaling (spec 3.4 and 3.6).

ERA reads every sampled token's log-prob from ``log_softmax(c_r * logits / T)``, with one factor ``c_r`` per
response. TRL 1.16 never builds the ``(B, T, V)`` logits: its fused LM head (`trl.trainer.add_fused_lm_head`)
projects the backbone's hidden states through the LM head in vocabulary tiles. ERA keeps that property:

- ``c_r`` depends on the response's entropy, which the same pass computes, so the scored tokens of the responses
  that may be rescaled (positive advantage) also get the log-sum-exp at ``T / k`` and/or ``T * k`` (the factors
  the bounds make attainable) from the very logit tiles TRL's head folds (:class:`_TwoTemperatureLogProbs`): one
  pass over the vocabulary for every response, and each row then reads its log-probs at its own factor (the rows
  with ``c_r == 1`` keep TRL's log-probs, bit for bit). When no token may be rescaled, TRL's function runs alone.
  Softcapping, logit scaling, ``cast_lm_head_to_fp32``, FSDP2 and ZeRO-3 are handled by TRL's forward, since it
  is TRL's code that runs; only its tile function is swapped for the duration of that forward.
- the top-k variant (spec 3.6) needs the ``k`` largest logits of each token, which TRL's kernel does not
  produce: :func:`topk_token_logprobs` finds them tile by tile without gradient, then recomputes only those
  ``k`` logits (and the sampled token's) with gradient, so no tile of the logits is kept for the backward.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from trl.kernels import chunked_logprob as _trl_kernels
from trl.trainer import utils as _trl_utils
from trl.trainer.utils import maybe_gather_lm_head_ctx

from era_core import response_factor_values, topk_token_logprob

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
# Rows of a logit tile folded at once in the backward (float32 temporaries of TRL's torch fold: 128 x 32768 x 4 B =
# 16 MB each), and the longest run of rescalable rows handled at once, where TRL folds with torch (CPUs).
_ROW_BLOCK_SIZE = 128
# The longest run of rescalable rows handled at once where TRL's Triton kernel folds (GPUs): a GPU pays per launch,
# so one response's rows go in one piece. The kernel holds no temporaries; the backward copies a run's tile rows
# only where the loss also reads them at T (1024 x 32768 x 2 B = 64 MB in bfloat16).
_TRITON_RUN_SIZE = 1024


@contextmanager
def capture_last_hidden_state(model: PreTrainedModel) -> Iterator[dict[str, torch.Tensor]]:
    """Record the ``last_hidden_state`` that ``model``'s backbone (``model.base_model``) returns while inside.

    TRL's fused LM head calls the backbone and keeps the hidden states to itself; the top-k mode needs them to
    score every response's top logits without running the backbone again.

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


class _TwoTemperatureLogProbs(torch.autograd.Function):
    """TRL's `ChunkedLogProbFunction`, plus the sampled tokens' log-probs at the temperatures ``T / c`` for one or
    two factors ``c`` on the rows that may be rescaled, from the same logit tiles (one pass over the vocabulary).

    Every tile is projected and folded by TRL's own code (its Triton kernel on GPUs, its torch fold elsewhere), so
    the outputs at ``T`` are TRL's, bit for bit. TRL's fold only reads the tile; the rescalable rows, runs of
    consecutive tokens (one per response) read as views of the tile, are then folded again by the same code at the
    inverse temperature ``c / T``, into running statistics of their own: ``log_softmax(c z)`` of the label, with
    ``z = transform(logits) / T``, is that fold's target logit less its log-sum-exp. No copy of the logits is made
    and a GPU reads each rescalable row once more per factor, in one kernel launch per run. The backward recomputes
    each tile as TRL's does and turns it into the logits' gradient in row blocks: TRL's fold at ``T`` on the rows
    that were not rescaled, and on those that were its fold at ``c / T`` with ``c`` the one factor whose output has
    a gradient on that row (``g c (onehot - softmax(c z)) dz/dlogits``), in place or, where those rows also have a
    gradient at ``T``, on a copy added to TRL's fold at ``T``.
    """

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        targets,
        rescalable,
        factors,
        temperature,
        chunk_size,
        softcap,
        logit_scale,
        outputs,
    ):
        ctx.set_materialize_grads(False)
        device, n_tokens, vocab = hidden.device, hidden.shape[0], weight.shape[0]
        compute_dtype = (
            torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        )
        kernel_args = {
            "logit_scale": logit_scale,
            "softcap": softcap or 1.0,
            "inv_t": 1 / temperature,
            "HAS_SOFTCAP": softcap is not None,
        }
        flags = {f"HAS_{name.upper()}": name in outputs for name in _trl_kernels.OPTIONAL_OUTPUTS}
        stats = _fold_statistics(n_tokens, device)
        # TRL's statistics again at each factor c, on the rescalable rows only: its fold at inverse temperature c / T.
        factor_stats = [_fold_statistics(n_tokens, device) for _ in factors]
        factor_args = [{**kernel_args, "inv_t": factor * kernel_args["inv_t"]} for factor in factors]
        no_outputs = {name: False for name in flags}
        token_chunk = _trl_kernels.TOKEN_CHUNK_SIZE
        use_triton = _trl_kernels._use_triton(device)
        runs = _row_runs(rescalable, token_chunk, _longest_run(use_triton))
        mm_buf = torch.empty((min(n_tokens, token_chunk), chunk_size), device=device, dtype=compute_dtype)
        for token_start in range(0, n_tokens, token_chunk):
            token_end = min(token_start + token_chunk, n_tokens)
            n = token_end - token_start
            hidden_chunk = hidden[token_start:token_end].to(compute_dtype)
            chunk_runs = [(r0, r1) for r0, r1, _ in runs if token_start <= r0 < token_end]
            for start in range(0, vocab, chunk_size):
                end = min(start + chunk_size, vocab)
                tile = mm_buf[:n, : end - start]
                torch.mm(hidden_chunk, weight[start:end].to(compute_dtype).t(), out=tile)
                if bias is not None:
                    tile.add_(bias[start:end].to(compute_dtype))
                # TRL's fold reads the tile without writing it: the rescalable rows' runs are folded again from it.
                _trl_forward_fold(
                    tile, token_start, targets, stats, start, end - start, flags, kernel_args, use_triton
                )
                for r0, r1 in chunk_runs:
                    for fold_stats, args in zip(factor_stats, factor_args, strict=True):
                        _trl_forward_fold(
                            tile[r0 - token_start : r1 - token_start],
                            r0,
                            targets,
                            fold_stats,
                            start,
                            end - start,
                            no_outputs,
                            args,
                            use_triton,
                        )

        running_max, sum_exp, target_logit = stats["running_max"], stats["sum_exp"], stats["target_logit"]
        log_z = running_max + torch.log(sum_exp)
        logprobs = target_logit - log_z
        entropy = log_z - stats["x_sum_exp"] / sum_exp if "entropy" in outputs else None
        log_sum_sq = (
            torch.log(stats["sq_sum_exp"]) - 2 * torch.log(sum_exp) if "log_sum_sq_probs" in outputs else None
        )
        mean_logits = stats["z_sum"] / vocab if "mean_logits" in outputs else None
        is_top1 = (
            (target_logit >= running_max) & (target_logit > stats["max_before_target"])
            if "is_top1" in outputs
            else None
        )
        # log_softmax(c z) of the label on the rescalable rows; elsewhere a finite filler that no gradient reads.
        scaled_log_z = torch.stack([s["running_max"] + torch.log(s["sum_exp"]) for s in factor_stats], -1)
        scaled_log_z = torch.where(rescalable[:, None], scaled_log_z, 0.0)
        scaled_target = torch.stack([s["target_logit"] for s in factor_stats], -1)
        scaled_logprobs = torch.where(rescalable[:, None], scaled_target - scaled_log_z, 0.0)

        ctx.save_for_backward(
            hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy, scaled_log_z
        )
        ctx.compute_dtype, ctx.chunk_size, ctx.kernel_args, ctx.factor_args = (
            compute_dtype,
            chunk_size,
            kernel_args,
            factor_args,
        )
        ctx.mark_non_differentiable(*(x for x in (log_sum_sq, mean_logits, is_top1) if x is not None))
        return logprobs, entropy, log_sum_sq, mean_logits, is_top1, scaled_logprobs

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy, _sq, _mean, _top1, grad_scaled):
        hidden, weight, bias, targets, log_z, entropy, scaled_log_z = ctx.saved_tensors
        compute_dtype, chunk_size, kernel_args = ctx.compute_dtype, ctx.chunk_size, ctx.kernel_args
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        n_tokens = hidden.shape[0]
        use_triton = _trl_kernels._use_triton(hidden.device)
        grad_logprobs = grad_logprobs.float().contiguous() if grad_logprobs is not None else None
        grad_entropy = grad_entropy.float().contiguous() if grad_entropy is not None else None
        token_chunk = _trl_kernels.TOKEN_CHUNK_SIZE
        # The rows whose rescaled log-prob has a gradient (none when nothing was rescaled), each at the one factor
        # the caller selected for it.
        active_runs, overwrite = [], True
        if grad_scaled is not None:
            grad_scaled = grad_scaled.float()
            nonzero = grad_scaled != 0
            if (nonzero.sum(dim=-1) > 1).any():
                raise RuntimeError("each row's ERA log-prob must be read at one factor only")
            chosen = nonzero.float().argmax(dim=-1, keepdim=True)
            row_grad = grad_scaled.gather(-1, chosen).squeeze(-1)
            row_log_z = scaled_log_z.gather(-1, chosen).squeeze(-1)
            active = row_grad != 0
            # Runs labelled by their factor's index + 1: TRL's fold takes one temperature per call.
            active_runs = _row_runs(
                torch.where(active, chosen.squeeze(-1) + 1, 0), token_chunk, _longest_run(use_triton)
            )
            # Rows rescaled and without a gradient at T (the usual case: the loss reads them at their factor only)
            # get their gradient in place of TRL's fold, which would give them zero.
            overwrite = grad_entropy is None and (grad_logprobs is None or not grad_logprobs[active].any())
        factor_args = ctx.factor_args
        with maybe_gather_lm_head_ctx(weight, bias):
            vocab = weight.shape[0]
            grad_hidden = (
                torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32) if needs_hidden else None
            )
            grad_weight = (
                torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if needs_weight else None
            )
            grad_bias = (
                torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if needs_bias else None
            )
            mm_buf = torch.empty(
                (min(n_tokens, token_chunk), chunk_size), device=hidden.device, dtype=compute_dtype
            )
            for token_start in range(0, n_tokens, token_chunk):
                token_end = min(token_start + token_chunk, n_tokens)
                n = token_end - token_start
                hidden_chunk = hidden[token_start:token_end].to(compute_dtype)
                # TRL's torch fold holds float32 temporaries of its whole tile: fold the rows that were not rescaled
                # a block at a time on CPUs (faster and smaller there); its Triton kernel holds none.
                blocks = _row_blocks(
                    token_start, token_end, active_runs, n if use_triton else _ROW_BLOCK_SIZE
                )
                for start in range(0, vocab, chunk_size):
                    end = min(start + chunk_size, vocab)
                    w_chunk = weight[start:end].to(compute_dtype)
                    tile = mm_buf[:n, : end - start]
                    torch.mm(hidden_chunk, w_chunk.t(), out=tile)
                    if bias is not None:
                        tile.add_(bias[start:end].to(compute_dtype))
                    for b0, b1, label in blocks:
                        rows = tile[b0 - token_start : b1 - token_start]
                        tokens, n_cols = slice(b0, b1), end - start
                        # A rescaled row's gradient at its factor c is TRL's fold at inverse temperature c / T: in
                        # place of its fold at T (which gives the row zero), or added to it.
                        scaled = None
                        if label:
                            scaled = rows if overwrite else rows.clone()
                            _trl_backward_fold(
                                scaled,
                                tokens,
                                targets,
                                row_log_z,
                                row_log_z,
                                row_grad,
                                None,
                                start,
                                n_cols,
                                factor_args[label - 1],
                                use_triton,
                            )
                        if scaled is rows:
                            continue
                        _trl_backward_fold(
                            rows,
                            tokens,
                            targets,
                            log_z,
                            entropy,
                            grad_logprobs,
                            grad_entropy,
                            start,
                            n_cols,
                            kernel_args,
                            use_triton,
                        )
                        if scaled is not None:
                            rows.add_(scaled)
                    if grad_hidden is not None:
                        _trl_kernels._addmm_fp32(grad_hidden[token_start:token_end], tile, w_chunk)
                    if grad_weight is not None:
                        _trl_kernels._addmm_fp32(grad_weight[start:end], tile.t(), hidden_chunk)
                    if grad_bias is not None:
                        grad_bias[start:end] += tile.sum(dim=0, dtype=torch.float32)
        return (
            grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
            *([None] * 8),
        )


def _fold_statistics(n_tokens: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The running statistics TRL's forward fold reads and updates, per token, in its order, before the first tile."""
    return {
        name: torch.full((n_tokens,), value, device=device, dtype=torch.float32)
        for name, value in (
            ("running_max", -math.inf),
            ("sum_exp", 0.0),
            ("x_sum_exp", 0.0),
            ("sq_sum_exp", 0.0),
            ("z_sum", 0.0),
            ("max_before_target", -math.inf),
            ("target_logit", 0.0),
        )
    }


def _trl_forward_fold(
    tile, first_token, targets, stats, vocab_start, n_cols, flags, kernel_args, use_triton
) -> None:
    """TRL's forward fold (its Triton kernel or torch code) of the tile of tokens from ``first_token`` into their
    ``stats`` (:func:`_fold_statistics`), which the ``flags`` (``HAS_ENTROPY``, ...) ask for; the tile is read only."""
    tokens = slice(first_token, first_token + tile.shape[0])
    fold = _trl_kernels._forward_kernel[(tile.shape[0],)] if use_triton else _trl_kernels._forward_tile
    fold(
        tile,
        tile.stride(0),
        targets[tokens],
        *(value[tokens] for value in stats.values()),
        vocab_start,
        n_cols,
        BLOCK_SIZE=_trl_kernels._BLOCK_SIZE,
        **flags,
        **kernel_args,
    )


def _longest_run(use_triton: bool) -> int:
    """Rows of one run of rescalable rows handled at once: TRL's Triton fold (GPUs) or its torch fold (CPUs)."""
    return _TRITON_RUN_SIZE if use_triton else _ROW_BLOCK_SIZE


def _row_runs(labels: torch.Tensor, token_chunk: int, max_rows: int) -> list[tuple[int, int, int]]:
    """The runs ``(r0, r1, label)`` of consecutive rows of one nonzero label (``True`` for a mask), cut at
    token-chunk boundaries and into pieces of at most ``max_rows`` rows (one host sync)."""
    padded = torch.cat([labels.new_zeros(1), labels, labels.new_zeros(1)]).to(torch.int64)
    changes = padded.diff().nonzero().squeeze(-1)
    edges, values = torch.stack([changes, padded[changes + 1]]).tolist()
    runs = []
    for run_start, run_end, label in zip(edges, edges[1:], values, strict=False):
        cut = run_start
        while label and cut < run_end:
            next_cut = min(run_end, cut + max_rows, (cut // token_chunk + 1) * token_chunk)
            runs.append((cut, next_cut, label))
            cut = next_cut
    return runs


def _row_blocks(
    token_start: int, token_end: int, runs: list[tuple[int, int, int]], block: int
) -> list[tuple[int, int, int]]:
    """``[token_start, token_end)`` cut into blocks ``(b0, b1, label)`` of at most ``block`` rows: the ``runs``
    inside it (with their label), and the rows between them (label 0)."""
    blocks, cut = [], token_start
    for r0, r1, label in [
        *(run for run in runs if token_start <= run[0] < token_end),
        (token_end, token_end, 0),
    ]:
        for b0 in range(cut, r0, block):
            blocks.append((b0, min(b0 + block, r0), 0))
        if r1 > r0:
            blocks.append((r0, r1, label))
        cut = r1
    return blocks


def _trl_backward_fold(
    tile,
    tokens,
    targets,
    log_z,
    entropy,
    grad_logprobs,
    grad_entropy,
    vocab_start,
    n_cols,
    kernel_args,
    use_triton,
) -> None:
    """TRL's backward fold (its Triton kernel or torch code) over the rows ``tokens`` of a tile, in place."""
    fold = (
        _trl_kernels._backward_kernel[
            (tile.shape[0], _trl_kernels.triton.cdiv(n_cols, _trl_kernels._BLOCK_SIZE))
        ]
        if use_triton
        else _trl_kernels._backward_tile
    )
    fold(
        tile,
        tile.stride(0),
        targets[tokens],
        log_z[tokens],
        entropy[tokens],
        grad_logprobs[tokens] if grad_logprobs is not None else log_z[tokens],
        grad_entropy[tokens] if grad_entropy is not None else log_z[tokens],
        vocab_start,
        n_cols,
        HAS_LOGPROB_GRAD=grad_logprobs is not None,
        HAS_ENTROPY_GRAD=grad_entropy is not None,
        BLOCK_SIZE=_trl_kernels._BLOCK_SIZE,
        **kernel_args,
    )


class _OnePassScoring:
    """While active, TRL's fused LM head scores with :class:`_TwoTemperatureLogProbs` instead of its own function.

    TRL's patched forward (backbone, shift, compaction of the scored positions, softcapping and logit scale,
    FSDP2/ZeRO-3 gathering, the MoE auxiliary loss) runs unchanged; only the tile function it calls is swapped, for
    the one forward inside the ``with`` block, and only when some scored token may be rescaled (otherwise TRL's
    own function runs and ERA adds no work). The extra log-probs are read with :meth:`scaled_log_probs`.
    """

    def __init__(self, labels: torch.Tensor, rescalable: torch.Tensor, factors: tuple[float, ...]) -> None:
        self._mask = labels[:, 1:] != -100
        self.rescalable = rescalable.to(self._mask.device)
        self.factors = factors
        # The scored tokens of the responses that may be rescaled: the only rows that get the extra sums.
        self._rescalable_tokens = self.rescalable[:, None] & self._mask
        self.active = bool(factors) and bool(self._rescalable_tokens.any())
        self._scaled: torch.Tensor | None = None
        self._compact = False

    def __enter__(self) -> _OnePassScoring:
        self._original = _trl_utils._ChunkedLogProbFunction
        if self.active:
            _trl_utils._ChunkedLogProbFunction = self
        return self

    def __exit__(self, *exc_info) -> None:
        _trl_utils._ChunkedLogProbFunction = self._original

    def apply(self, hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs):
        """Called by TRL's fused forward in place of ``ChunkedLogProbFunction.apply``, with its arguments."""
        self._compact = targets.shape[0] != self._mask.numel()
        tokens = self._rescalable_tokens
        rescalable = tokens[self._mask] if self._compact else tokens.reshape(-1)
        if rescalable.shape[0] != targets.shape[0]:
            raise RuntimeError("TRL's fused LM head scored an unexpected set of positions")
        *per_token_outputs, self._scaled = _TwoTemperatureLogProbs.apply(
            hidden,
            weight,
            bias,
            targets,
            rescalable,
            self.factors,
            temperature,
            chunk_size,
            softcap,
            logit_scale,
            outputs,
        )
        return tuple(per_token_outputs)

    def scaled_log_probs(self) -> torch.Tensor | None:
        """``(B, L - 1, len(factors))``: the labels' log-probs at each factor (zero off the rescalable rows), laid
        out as TRL lays out its ``log_probs``; ``None`` when no token was rescalable (nothing was computed)."""
        if self._scaled is None:
            return None
        mask = self._mask.unsqueeze(-1).expand(*self._mask.shape, len(self.factors))
        if self._compact:
            return self._scaled.new_zeros(mask.shape).masked_scatter(mask, self._scaled)
        return self._scaled.view(mask.shape).masked_fill(~mask, 0)


def _equals_any(values: torch.Tensor, numbers: tuple[float, ...]) -> torch.Tensor:
    """Elementwise ``values`` in ``numbers``, compared with each number on the device (no copy of ``numbers``)."""
    result = torch.zeros_like(values, dtype=torch.bool)
    for number in numbers:
        result |= values == number
    return result


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
    return topk_token_logprob(logits[:, k], logits[:, :k], (top_indices == tokens[:, None]).any(dim=-1))


class ScaledLogProbHead:
    """Per-token log-probs of the sampled tokens under ``log_softmax(c_r * logits / T)``, one ``c_r`` per row.

    Without top-k, the rows are scored in TRL's one fused pass over the vocabulary: wrap the forward in
    :meth:`one_pass`, which also folds the log-sum-exp at ``T / k`` and/or ``T * k`` for the scored tokens of the
    rows that may be rescaled, then select each row's log-probs with :meth:`__call__` once its factor is known.

    :param model: the causal LM that TRL patched with its fused LM head (not a PEFT wrapper).
    :param temperature: the sampling temperature ``T`` that TRL divides the logits by.
    :param k: ERA's ``era_k``: rows carry ``c_r`` in ``{1, k, 1/k}`` (as :func:`era_core.response_factor_values`).
    :param topk: keep only the ``topk`` largest logits of every token, for every row (spec 3.6); ``None`` keeps
        the whole vocabulary and leaves rows with ``c_r == 1`` exactly as TRL scored them.
    """

    def __init__(self, model: PreTrainedModel, temperature: float, k: float, topk: int | None = None) -> None:
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
        self.factor_values = response_factor_values(k)

    def rescaled_rows(self, factors: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: the rows whose log-probs differ from the plain policy's (every row in top-k mode)."""
        return torch.ones_like(factors, dtype=torch.bool) if self.topk is not None else factors != 1.0

    def one_pass(
        self, labels: torch.Tensor, rescalable: torch.Tensor, factors: tuple[float, ...] | None = None
    ) -> AbstractContextManager[_OnePassScoring | None]:
        """Context for the fused forward: scores the ``rescalable`` rows at ``factors`` in the same tiles.

        :param labels: ``(B, L)`` the labels passed to the fused forward (``-100``: unscored).
        :param rescalable: ``(B,)`` bool, the rows whose factor may differ from 1.
        :param factors: the factors other than 1 that rows may get (a subset of ``(k, 1/k)``, e.g. from
            :func:`era_core.attainable_logit_factors`); ``None``: both. With none, or no rescalable row, TRL's own
            function scores the forward and no row may be rescaled.
        :return: the scoring to pass to :meth:`__call__` (``None`` in top-k mode, which scores by itself).
        """
        if self.topk is not None:
            return nullcontext()
        factors = self.factor_values if factors is None else tuple(factors)
        if not set(factors) <= set(self.factor_values):
            raise ValueError(f"factors must be among {self.factor_values}, got {factors}")
        return _OnePassScoring(labels, rescalable, factors)

    def __call__(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor,
        factors: torch.Tensor,
        log_probs: torch.Tensor,
        scoring: _OnePassScoring | None = None,
    ) -> torch.Tensor:
        """ERA log-probs ``(B, K)`` of the last ``K`` labels.

        :param hidden_states: ``(B, L, H)`` backbone output of the forward that produced ``log_probs``.
        :param labels: ``(B, L)`` input ids, ``-100`` where a next token is not scored.
        :param factors: ``(B,)`` per-row factors ``c_r``.
        :param log_probs: ``(B, K)`` TRL's log-probs (``c_r = 1``) of the last ``K`` labels.
        :param scoring: what :meth:`one_pass` returned around that forward (not needed in top-k mode).
        """
        num_scored = log_probs.shape[1]
        if self.topk is not None:
            # The K scored labels are predicted by the K positions before them.
            return self._topk_log_probs(
                hidden_states[:, -(num_scored + 1) :], labels[:, -(num_scored + 1) :], factors
            )
        rescaled = factors != 1.0
        # Both checks in one host sync, comparing with Python numbers (a tensor of them would be a copy to the
        # device, each a sync on a GPU).
        problems = [(rescaled & ~_equals_any(factors, self.factor_values)).any()]
        if scoring is not None:
            scored = _equals_any(factors, scoring.factors) & scoring.rescalable
            problems.append((rescaled & ~scored).any())
        flags = torch.stack(problems).tolist()
        if flags[0]:
            raise ValueError(
                f"factors must be 1 or one of {sorted(self.factor_values)}, got {factors.tolist()}"
            )
        if scoring is None:
            raise ValueError("without top-k, ERA log-probs come from a forward run inside one_pass(...)")
        if flags[1]:
            raise ValueError(
                f"rows rescaled by {factors.tolist()}, but one_pass scored only the rows "
                f"{scoring.rescalable.tolist()} at the factors {scoring.factors}"
            )
        scaled = scoring.scaled_log_probs()
        if scaled is None:
            return log_probs
        scaled = scaled[:, -num_scored:]
        result = log_probs
        for index, value in enumerate(scoring.factors):
            result = torch.where((factors == value).unsqueeze(-1), scaled[..., index], result)
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
