"""ERAGRPOTrainer: training runs, the right rows are rescaled, TRL's losses stay TRL's, PEFT works."""

from __future__ import annotations

import math
import re

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from era_core import response_logit_factors, scaled_token_logprobs, top_entropy_mean
from tests.trl.conftest import VOCAB_SIZE, build_model, build_tokenizer, count_reward
from trl_era import ERAGRPOConfig, ERAGRPOTrainer, logprobs

ERA_METRICS = (
    "era/top_entropy_mean",
    "era/frac_below_lb",
    "era/frac_above_ub",
    "era/frac_sharpened",
    "era/frac_flattened",
)
#: Bounds that contain every response's entropy, so ERA rescales nothing.
NO_RESCALING = dict(era_lb=0.0, era_ub=100.0)


def make_trainer(config_kwargs, prompts, era=True, model=None, **overrides):
    config_class, trainer_class = (ERAGRPOConfig, ERAGRPOTrainer) if era else (GRPOConfig, GRPOTrainer)
    args = config_class(**{**config_kwargs, **overrides})
    trainer = trainer_class(
        model=build_model() if model is None else model,
        reward_funcs=count_reward,
        args=args,
        train_dataset=prompts,
        processing_class=build_tokenizer(),
    )
    trainer.current_gradient_accumulation_steps = 1  # set by `train()`; the loss reads it
    return trainer


def fixed_batch(vocab_size: int) -> dict[str, torch.Tensor]:
    """A generated batch as `_generate_and_score_completions` returns it: 8 responses in 2 groups."""
    generator = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, vocab_size, (8, 4), generator=generator)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[2:4, 0] = 0
    completion_ids = torch.randint(3, vocab_size, (8, 6), generator=generator)
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, -3:] = 0
    completion_mask[6, -1:] = 0
    advantages = torch.tensor([1.2, 0.9, 0.6, 0.3, -0.4, -1.1, 1.5, 0.0])
    return dict(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        advantages=advantages,
        num_items_in_batch=completion_mask.sum(),
    )


