"""Chunked ERA log-probs (`trl_era.logprobs`) against the full-logits reference `era_core.scaled_token_logprobs`."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from trl.kernels import chunked_logprob as trl_kernels
from trl.trainer import utils as trl_utils
from trl.trainer.utils import add_fused_lm_head

from era_core import (
    OUTSIDE_TOPK_LOGPROB,
    response_factor_values,
    scaled_token_logprobs,
)
from tests.trl.conftest import TRITON_FOLD, VOCAB_SIZE, build_model
from trl_era import logprobs
from trl_era.logprobs import ScaledLogProbHead, capture_last_hidden_state

TEMPERATURE = 0.7
NUM_SCORED = 5
# On a GPU, TRL's fused head takes its Triton path (only the scored positions), so check it there too.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_batch(vocab_size: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts of 3 tokens and completions of 5, the last ones partly padding."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, vocab_size, (6, 3 + NUM_SCORED), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 0] = 0  # left padding in a prompt
    attention_mask[2, -2:] = 0  # a short completion
    attention_mask[4, -1:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-NUM_SCORED] = -100
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def fused_pass(model, input_ids, attention_mask, labels):
    """TRL's log-probs of the completions and the backbone output they came from."""
    with capture_last_hidden_state(model) as captured:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    return outputs.log_probs[:, -NUM_SCORED:], captured["last_hidden_state"]


def reference_logprobs(
    model,
    input_ids,
    attention_mask,
    factors,
    topk=None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
):
    """Spec 3.4/3.6 from the full float64 logits of the unpatched forward, after `transform` (a logit transform
    such as softcapping that TRL's fused head applies before the temperature) if given."""
    logits = (
        model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -NUM_SCORED - 1 : -1].double()
    )
    if transform is not None:
        logits = transform(logits)
    return scaled_token_logprobs(logits / TEMPERATURE, input_ids[:, -NUM_SCORED:], factors, topk=topk)


def patched_float64_model(device: str = "cpu"):
    model = build_model().double().to(device)
    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    return model


def patched_models(dtype: str, device: str = "cpu", **config):
    """A patched model of `dtype` and a float64 copy for the reference (the same one in float64); `config` sets
    fields such as `final_logit_softcapping` that TRL's fused head reads."""
    model = build_model().to(device)
    for name, value in config.items():
        setattr(model.config, name, value)
    reference = copy.deepcopy(model).double()
    model = model.to(getattr(torch, dtype))
    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    return model, (model if dtype == "float64" else reference)