def loss_log_probs(trainer, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The log-probs and entropies that the loss reads, and the inputs the rest of the loss then reads."""
    trainer._era_loss_inputs = dict(batch)
    try:
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, batch["completion_ids"].shape[1], compute_entropy=True
        )
        return logps, entropies, trainer._era_loss_inputs
    finally:
        trainer._era_loss_inputs = None


def plain_log_probs(trainer, batch) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    logps, entropies, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, input_ids, attention_mask, batch["completion_ids"].shape[1], compute_entropy=True
    )
    return logps, entropies


def full_logits_reference(model, batch, factors, temperature) -> torch.Tensor:
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    num_scored = batch["completion_ids"].shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -num_scored - 1 : -1]
    return scaled_token_logprobs(logits.double() / temperature, batch["completion_ids"], factors)


def bounds_splitting_positive_rows(h_resp: torch.Tensor, advantages: torch.Tensor) -> tuple[float, float]:
    """`era_lb` above the lowest and `era_ub` below the highest positive-advantage response entropy."""
    positive = h_resp.detach()[advantages > 0].sort().values
    return float(positive[:2].mean()), float(positive[-2:].mean())


def test_training_runs_and_logs_era_metrics(config_kwargs, prompts):
    trainer = make_trainer(config_kwargs, prompts, era_lb=0.5, era_ub=3.0)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert set(ERA_METRICS) <= set(entry)
        # A random model over 294 tokens has entropy near ln(294) = 5.68 > era_ub: every eligible response flattens.
        assert entry["era/frac_above_ub"] == 1.0 and entry["era/frac_below_lb"] == 0.0
        assert entry["era/frac_sharpened"] == 0.0 and 0.0 < entry["era/frac_flattened"] < 1.0
        assert 3.0 < entry["era/top_entropy_mean"] < math.log(VOCAB_SIZE)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("bounds", "scored_factors"),
    [(NO_RESCALING, None), (dict(era_lb=0.0, era_ub=1.0), (0.5,)), (dict(era_lb=1.0, era_ub=100.0), (2.0,))],
)
def test_only_the_factors_the_bounds_can_give_are_scored(
    config_kwargs, prompts, monkeypatch, bounds, scored_factors
):
    """Entropies lie in [0, log V] (log V = 5.7 here): `era_lb = 0` never sharpens, `era_ub >= log V` never
    flattens; with neither, TRL's own function scores the loss's forward."""
    trainer = make_trainer(config_kwargs, prompts, **bounds)
    calls = []
    original = logprobs._TwoTemperatureLogProbs.apply

    def spy(*args):
        calls.append(args[5])
        return original(*args)

    monkeypatch.setattr(logprobs._TwoTemperatureLogProbs, "apply", spy)
    loss_log_probs(trainer, fixed_batch(trainer.model.config.vocab_size))
    assert calls == ([] if scored_factors is None else [scored_factors])


def test_rescales_exactly_the_eligible_rows_and_matches_full_logits_reference(config_kwargs, prompts):
    trainer = make_trainer(config_kwargs, prompts, model=build_model().double(), temperature=0.8)
    batch = fixed_batch(trainer.model.config.vocab_size)
    trl_logps, trl_entropies = plain_log_probs(trainer, batch)
    mask = batch["completion_mask"]
    h_resp = top_entropy_mean(trl_entropies, mask)
    trainer.args.era_lb, trainer.args.era_ub = bounds_splitting_positive_rows(h_resp, batch["advantages"])

    era_logps, era_entropies, _ = loss_log_probs(trainer, batch)
    factors = response_logit_factors(
        trl_entropies, mask, batch["advantages"], trainer.args.era_lb, trainer.args.era_ub, k=2.0
    )
    assert (factors == 2.0).sum() == 1 and (factors == 0.5).sum() == 1
    # TRL's entropies are kept, and every row that is not rescaled reads TRL's log-probs, bit for bit.
    assert torch.equal(era_entropies, trl_entropies)
    kept = factors == 1.0
    assert torch.equal(era_logps[kept], trl_logps[kept])
    changed = ~kept.unsqueeze(-1) & mask.bool()
    assert (era_logps[changed] != trl_logps[changed]).all()

    reference = full_logits_reference(trainer.model, batch, factors, temperature=0.8)
    torch.testing.assert_close(era_logps.double() * mask, reference * mask, rtol=1e-5, atol=1e-5)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    weights = batch["advantages"].double().unsqueeze(-1) * mask
    got = torch.autograd.grad((era_logps * weights).sum(), params)
    expected = torch.autograd.grad((reference * weights).sum(), params)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("era_k", "era_top_fraction"), [(3.0, 0.5), (1.5, 1.0)])
def test_non_default_k_and_top_fraction_match_the_float64_reference(
    config_kwargs, prompts, era_k, era_top_fraction
):
    """The user's ``era_k`` and ``era_top_fraction`` are the ones applied (not the defaults 2 and 0.2)."""
    trainer = make_trainer(
        config_kwargs,
        prompts,
        model=build_model().double(),
        era_k=era_k,
        era_top_fraction=era_top_fraction,
    )
    batch = fixed_batch(trainer.model.config.vocab_size)
    mask, advantages = batch["completion_mask"], batch["advantages"]
    with torch.no_grad():
        _, trl_entropies = plain_log_probs(trainer, batch)
    h_user = top_entropy_mean(trl_entropies, mask, era_top_fraction)
    h_default = top_entropy_mean(trl_entropies, mask, 0.2)
    # Bounds at which the user's and the default top fraction pick different rows to rescale.
    positive = (advantages > 0).nonzero().flatten()
    row = positive[(h_default - h_user)[positive].argmax()]
    lb, ub = 0.0, float(h_user[row] + h_default[row]) / 2
    trainer.args.era_lb, trainer.args.era_ub = lb, ub
    factors = response_logit_factors(
        trl_entropies, mask, advantages, lb, ub, k=era_k, top_fraction=era_top_fraction
    )
    default_factors = response_logit_factors(trl_entropies, mask, advantages, lb, ub)
    assert (factors == 1 / era_k).any() and not torch.equal(factors != 1.0, default_factors != 1.0)

    era_logps, _, _ = loss_log_probs(trainer, batch)
    reference = full_logits_reference(trainer.model, batch, factors, temperature=trainer.args.temperature)
    torch.testing.assert_close(era_logps.double() * mask, reference * mask, rtol=1e-5, atol=1e-5)


def test_threshold_limits_rescaling_to_advantages_above_it(config_kwargs, prompts, monkeypatch):
    trainer = make_trainer(config_kwargs, prompts, era_lb=0.5, era_ub=3.0, era_adv_threshold=1.0)
    batch = fixed_batch(trainer.model.config.vocab_size)
    trl_logps, _ = plain_log_probs(trainer, batch)
    one_pass, scored_rows = logprobs.ScaledLogProbHead.one_pass, []

    def recording_one_pass(self, labels, rescalable, *args):
        scored_rows.append(rescalable.tolist())
        return one_pass(self, labels, rescalable, *args)

    monkeypatch.setattr(logprobs.ScaledLogProbHead, "one_pass", recording_one_pass)
    era_logps, _, _ = loss_log_probs(trainer, batch)
    rescaled = (era_logps != trl_logps).any(dim=-1)
    assert rescaled.tolist() == (batch["advantages"] > 1.0).tolist()
    # Only those rows are scored at the ERA factors too (the others could only ever get factor 1).
    assert scored_rows == [(batch["advantages"] > 1.0).tolist()]


@pytest.mark.parametrize(
    "loss",
    [
        dict(loss_type="grpo"),
        dict(loss_type="dapo", epsilon_high=0.28),
        dict(loss_type="dr_grpo"),
        dict(loss_type="bnpo"),
        dict(loss_type="cispo", epsilon_high=5.0),
        dict(loss_type="dapo", importance_sampling_level="sequence"),
        dict(loss_type="grpo", top_entropy_quantile=0.5, entropy_coef=0.01),
    ],
    ids=["grpo", "dapo-clip-higher", "dr_grpo", "bnpo", "cispo", "gspo", "entropy-mask-and-bonus"],
)
def test_trl_losses_on_top_of_era(config_kwargs, prompts, loss):
    batch = fixed_batch(build_model().config.vocab_size)
    results = {}
    for name, era, bounds in [
        ("trl", False, {}),
        ("era-idle", True, NO_RESCALING),
        ("era", True, {"era_ub": 3.0}),
    ]:
        trainer = make_trainer(config_kwargs, prompts, era=era, **loss, **bounds)
        value = trainer._compute_loss(trainer.model, batch)
        value.backward()
        results[name] = (
            value.detach(),
            [p.grad for p in trainer.model.parameters()],
            trainer._metrics["train"],
        )
    # With nothing to rescale, ERA's loss and gradients are TRL's, bit for bit.
    assert torch.equal(results["era-idle"][0], results["trl"][0])
    for a, b in zip(results["era-idle"][1], results["trl"][1], strict=True):
        assert torch.equal(a, b)
    value, grads, metrics = results["era"]
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads)
    assert any(not torch.equal(a, b) for a, b in zip(grads, results["trl"][1], strict=True))
    assert metrics["era/frac_flattened"] == [0.625]  # the five positive-advantage responses of eight
    if "clip_ratio/region_mean" in metrics:  # on-policy, the rescaled ratio is exactly 1: nothing is clipped
        assert metrics["clip_ratio/region_mean"] == [0.0]


@pytest.mark.parametrize("adv_scale", [False, True])
def test_advantage_scaling_divides_by_the_factor(config_kwargs, prompts, adv_scale):
    trainer = make_trainer(config_kwargs, prompts, era_ub=3.0, era_adv_scale=adv_scale, loss_type="dapo")
    batch = fixed_batch(trainer.model.config.vocab_size)
    _, _, loss_inputs = loss_log_probs(trainer, batch)
    factors = torch.where(batch["advantages"] > 0, 0.5, 1.0)
    expected = batch["advantages"] / factors if adv_scale else batch["advantages"]
    torch.testing.assert_close(loss_inputs["advantages"], expected)
    # On-policy the ratio is 1, so the DAPO loss is minus the token-weighted mean advantage it read.
    mask = batch["completion_mask"]
    value = trainer._compute_loss(trainer.model, batch)
    torch.testing.assert_close(value, -(expected.unsqueeze(-1) * mask).sum() / mask.sum())


def test_stored_old_log_probs_of_rescaled_rows_are_the_rescaled_ones(config_kwargs, prompts):
    # With vLLM, TRL stores the plain policy's "old" log-probs; ERA's old policy is the rescaled one (ratio 1).
    trainer = make_trainer(config_kwargs, prompts, era_ub=3.0)
    batch = fixed_batch(trainer.model.config.vocab_size)
    with torch.no_grad():
        batch["old_per_token_logps"] = plain_log_probs(trainer, batch)[0]
    era_logps, _, loss_inputs = loss_log_probs(trainer, batch)
    torch.testing.assert_close(loss_inputs["old_per_token_logps"], era_logps.detach(), rtol=0, atol=0)
    trainer._compute_loss(trainer.model, batch)
    assert trainer._metrics["train"]["clip_ratio/region_mean"] == [0.0]