def gradients(model, value: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
    return torch.autograd.grad((value * weights).sum(), [p for p in model.parameters() if p.requires_grad])


def one_pass_era_logprobs(model, head, input_ids, attention_mask, labels, factors, rescalable):
    """TRL's log-probs and ERA's, both from one fused forward."""
    with head.one_pass(labels, rescalable) as scoring:
        trl_logps, hidden = fused_pass(model, input_ids, attention_mask, labels)
    return trl_logps, head(hidden, labels, factors, trl_logps, scoring)


#: The factors of `make_batch`'s rows at k = 2 in most tests: [1, sharpen, flatten] twice.
FACTORS = torch.tensor([1.0, *response_factor_values(2.0)] * 2)


class OnePassRun(NamedTuple):
    trl_logps: torch.Tensor  # TRL's log-probs at T, from the same fused pass
    era: torch.Tensor
    reference: torch.Tensor  # float64
    scored: torch.Tensor  # 1.0 on the completion tokens, 0.0 on padding (float64)


def one_pass_against_reference(
    model,
    reference_model=None,
    rescalable: torch.Tensor | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> OnePassRun:
    """ERA's log-probs of `make_batch` at `FACTORS` (k = 2) from one fused pass of `model`, the float64 reference
    from `reference_model` (default: `model`; `transform` as in `reference_logprobs`) and the scored tokens. The
    rows that may be rescaled are `rescalable` (default: those off factor 1)."""
    input_ids, attention_mask, labels = make_batch(VOCAB_SIZE)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    rescalable = FACTORS != 1.0 if rescalable is None else rescalable
    trl_logps, era = one_pass_era_logprobs(
        model, head, input_ids, attention_mask, labels, FACTORS, rescalable
    )
    reference_model = model if reference_model is None else reference_model
    reference = reference_logprobs(reference_model, input_ids, attention_mask, FACTORS, transform=transform)
    scored = (labels[:, -NUM_SCORED:] != -100).double()
    return OnePassRun(trl_logps, era, reference, scored)


def many_tiles(monkeypatch) -> None:
    """Vocabulary, token and row tiles that do not divide the sizes (runs of rescaled rows cut across them): the
    last vocabulary tile of the 294 tokens has 4 columns, the last token chunk of the 42 positions 2 rows; under
    Triton's interpreter, which pays per kernel launch, 94 columns and 10 rows."""
    vocab_chunk, token_chunk = (100, 16) if TRITON_FOLD else (5, 4)
    assert VOCAB_SIZE % vocab_chunk != 0
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", vocab_chunk)
    monkeypatch.setattr(trl_kernels, "TOKEN_CHUNK_SIZE", token_chunk)
    monkeypatch.setattr(logprobs, "_ROW_BLOCK_SIZE", 2)
    monkeypatch.setattr(logprobs, "_TRITON_RUN_SIZE", 2)


# float64 checks the maths to TRL's float32 fold; float32 runs the fast path that works in place on the logit tile.
TOLERANCES = {"float64": dict(rtol=1e-5, atol=1e-5), "float32": dict(rtol=1e-4, atol=1e-4)}
GRAD_TOLERANCES = {"float64": dict(rtol=1e-4, atol=1e-6), "float32": dict(rtol=1e-3, atol=1e-5)}


def assert_gradients_close(model, value, reference_model, reference, weights, dtype) -> None:
    for got, expected in zip(
        gradients(model, value, weights.to(value.dtype)),
        gradients(reference_model, reference, weights.double()),
        strict=True,
    ):
        torch.testing.assert_close(got.double(), expected, **GRAD_TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("tiles", ["one-tile", "many-tiles"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [2.0, 3.0, 1.1])
def test_rescaled_rows_match_full_logits_reference_and_others_stay_trl(k, device, tiles, dtype, monkeypatch):
    if tiles == "many-tiles":
        many_tiles(monkeypatch)
    model, reference_model = patched_models(dtype, device)
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size, device)
    sharpen, flatten = response_factor_values(k)
    factors = torch.tensor([1.0, sharpen, flatten, 1.0, sharpen, flatten], device=device)
    # Row 0 may be rescaled but keeps factor 1 (its entropy is within bounds); row 3 may not be rescaled.
    rescalable = torch.tensor([True, True, True, False, True, True], device=device)
    head = ScaledLogProbHead(model, TEMPERATURE, k=k)

    trl_logps, _ = fused_pass(model, input_ids, attention_mask, labels)
    one_pass_logps, era = one_pass_era_logprobs(
        model, head, input_ids, attention_mask, labels, factors, rescalable
    )
    reference = reference_logprobs(reference_model, input_ids, attention_mask, factors)
    scored = (labels[:, -NUM_SCORED:] != -100).double()

    assert torch.equal(one_pass_logps, trl_logps)
    unchanged = factors == 1.0
    assert torch.equal(era[unchanged], trl_logps[unchanged])
    assert not torch.allclose(era[~unchanged], trl_logps[~unchanged])
    # TRL's kernel folds the logits in float32, hence the tolerance.
    torch.testing.assert_close(era.double() * scored, reference * scored, **TOLERANCES[dtype])

    weights = torch.randn(scored.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    weights = weights.to(device) * scored
    assert_gradients_close(model, era, reference_model, reference, weights, dtype)


@pytest.mark.skipif(TRITON_FOLD, reason="runs this file's tests under Triton's interpreter: this is that run")
def test_this_file_passes_with_trls_triton_kernels_run_by_tritons_cpu_interpreter():
    """GPUs fold the logit tiles with TRL's Triton kernels, ERA's rescaled rows included: this file's tests again in a
    subprocess where Triton's interpreter runs those kernels on the CPU (``TRITON_INTERPRET`` is read when they are
    defined)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "ERA_TEST_TRITON_FOLD": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", __file__]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.skipif(not TRITON_FOLD, reason="checks the run under Triton's interpreter (the test above)")
def test_the_folds_are_trls_triton_kernels_run_by_tritons_interpreter():
    from triton.runtime.interpreter import InterpretedFunction

    assert trl_kernels._use_triton(torch.device("cpu"))
    assert isinstance(trl_kernels._forward_kernel, InterpretedFunction)
    assert isinstance(trl_kernels._backward_kernel, InterpretedFunction)


def test_rows_kept_at_factor_one_get_trls_gradients_bit_for_bit():
    model = patched_float64_model()
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    weights = torch.randn((6, NUM_SCORED), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    trl_logps, _ = fused_pass(model, input_ids, attention_mask, labels)
    _, era = one_pass_era_logprobs(
        model, head, input_ids, attention_mask, labels, torch.ones(6), torch.ones(6, dtype=torch.bool)
    )
    for got, expected in zip(
        gradients(model, era, weights), gradients(model, trl_logps, weights), strict=True
    ):
        assert torch.equal(got, expected)


# softcap = 2 T: z is exactly 2 per unit of tanh (a scale that must still be applied).
@pytest.mark.parametrize("softcap", [2.0, 2 * TEMPERATURE], ids=["softcap-2", "softcap-2T"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_softcapped_and_scaled_logits_match_the_transformed_reference(dtype, softcap, monkeypatch):
    many_tiles(monkeypatch)
    # TRL's fused head reads these config fields (Qwen2's own forward ignores them): z = s tanh(1.3 logits / s) / T.
    model, reference_model = patched_models(dtype, final_logit_softcapping=softcap, logit_scale=1.3)

    def transform(logits: torch.Tensor) -> torch.Tensor:
        return softcap * torch.tanh(1.3 * logits / softcap)

    trl_logps, era, reference, scored = one_pass_against_reference(
        model, reference_model, rescalable=torch.ones(6, dtype=torch.bool), transform=transform
    )
    input_ids, attention_mask, _ = make_batch(VOCAB_SIZE)
    plain = reference_logprobs(reference_model, input_ids, attention_mask, torch.ones(6), transform=transform)
    torch.testing.assert_close(trl_logps.double() * scored, plain * scored, **TOLERANCES[dtype])
    torch.testing.assert_close(era.double() * scored, reference * scored, **TOLERANCES[dtype])
    weights = (
        torch.randn(scored.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * scored
    )
    assert_gradients_close(model, era, reference_model, reference, weights, dtype)


@pytest.mark.parametrize("reads", ["log-probs at T", "entropy", "both"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rescaled_rows_with_gradients_at_t_and_through_the_entropy_match_the_reference(
    dtype, reads, monkeypatch
):
    """A loss that also reads a rescaled row's log-prob at ``T``, or every row's entropy, or both (TRL's fold and
    ERA's gradient then add up on the same rows)."""
    many_tiles(monkeypatch)
    model, reference_model = patched_models(dtype)
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size)
    sharpen, flatten = response_factor_values(2.0)
    factors = torch.tensor([1.0, sharpen, flatten, 1.0, sharpen, 1.0])
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    with head.one_pass(labels, factors != 1.0) as scoring, capture_last_hidden_state(model) as captured:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    trl_logps, entropy = outputs.log_probs[:, -NUM_SCORED:], outputs.entropy[:, -NUM_SCORED:]
    era = head(captured["last_hidden_state"], labels, factors, trl_logps, scoring)

    logits = reference_model(input_ids=input_ids, attention_mask=attention_mask).logits[
        :, -NUM_SCORED - 1 : -1
    ]
    logits = logits.double() / TEMPERATURE
    reference_era = scaled_token_logprobs(logits, input_ids[:, -NUM_SCORED:], factors)
    reference_plain = scaled_token_logprobs(logits, input_ids[:, -NUM_SCORED:], torch.ones(6))
    log_p = torch.log_softmax(logits, dim=-1)
    reference_entropy = -(log_p.exp() * log_p).sum(dim=-1)
    scored = (labels[:, -NUM_SCORED:] != -100).double()
    generator = torch.Generator().manual_seed(6)
    w_era, w_plain, w_entropy = (
        torch.randn(scored.shape, generator=generator, dtype=torch.float64) * scored for _ in range(3)
    )

    value, reference = (era * w_era.to(era.dtype)).sum(), (reference_era * w_era).sum()
    if reads != "entropy":
        value = value + (trl_logps * w_plain.to(era.dtype)).sum()
        reference = reference + (reference_plain * w_plain).sum()
    if reads != "log-probs at T":
        value = value + (entropy * w_entropy.to(era.dtype)).sum()
        reference = reference + (reference_entropy * w_entropy).sum()
    torch.testing.assert_close(value.double(), reference, **TOLERANCES[dtype])
    assert_gradients_close(model, value, reference_model, reference, torch.ones(()), dtype)


def test_a_loss_reading_only_the_rescaled_log_probs_gets_their_gradient(monkeypatch):
    """Neither TRL's log-probs nor its entropy in the loss (no gradient reaches them), unit weights, and each row
    read at its own factor; reading a row at both factors is refused in the backward."""
    many_tiles(monkeypatch)
    model = patched_float64_model()
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    sharpen, flatten = response_factor_values(2.0)
    factors = torch.tensor([sharpen, flatten, sharpen, flatten, sharpen, flatten])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch.mm resizing a tile that does not fit its buffer
        with head.one_pass(labels, torch.ones(6, dtype=torch.bool)) as scoring:
            fused_pass(model, input_ids, attention_mask, labels)
    scaled = scoring.scaled_log_probs()[:, -NUM_SCORED:]
    column = (factors[:, None] == torch.tensor(scoring.factors)).double().argmax(dim=-1)
    era = scaled.gather(-1, column[:, None, None].expand(6, NUM_SCORED, 1)).squeeze(-1)
    reference = reference_logprobs(model, input_ids, attention_mask, factors)
    scored = (labels[:, -NUM_SCORED:] != -100).double()
    torch.testing.assert_close(era * scored, reference * scored, rtol=1e-5, atol=1e-5)
    parameters = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(RuntimeError, match=r"^each row's ERA log-prob must be read at one factor only$"):
        torch.autograd.grad(scaled.sum(), parameters, retain_graph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got_gradients = gradients(model, era, scored)
    for got, expected in zip(got_gradients, gradients(model, reference, scored), strict=True):
        torch.testing.assert_close(got, expected, **GRAD_TOLERANCES["float64"])


def test_a_biased_lm_head_matches_the_reference_with_the_bias_gradient(monkeypatch):
    many_tiles(monkeypatch)
    model = build_model().double()
    generator = torch.Generator().manual_seed(9)
    biased = nn.Linear(model.config.hidden_size, VOCAB_SIZE, bias=True).double()
    with torch.no_grad():
        biased.weight.copy_(model.lm_head.weight)
        biased.bias.copy_(torch.randn(VOCAB_SIZE, generator=generator, dtype=torch.float64))
    model.lm_head = biased
    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "entropy"))
    _, era, reference, scored = one_pass_against_reference(model)
    torch.testing.assert_close(era * scored, reference * scored, **TOLERANCES["float64"])
    weights = torch.randn(scored.shape, generator=generator, dtype=torch.float64) * scored
    assert_gradients_close(model, era, model, reference, weights, "float64")


@pytest.mark.skipif(
    TRITON_FOLD, reason="Triton's interpreter rounds float32 to bfloat16 toward zero (a GPU, to nearest)"
)
def test_one_pass_under_bfloat16_autocast_matches_the_reference(monkeypatch):
    """TRL's default mixed precision: the logit tiles in bfloat16 (float32 hidden states and head)."""
    many_tiles(monkeypatch)
    model, reference_model = patched_models("float32")
    input_ids, attention_mask, labels = make_batch(VOCAB_SIZE)
    weights = torch.randn((6, NUM_SCORED), generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trl_logps, _ = fused_pass(model, input_ids, attention_mask, labels)
        # The float64 reference model runs in float64 (autocast leaves float64 operations alone).
        one_pass_logps, era, reference, scored = one_pass_against_reference(model, reference_model)
        got_gradients = gradients(model, era, (weights * scored).float())
    assert era.dtype == torch.float32 and torch.equal(one_pass_logps, trl_logps)
    assert torch.equal(era[FACTORS == 1.0], trl_logps[FACTORS == 1.0])
    # bfloat16 logit tiles: the error of TRL's own log-probs at T sets the scale.
    torch.testing.assert_close(era.double() * scored, reference * scored, rtol=0.05, atol=0.05)
    expected_gradients = gradients(reference_model, reference, weights * scored)
    for got, expected in zip(got_gradients, expected_gradients, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=0.1, atol=0.01)


@pytest.mark.skipif(TRITON_FOLD, reason="TRL's Triton kernel holds no temporaries: it folds whole tiles")
def test_the_backward_folds_the_rows_kept_at_t_a_row_block_at_a_time_on_cpus(monkeypatch):
    """TRL's torch fold holds float32 temporaries of the whole tile it gets: on CPUs it gets row blocks."""
    many_tiles(monkeypatch)
    model = patched_float64_model()
    era = one_pass_against_reference(model).era
    fold, folded_rows = logprobs._trl_backward_fold, []

    def recording_fold(tile, *args):
        folded_rows.append(tile.shape[0])
        return fold(tile, *args)

    monkeypatch.setattr(logprobs, "_trl_backward_fold", recording_fold)
    gradients(model, era, torch.ones(era.shape, dtype=torch.float64))
    assert folded_rows and max(folded_rows) == 2


@pytest.mark.parametrize(
    "optional", [trl_kernels.OPTIONAL_OUTPUTS, ()], ids=["all-outputs", "log-probs-only"]
)
def test_one_pass_gives_trls_optional_outputs_bit_for_bit(optional, monkeypatch):
    """With every optional output TRL's fused head offers (entropy, log_sum_sq_probs, mean_logits, is_top1), or
    none of them (then None, as TRL's)."""
    many_tiles(monkeypatch)
    outputs = ("log_probs", *optional)
    model = build_model().double()
    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=outputs)
    input_ids, attention_mask, labels = make_batch(VOCAB_SIZE)
    with torch.no_grad():  # greedy completions on rows 0-2, so that is_top1 holds somewhere
        for position in range(input_ids.shape[1] - NUM_SCORED, input_ids.shape[1]):
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            input_ids[:3, position] = logits[:3, position - 1].argmax(dim=-1)
    labels = torch.where(labels == -100, labels, input_ids)
    plain = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    with head.one_pass(labels, torch.ones(6, dtype=torch.bool)) as scoring:
        ours = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    assert scoring.scaled_log_probs() is not None  # ERA's function scored this forward
    scored = labels[:, 1:] != -100
    if optional:
        assert plain.is_top1[scored].any() and not plain.is_top1[scored].all()
    for name in ("log_probs", *trl_kernels.OPTIONAL_OUTPUTS):
        if name in outputs:
            assert torch.equal(getattr(ours, name), getattr(plain, name)), name
        else:
            assert getattr(ours, name) is None and getattr(plain, name) is None, name


@pytest.mark.parametrize("trained", ["head", "backbone"])
def test_one_pass_gradients_when_only_the_head_or_only_the_backbone_trains(trained, monkeypatch):
    """A frozen backbone (hidden states without gradient) or a frozen LM head (as with LoRA adapters)."""
    many_tiles(monkeypatch)
    model = patched_float64_model()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("lm_head.") == (trained == "head"))
    _, era, reference, scored = one_pass_against_reference(model)
    weights = (
        torch.randn(scored.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * scored
    )
    assert_gradients_close(model, era, model, reference, weights, "float64")


@pytest.mark.parametrize("nothing_rescalable", ["no-factor", "no-row"])
def test_without_rescalable_tokens_trls_own_function_scores(nothing_rescalable, monkeypatch):
    model = patched_float64_model()
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size)

    def fail(*args):
        raise AssertionError("ERA's function ran although no token may be rescaled")

    monkeypatch.setattr(logprobs._TwoTemperatureLogProbs, "apply", fail)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    factors, rescalable = (), torch.ones(6, dtype=torch.bool)
    if nothing_rescalable == "no-row":
        factors, rescalable = None, torch.zeros(6, dtype=torch.bool)
    with head.one_pass(labels, rescalable, factors) as scoring:
        trl_logps, hidden = fused_pass(model, input_ids, attention_mask, labels)
    era = head(hidden, labels, torch.ones(6), trl_logps, scoring)
    assert era is trl_logps
    with pytest.raises(ValueError, match="one_pass scored only"):
        head(hidden, labels, torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]), trl_logps, scoring)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts the host syncs of a CUDA device")