def test_topk_mode_trains(config_kwargs, prompts):
    trainer = make_trainer(config_kwargs, prompts, era_topk_logits=150, era_ub=3.0, max_steps=1)
    batch = fixed_batch(trainer.model.config.vocab_size)
    era_logps, _, _ = loss_log_probs(trainer, batch)
    scored = era_logps[batch["completion_mask"].bool()]
    assert (scored == -1e4).any() and (scored > -1e4).any() and (scored[scored > -1e4] <= 0).all()
    trainer.train()
    assert set(ERA_METRICS) <= set(trainer.state.log_history[0])


def test_lora_adapter_trains(config_kwargs, prompts):
    from peft import LoraConfig

    args = ERAGRPOConfig(**config_kwargs, era_ub=3.0)
    trainer = ERAGRPOTrainer(
        model=build_model(),
        reward_funcs=count_reward,
        args=args,
        train_dataset=prompts,
        processing_class=build_tokenizer(),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA's B starts at zero
    assert trainer.state.log_history[0]["era/frac_flattened"] > 0


def test_requires_an_era_config(config_kwargs, prompts):
    message = "args must be an ERAGRPOConfig (it holds the era_* options), got GRPOConfig"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        ERAGRPOTrainer(model=build_model(), reward_funcs=count_reward, args=GRPOConfig(**config_kwargs))


@pytest.mark.parametrize("output_router_logits", [True, False])
def test_moe_auxiliary_loss_and_model_inputs_are_trls(config_kwargs, prompts, output_router_logits):
    """TRL asks a MoE model for its router logits also when its config does not (``output_router_logits=False``);
    the loss's forward gets the same inputs from ERA as from TRL (labels ``-100`` outside the completions)."""
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    def moe_model():
        torch.manual_seed(0)
        config = Qwen2MoeConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=32,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            output_router_logits=output_router_logits,
            router_aux_loss_coef=0.01,
            pad_token_id=0,
            eos_token_id=1,
        )
        return Qwen2MoeForCausalLM(config)

    batch = fixed_batch(VOCAB_SIZE)
    losses, model_inputs = [], {False: [], True: []}
    for era in (False, True):
        trainer = make_trainer(
            config_kwargs, prompts, era=era, model=moe_model(), **NO_RESCALING if era else {}
        )
        assert trainer.aux_loss_enabled
        hook = trainer.model.register_forward_pre_hook(
            lambda module, args, kwargs, era=era: model_inputs[era].append(kwargs), with_kwargs=True
        )
        losses.append(trainer._compute_loss(trainer.model, batch))
        hook.remove()
        assert trainer._metrics["train"]["aux_loss"][0] > 0
    assert torch.equal(losses[0], losses[1])
    # ERA's loss runs as the wrapped model's forward (one call without inputs), which then calls the model itself.
    (trl_inputs,), (era_inputs,) = (
        [kwargs for kwargs in model_inputs[era] if kwargs] for era in (False, True)
    )
    assert trl_inputs.keys() == era_inputs.keys() >= {"labels", "output_router_logits"}
    for name, value in trl_inputs.items():
        assert (
            torch.equal(era_inputs[name], value) if torch.is_tensor(value) else era_inputs[name] == value
        ), name


def test_default_config_is_named_after_the_model(tmp_path, model_dir, prompts, monkeypatch):
    """Without ``args``, an ERAGRPOConfig with the ERA defaults, its output directory named after the model (its
    last path component), as GRPOTrainer does; for a model given as a path and as a loaded model."""
    from transformers import AutoModelForCausalLM

    from trl_era import era_grpo_trainer

    class CPUConfig(ERAGRPOConfig):
        """The default config, on the CPU (its default bf16 needs a GPU)."""

        def __init__(self, output_dir):
            super().__init__(output_dir, use_cpu=True, bf16=False, report_to="none")

    monkeypatch.setattr(era_grpo_trainer, "ERAGRPOConfig", CPUConfig)
    monkeypatch.chdir(tmp_path)
    expected = f"{model_dir.rstrip('/').split('/')[-1]}-ERA-GRPO"
    assert "/" in model_dir.rstrip("/") and not expected.startswith("-")
    for model in (model_dir, AutoModelForCausalLM.from_pretrained(model_dir)):
        trainer = ERAGRPOTrainer(model=model, reward_funcs=count_reward, train_dataset=prompts)
        assert type(trainer.args) is CPUConfig and trainer.args.output_dir == expected
        assert (trainer.args.era_lb, trainer.args.era_ub, trainer.args.era_k) == (0.45, 3.0, 2.0)


def test_a_generation_time_pass_after_the_loss_is_trls(config_kwargs, prompts, monkeypatch):
    """Log-prob passes outside the loss (the "old" and reference policies) get TRL's log-probs, also after a loss
    that raised."""
    batch = fixed_batch(VOCAB_SIZE)
    trl_trainer = make_trainer(config_kwargs, prompts, era=False)
    trainer = make_trainer(config_kwargs, prompts, era_ub=3.0)
    with torch.no_grad():
        expected, _ = plain_log_probs(trl_trainer, batch)
        trainer._compute_loss(trainer.model, batch)
        assert torch.equal(plain_log_probs(trainer, batch)[0], expected)

        def failing_loss(self, model, inputs):
            raise RuntimeError("loss failed")

        monkeypatch.setattr(GRPOTrainer, "_compute_loss", failing_loss)
        with pytest.raises(RuntimeError, match="loss failed"):
            trainer._compute_loss(trainer.model, batch)
        assert torch.equal(plain_log_probs(trainer, batch)[0], expected)