def test_the_heads_factor_checks_cost_one_host_sync():
    """Both factor checks of a call in one host sync: no factor lists copied to the device, one read of the flags."""
    model = patched_float64_model("cuda")
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size, "cuda")
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    factors = torch.ones(6, device="cuda")
    with head.one_pass(labels, torch.ones(6, dtype=torch.bool, device="cuda"), ()) as scoring:
        trl_logps, hidden = fused_pass(model, input_ids, attention_mask, labels)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            era = head(hidden, labels, factors, trl_logps, scoring)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert era is trl_logps
    assert sum("synchronizing" in str(warning.message) for warning in caught) == 1


def test_one_factor_scoring_matches_the_reference_and_refuses_the_other_factor():
    model = patched_float64_model()
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    sharpen, flatten = response_factor_values(2.0)
    factors = torch.tensor([1.0, flatten, flatten, 1.0, 1.0, flatten])
    with head.one_pass(labels, factors != 1.0, (flatten,)) as scoring:
        trl_logps, hidden = fused_pass(model, input_ids, attention_mask, labels)
    era = head(hidden, labels, factors, trl_logps, scoring)
    reference = reference_logprobs(model, input_ids, attention_mask, factors)
    scored = (labels[:, -NUM_SCORED:] != -100).double()
    torch.testing.assert_close(era * scored, reference * scored, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one_pass scored only"):
        head(hidden, labels, torch.tensor([1.0, sharpen, 1.0, 1.0, 1.0, 1.0]), trl_logps, scoring)
    with pytest.raises(ValueError, match="factors must be among"):
        head.one_pass(labels, factors != 1.0, (3.0,))


def test_rejects_factors_other_than_one_and_k():
    model = patched_float64_model()
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    with pytest.raises(ValueError, match="factors must be 1 or one of"):
        one_pass_era_logprobs(
            model,
            head,
            input_ids,
            attention_mask,
            labels,
            torch.full((6,), 4.0),
            torch.ones(6, dtype=torch.bool),
        )
    trl_logps, hidden = fused_pass(model, input_ids, attention_mask, labels)
    with pytest.raises(ValueError, match="inside one_pass"):
        head(hidden, labels, torch.ones(6), trl_logps)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("topk", [1, 150, VOCAB_SIZE])
def test_topk_matches_full_logits_reference_in_float64(topk, device):
    model = patched_float64_model(device)
    input_ids, attention_mask, labels = make_batch(model.config.vocab_size, device)
    factors = torch.tensor([1.0, 2.0, 0.5, 1.0, 2.0, 0.5], device=device)
    trl_logps, hidden = fused_pass(model, input_ids, attention_mask, labels)
    era = ScaledLogProbHead(model, TEMPERATURE, k=2.0, topk=topk)(hidden, labels, factors, trl_logps)
    reference = reference_logprobs(model, input_ids, attention_mask, factors, topk=topk)
    scored = (labels[:, -NUM_SCORED:] != -100).double()

    # The reference computes in float32 (`era_core` casts the logits), this path in float64.
    torch.testing.assert_close(era * scored, reference * scored, rtol=1e-6, atol=1e-6)
    outside = (reference == OUTSIDE_TOPK_LOGPROB) & scored.bool()
    if topk == VOCAB_SIZE:
        assert not outside.any()
    if topk == 150:
        assert outside.any() and (~outside & scored.bool()).any()
    weights = torch.randn(scored.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    weights = weights.to(device) * scored
    for got, expected in zip(
        gradients(model, era, weights), gradients(model, reference, weights), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_topk_search_across_vocabulary_and_token_tiles_equals_one_tile(monkeypatch):
    model = patched_float64_model()
    hidden = torch.randn(
        11, model.config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    tokens = torch.randint(0, model.config.vocab_size, (11,), generator=torch.Generator().manual_seed(4))
    scale = torch.full((11,), 1.5)
    lm_head = model.get_output_embeddings()
    one_tile = logprobs.topk_token_logprobs(hidden, lm_head, tokens, scale, 20)
    monkeypatch.setattr(logprobs, "_VOCAB_CHUNK_SIZE", 7)
    monkeypatch.setattr(logprobs, "_TOKEN_CHUNK_SIZE", 4)
    monkeypatch.setattr(logprobs, "_GATHER_CHUNK_SIZE", 3)
    assert torch.equal(logprobs.topk_token_logprobs(hidden, lm_head, tokens, scale, 20), one_tile)


def test_topk_rejects_k_above_vocabulary_and_heads_with_logit_transforms():
    model = patched_float64_model()
    hidden = torch.randn(2, model.config.hidden_size, dtype=torch.float64)
    with pytest.raises(ValueError, match=f"1 <= k <= vocabulary size {VOCAB_SIZE}"):
        logprobs.topk_token_logprobs(
            hidden,
            model.get_output_embeddings(),
            torch.zeros(2, dtype=torch.long),
            torch.ones(2),
            VOCAB_SIZE + 1,
        )
    model.config.final_logit_softcapping = 30.0
    message = (
        "top-k ERA log-probs support LM heads without logit transforms; Qwen2ForCausalLM sets "
        "['final_logit_softcapping']. Use topk=None (era_topk_logits=None) with this model."
    )
    with pytest.raises(NotImplementedError, match=f"^{re.escape(message)}$"):
        ScaledLogProbHead(model, TEMPERATURE, k=2.0, topk=20)


def _gathered_inputs(dtype: torch.dtype, with_bias: bool) -> tuple[torch.Tensor, ...]:
    """7 tokens, a vocabulary of 11, hidden size 4 and 3 gathered columns per token (one row repeats one)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 4, generator=generator, dtype=torch.float64).to(dtype)
    weight = torch.randn(11, 4, generator=generator, dtype=torch.float64).to(dtype)
    bias = torch.randn(11, generator=generator, dtype=torch.float64).to(dtype) if with_bias else None
    index = torch.randint(0, 11, (7, 3), generator=generator)
    index[0] = torch.tensor([2, 2, 5])  # a column gathered twice: its gradients add up
    return hidden, weight, bias, index


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("trained", ["all", "hidden", "head"])
def test_gathered_logits_and_gradients_match_autograd_over_several_chunks(with_bias, trained, monkeypatch):
    """Only the few gathered logits are recomputed; their hand-written backward equals autograd's, in float64,
    over chunks of 3 tokens (the last one partial), with and without a bias, for whichever inputs are trained."""
    monkeypatch.setattr(logprobs, "_GATHER_CHUNK_SIZE", 3)
    hidden, weight, bias, index = _gathered_inputs(torch.float64, with_bias)
    hidden.requires_grad_(trained in ("all", "hidden"))
    for parameter in (weight, bias):
        if parameter is not None:
            parameter.requires_grad_(trained in ("all", "head"))
    trainable = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    out = logprobs._GatheredLogits.apply(hidden, weight, bias, index)
    reference = torch.einsum("nh,njh->nj", hidden, weight[index]) + (0.0 if bias is None else bias[index])
    torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad((out * weights).sum(), trainable)
    expected = torch.autograd.grad((reference * weights).sum(), trainable)
    for got_grad, expected_grad in zip(got, expected, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-12, atol=1e-12)


def _float64_gathered_gradients(inputs, index, weights):
    """Gradients of ``sum(weights * gathered logits)`` for (hidden, weight, bias), by autograd in float64."""
    double = [t.detach().double().requires_grad_(True) for t in inputs]
    reference = torch.einsum("nh,njh->nj", double[0], double[1][index]) + double[2][index]
    return torch.autograd.grad((reference * weights.double()).sum(), double)


def test_gathered_logits_backward_is_float32_under_autocast():
    """Under bfloat16 autocast the gathered logits and their gradients stay float32 (like TRL's kernel)."""
    hidden, weight, bias, index = _gathered_inputs(torch.float32, True)
    inputs = [t.requires_grad_(True) for t in (hidden, weight, bias)]
    weights = torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logprobs._GatheredLogits.apply(hidden, weight, bias, index)
        got = torch.autograd.grad((out * weights).sum(), inputs)
    assert out.dtype == torch.float32
    double = [t.detach().double() for t in inputs]
    expected_out = torch.einsum("nh,njh->nj", double[0], double[1][index]) + double[2][index]
    torch.testing.assert_close(out.double(), expected_out, rtol=1e-5, atol=1e-5)
    expected = _float64_gathered_gradients(inputs, index, weights)
    for got_grad, expected_grad in zip(got, expected, strict=True):
        assert got_grad.dtype == torch.float32
        torch.testing.assert_close(got_grad.double(), expected_grad, rtol=1e-5, atol=1e-5)


def test_gathered_logits_of_a_bfloat16_head_are_float32_with_gradients_in_its_dtype():
    hidden, weight, bias, index = _gathered_inputs(torch.bfloat16, True)
    inputs = [t.requires_grad_(True) for t in (hidden, weight, bias)]
    out = logprobs._GatheredLogits.apply(hidden, weight, bias, index)
    assert out.dtype == torch.float32
    weights = torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((out * weights).sum(), inputs)
    expected = _float64_gathered_gradients(inputs, index, weights)
    for got_grad, expected_grad in zip(got, expected, strict=True):
        assert got_grad.dtype == torch.bfloat16
        torch.testing.assert_close(got_grad.double(), expected_grad, rtol=2e-2, atol=2e-2)


def test_rescaled_rows_are_those_off_factor_one_and_every_row_in_topk_mode():
    """The trainer stores and reuses the log-probs of exactly these rows (``rescaled_rows``)."""
    model = build_model()
    factors = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    full = ScaledLogProbHead(model, TEMPERATURE, k=2.0).rescaled_rows(factors)
    assert full.dtype == torch.bool and full.tolist() == [False, True, True, False]
    topk = ScaledLogProbHead(model, TEMPERATURE, k=2.0, topk=20).rescaled_rows(factors)
    assert topk.dtype == torch.bool and topk.tolist() == [True, True, True, True]


def test_gathered_logits_hold_one_chunk_of_tokens_at_a_time(monkeypatch):
    """Forward and backward gather the ``(J, H)`` head rows of at most ``_GATHER_CHUNK_SIZE`` tokens at once, and
    each token once (the memory bound of the top-k path)."""
    monkeypatch.setattr(logprobs, "_GATHER_CHUNK_SIZE", 3)
    hidden, weight, bias, index = _gathered_inputs(torch.float64, True)
    hidden.requires_grad_(True)
    einsum, rows = torch.einsum, []

    def recording_einsum(equation, *operands):
        rows.append(operands[1].shape[0])
        return einsum(equation, *operands)

    monkeypatch.setattr(torch, "einsum", recording_einsum)
    out = logprobs._GatheredLogits.apply(hidden, weight, bias, index)
    assert rows == [3, 3, 1]
    rows.clear()
    out.sum().backward()
    assert rows == [3, 3, 1]


@pytest.fixture
def one_process_mesh():
    """A one-process gloo group and its CPU device mesh, to shard an LM head as FSDP2 does (DTensor weights)."""
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("sharded", [False, True], ids=["plain", "dtensor"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_topk_of_a_biased_or_sharded_head_matches_the_full_logits_reference(with_bias, sharded, request):
    """The head's bias takes part in the top-k search and in the recomputed logits; an FSDP2-sharded head (DTensor
    weight and bias) gives the same log-probs and gradients."""
    generator = torch.Generator().manual_seed(7)
    reference_head = nn.Linear(8, 40, bias=with_bias).double()
    if with_bias:
        with torch.no_grad():  # a bias that outweighs the projection, so it reorders every token's top logits
            reference_head.bias.copy_(3 * torch.randn(40, generator=generator, dtype=torch.float64))
    hidden = torch.randn(9, 8, generator=generator, dtype=torch.float64)
    scale = torch.linspace(0.5, 2.0, 9)
    logits = reference_head(hidden) * scale.double()[:, None]
    tokens = torch.randint(0, 40, (9,), generator=generator)
    tokens[::2] = logits[::2].topk(5, dim=-1).indices[:, 2]  # inside the top 5 on even rows
    reference = scaled_token_logprobs(logits[None], tokens[None], torch.ones(1), topk=5)[0]
    assert (reference == OUTSIDE_TOPK_LOGPROB).any() and (reference != OUTSIDE_TOPK_LOGPROB).any()
    if with_bias:
        projection_top = (hidden @ reference_head.weight.t()).topk(5, dim=-1).indices.sort().values
        assert not torch.equal(projection_top, logits.topk(5, dim=-1).indices.sort().values)

    head = copy.deepcopy(reference_head)
    if sharded:
        mesh = request.getfixturevalue("one_process_mesh")
        for name, parameter in list(head.named_parameters()):
            setattr(head, name, nn.Parameter(distribute_tensor(parameter.detach(), mesh, [Shard(0)])))
    hidden_got, hidden_ref = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    got = logprobs.topk_token_logprobs(hidden_got, head, tokens, scale, 5)
    torch.testing.assert_close(got, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn(9, generator=generator, dtype=torch.float64)
    (got * weights).sum().backward()
    logits = reference_head(hidden_ref) * scale.double()[:, None]
    reference = scaled_token_logprobs(logits[None], tokens[None], torch.ones(1), topk=5)[0]
    (reference * weights).sum().backward()
    torch.testing.assert_close(hidden_got.grad, hidden_ref.grad, rtol=1e-10, atol=1e-12)
    for name, expected in reference_head.named_parameters():
        grad = getattr(head, name).grad
        grad = grad.full_tensor() if sharded else grad
        torch.testing.assert_close(grad, expected.grad, rtol=1e-10, atol=1e-12)


def test_topk_log_probs_follow_the_hidden_states_dtype_not_the_scales():
    """float32 hidden states give float32 log-probs, also for float64 scales (float64 only for float64 inputs)."""
    head = nn.Linear(8, 40)
    hidden = torch.randn(9, 8, generator=torch.Generator().manual_seed(8))
    tokens = torch.arange(9)
    got = logprobs.topk_token_logprobs(hidden, head, tokens, torch.full((9,), 1.5, dtype=torch.float64), 5)
    assert got.dtype == torch.float32
    assert logprobs.topk_token_logprobs(hidden.double(), head.double(), tokens, torch.ones(9), 5).dtype == (
        torch.float64
    )


def test_without_top_k_a_head_call_needs_the_one_pass_scoring():
    model = patched_float64_model()
    input_ids, attention_mask, labels = make_batch(VOCAB_SIZE)
    trl_logps, hidden = fused_pass(model, input_ids, attention_mask, labels)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    message = "^without top-k, ERA log-probs come from a forward run inside one_pass\\(\\.\\.\\.\\)$"
    with pytest.raises(ValueError, match=message):
        head(hidden, labels, torch.ones(6), trl_logps)


def test_row_blocks_cover_the_token_range_with_the_runs_inside_it():
    """Rows between the runs in blocks of at most `block` rows (label 0), each run inside the range as one block with
    its label, no empty block (nor one for the runs of other token chunks)."""
    assert logprobs._row_blocks(0, 8, [(2, 4, 1), (6, 8, 2)], 3) == [
        (0, 2, 0),
        (2, 4, 1),
        (4, 6, 0),
        (6, 8, 2),
    ]
    assert logprobs._row_blocks(8, 16, [(2, 4, 1), (9, 10, 2), (16, 18, 1)], 3) == [
        (8, 9, 0),
        (9, 10, 2),
        (10, 13, 0),
        (13, 16, 0),
    ]


def test_is_top1_as_trls_for_tied_logits_and_targets_above_the_earlier_logits_only(monkeypatch):
    """TRL's `is_top1`: a target tied with an earlier logit for the largest is not top 1 (ties go to the first
    index), and a target larger than every logit before it, but not the largest, is not either."""
    many_tiles(monkeypatch)
    model = build_model().double()
    first, second = 5, 200  # in different vocabulary tiles
    biased = nn.Linear(model.config.hidden_size, VOCAB_SIZE, bias=True).double()
    with torch.no_grad():
        biased.weight.copy_(model.lm_head.weight)
        biased.weight[second] = biased.weight[first]
        biased.bias.zero_()
        biased.bias[[first, second]] = 50.0  # the two tied logits are the largest everywhere
    model.lm_head = biased
    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs", "is_top1"))
    input_ids, attention_mask, labels = make_batch(VOCAB_SIZE)
    input_ids[:, -NUM_SCORED:] = torch.tensor([second, second, first, first, 1, 1])[:, None]
    labels = torch.where(labels == -100, labels, input_ids)
    scored = labels[:, -NUM_SCORED:] != -100
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -NUM_SCORED - 1 : -1]
        plain = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
        with head.one_pass(labels, torch.ones(6, dtype=torch.bool)) as scoring:
            ours = model(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True
            )
    assert scoring.scaled_log_probs() is not None
    top1 = plain.is_top1[:, -NUM_SCORED:]
    assert not top1[:2][scored[:2]].any() and top1[2:4][scored[2:4]].all() and not top1[4:][scored[4:]].any()
    assert (logits[4:, :, 1] > logits[4:, :, 0])[scored[4:]].any()  # eos above the one logit before it
    assert torch.equal(ours.is_top1, plain.is_top1)


def test_one_pass_gradients_when_trl_computes_no_entropy(monkeypatch):
    """TRL's fused head asked for the log-probs only: the backward folds without the entropy output."""
    many_tiles(monkeypatch)
    model = build_model().double()
    add_fused_lm_head(model, temperature=TEMPERATURE, outputs=("log_probs",))
    _, era, reference, scored = one_pass_against_reference(model)
    torch.testing.assert_close(era * scored, reference * scored, **TOLERANCES["float64"])
    weights = (
        torch.randn(scored.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * scored
    )
    assert_gradients_close(model, era, model, reference, weights, "float64")


def test_row_runs_are_cut_at_token_chunks_and_into_row_blocks():
    """The runs of `True` rows, each cut where a token chunk ends and into pieces of at most `max_rows` rows."""
    mask = torch.tensor([0, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    assert logprobs._row_runs(mask, token_chunk=4, max_rows=2) == [
        (1, 3, 1),
        (3, 4, 1),
        (4, 6, 1),
        (7, 8, 1),
        (8, 9, 1),
        (11, 12, 1),
    ]
    assert logprobs._row_runs(mask, token_chunk=4, max_rows=4) == [
        (1, 4, 1),
        (4, 6, 1),
        (7, 8, 1),
        (8, 9, 1),
        (11, 12, 1),
    ]
    assert logprobs._row_runs(torch.zeros(5, dtype=torch.bool), token_chunk=4, max_rows=2) == []


def test_row_runs_of_labels_end_where_the_label_changes():
    """Adjacent rows of different nonzero labels (factors) are separate runs; label 0 rows are in none."""
    labels = torch.tensor([2, 2, 1, 1, 1, 0, 2, 1])
    assert logprobs._row_runs(labels, token_chunk=8, max_rows=2) == [
        (0, 2, 2),
        (2, 4, 1),
        (4, 5, 1),
        (6, 7, 2),
        (7, 8, 1),
    ]


def test_a_one_pass_for_other_labels_than_the_forwards_is_refused():
    model = patched_float64_model()
    input_ids, attention_mask, labels = make_batch(VOCAB_SIZE)
    head = ScaledLogProbHead(model, TEMPERATURE, k=2.0)
    message = "^TRL's fused LM head scored an unexpected set of positions$"
    with (
        pytest.raises(RuntimeError, match=message),
        head.one_pass(labels[:, 1:], torch.ones(6, dtype=torch.bool)),
    ):
        fused_pass(model, input_ids, attention_mask, labels)


def test_unscored_positions_of_rescaled_rows_read_zero_as_trls():
    """Padding and prompt positions carry log-prob 0 in TRL's output; a rescaled row's do too."""
    _, era, _, scored = one_pass_against_reference(patched_float64_model())
    unscored = scored == 0
    assert unscored[FACTORS != 1.0].any() and (era[unscored] == 0).all()