class HeadWithoutOutFeatures(torch.nn.Module):
    """An LM head that holds the weight of a linear layer but no ``out_features`` attribute."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight, self.bias)


@pytest.mark.parametrize("head", ["config-says-more", "no-out-features"])
def test_the_entropy_bound_is_the_lm_heads_vocabulary(config_kwargs, prompts, monkeypatch, head):
    """log V is taken over the LM head's outputs (294 here), not a larger ``config.vocab_size``; the config's count
    is read only for a head without ``out_features``. ``era_ub = 5.7`` lies between log 294 = 5.68 and log 320, so
    no response can be flattened: nothing is scored at the ERA factors."""
    model = build_model()
    if head == "config-says-more":
        model.config.vocab_size = 320
    else:
        model.lm_head = HeadWithoutOutFeatures(model.lm_head)
    trainer = make_trainer(config_kwargs, prompts, model=model, era_lb=0.0, era_ub=5.7)
    calls = []
    original = logprobs._TwoTemperatureLogProbs.apply
    monkeypatch.setattr(
        logprobs._TwoTemperatureLogProbs, "apply", lambda *args: calls.append(args[5]) or original(*args)
    )
    batch = fixed_batch(VOCAB_SIZE)
    trl_logps, _ = plain_log_probs(trainer, batch)
    era_logps, _, _ = loss_log_probs(trainer, batch)
    assert calls == [] and torch.equal(era_logps, trl_logps)


def test_entropies_rounded_past_log_v_are_not_flattened(config_kwargs, prompts):
    """A near-uniform policy's float32 entropies can round above log V; with ``era_ub = log V`` (which no entropy
    can exceed: nothing is scored at the flattening factor) they are clamped to log V, not flattened."""
    model = build_model()
    with torch.no_grad():
        model.lm_head.weight.mul_(1e-4)
    log_v = torch.tensor(math.log(VOCAB_SIZE), dtype=torch.float32)
    trainer = make_trainer(config_kwargs, prompts, model=model, era_lb=0.0, era_ub=float(log_v))
    batch = fixed_batch(VOCAB_SIZE)
    trl_logps, trl_entropies = plain_log_probs(trainer, batch)
    assert (top_entropy_mean(trl_entropies, batch["completion_mask"]) > log_v).any()
    era_logps, _, _ = loss_log_probs(trainer, batch)
    assert torch.equal(era_logps, trl_logps)
    assert trainer._metrics["train"]["era/frac_flattened"] == [0.0]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_era_metrics_count_the_non_empty_responses(config_kwargs, prompts, mode):
    """Entropies exactly at a bound count as inside it; empty responses count nowhere; the metrics go to the
    trainer's current mode."""
    trainer = make_trainer(config_kwargs, prompts, era_lb=0.5, era_ub=3.0)
    trainer.model.train(mode == "train")
    h_resp = torch.tensor([0.25, 0.5, 1.0, 3.0, 4.0, 0.0])
    factors = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.5, 1.0])
    non_empty = torch.tensor([True, True, True, True, True, False])
    trainer._log_era_metrics(h_resp, factors, non_empty)
    # One non-empty response: its entropy is the mean.
    trainer._log_era_metrics(torch.tensor([2.0, 0.0]), torch.ones(2), torch.tensor([True, False]))
    logged = {name: trainer._metrics[mode][name] for name in ERA_METRICS}
    assert logged == {
        "era/top_entropy_mean": pytest.approx([8.75 / 5, 2.0]),
        "era/frac_below_lb": pytest.approx([0.2, 0.0]),
        "era/frac_above_ub": pytest.approx([0.2, 0.0]),
        "era/frac_sharpened": pytest.approx([0.2, 0.0]),
        "era/frac_flattened": pytest.approx([0.2, 0.0]),
    }
    other = "eval" if mode == "train" else "train"
    assert not any(name in trainer._metrics[other] for name in ERA_METRICS)


def test_era_metrics_are_summed_over_processes(config_kwargs, prompts, monkeypatch):
    """Counted over every process's responses: with a second process that has none (accelerate's reduce sums the
    counts over processes, and its default "mean" divides them by the number of processes)."""
    trainer = make_trainer(config_kwargs, prompts)

    def two_processes(tensor, reduction="mean"):
        return tensor / 2 if reduction == "mean" else tensor  # the other process's counts are zeros

    monkeypatch.setattr(trainer.accelerator, "reduce", two_processes)
    trainer._log_era_metrics(torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([True]))
    assert trainer._metrics["train"]["era/top_entropy_mean"] == [2.0]
    assert trainer._metrics["train"]["era/frac_flattened"] == [1.0]
