"""[`ERAGRPOTrainer`]: TRL's `GRPOTrainer` with response-level ERA in the policy loss (spec section 3)."""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel, ProcessorMixin
from trl import GRPOTrainer
from trl.extras.profiling import profiling_decorator
from trl.models.utils import _ForwardRedirection
from trl.trainer.utils import get_config_model_id

from era_core import (
    attainable_logit_factors,
    logit_factors_from_response_entropy,
    rescalable_responses,
    scaled_advantages,
    top_entropy_mean,
)
from trl_era.era_grpo_config import ERAGRPOConfig
from trl_era.logprobs import ScaledLogProbHead, capture_last_hidden_state

_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def _refuse_processor(processing_class: object) -> None:
    if isinstance(processing_class, ProcessorMixin):
        raise NotImplementedError(
            "ERAGRPOTrainer supports text-only causal language models; vision-language models (a processor as "
            "processing_class) are not supported yet. Use GRPOTrainer for them."
        )


class ERAGRPOTrainer(GRPOTrainer):
    """
    [`~trl.GRPOTrainer`] with ERA (Entropy Regularizing Activation) applied where the policy loss reads the sampled
    tokens' log-probabilities.

    Sampling, rewards and advantages are GRPO's. In the loss, each response `r` gets a logit factor `c_r` from its
    entropy (the mean of its highest token entropies under the current policy, after temperature) and its advantage,
    and its tokens' log-probabilities are read from `log_softmax(c_r * logits / temperature)`; the "old"
    log-probabilities are the same rescaled ones, so on-policy the importance ratio stays 1. Responses below
    `era_lb` are sharpened and responses above `era_ub` flattened, which keeps the policy's entropy in range
    without an entropy bonus. TRL's loss types, clip-higher (`epsilon_high`), GSPO
    (`importance_sampling_level="sequence"`), `top_entropy_quantile` and the entropy bonus act on top, unchanged.

    The log-probabilities stay chunked as in TRL, in one pass over the vocabulary: TRL's fused LM head scores every
    response once (giving the entropies), and the same logit tiles give the responses that may be rescaled their
    log-probs at the ERA temperatures the bounds can call for, so rescaling costs no second LM-head pass; with bounds
    that no entropy in `[0, log V]` can cross (`era_lb=0`, `era_ub >= log V`), TRL's pass runs alone. The loss's
    forward runs inside the wrapped model's forward, so DDP, DeepSpeed ZeRO-3 and FSDP see their usual calls.

    Logged metrics (beside TRL's): `era/top_entropy_mean` (mean response entropy `H_r`), `era/frac_below_lb`,
    `era/frac_above_ub` (shares of responses outside the bounds), `era/frac_sharpened`, `era/frac_flattened`
    (shares of responses rescaled), over the non-empty responses of all processes.

    Example:

    ```python
    >>> from trl_era import ERAGRPOConfig, ERAGRPOTrainer
    >>> from trl.rewards import accuracy_reward
    >>> from datasets import load_dataset

    >>> dataset = load_dataset("trl-lib/DeepMath-103K", split="train")
    >>> args = ERAGRPOConfig(output_dir="Qwen2.5-0.5B-ERA", era_lb=0.45, era_ub=3.0, era_k=2.0)
    >>> trainer = ERAGRPOTrainer(
    ...     model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=accuracy_reward, args=args, train_dataset=dataset
    ... )
    >>> trainer.train()
    ```

    Args:
        model (`str` or [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            Causal language model to train, as for [`~trl.GRPOTrainer`]. Vision-language models are not supported.
        reward_funcs (`RewardFunc | list[RewardFunc]`, *optional*):
            Reward functions, as for [`~trl.GRPOTrainer`].
        args ([`ERAGRPOConfig`], *optional*):
            Configuration for this trainer. If `None`, a default [`ERAGRPOConfig`] is used.
        **kwargs:
            Every other keyword argument of [`~trl.GRPOTrainer`] (`train_dataset`, `eval_dataset`,
            `processing_class`, `peft_config`, `callbacks`, ...).
    """

    _tag_names = ["trl", "grpo", "era"]
    _name = "ERA-GRPO"

    def __init__(
        self,
        model: str | PreTrainedModel,
        reward_funcs=None,
        args: ERAGRPOConfig | None = None,
        **kwargs: Any,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = ERAGRPOConfig(f"{model_name.split('/')[-1]}-ERA-GRPO")
        if not isinstance(args, ERAGRPOConfig):
            raise TypeError(
                f"args must be an ERAGRPOConfig (it holds the era_* options), got {type(args).__name__}"
            )
        # A processor given by the caller is refused before GRPOTrainer builds anything; one that GRPOTrainer
        # loads for the model itself is only known after its __init__.
        _refuse_processor(kwargs.get("processing_class"))
        super().__init__(model, reward_funcs, args=args, **kwargs)
        _refuse_processor(self.processing_class)
        patched_model = self.model.get_base_model() if is_peft_model(self.model) else self.model
        self._era_head = ScaledLogProbHead(
            patched_model,
            temperature=self.temperature,
            k=args.era_k,
            topk=args.era_topk_logits,
        )
        # The number of tokens the entropies are computed over (the LM head's outputs), so log V bounds them.
        lm_head = patched_model.get_output_embeddings()
        self._era_vocab_size = getattr(lm_head, "out_features", None) or (
            patched_model.config.get_text_config().vocab_size
        )
        self._forward_redirection = _ForwardRedirection()
        # The inputs of the loss being computed: set by `_compute_loss`, read and updated by the log-prob pass.
        self._era_loss_inputs: dict[str, Any] | None = None

    def _compute_loss(self, model, inputs):
        # GRPOTrainer reads `advantages` and `old_per_token_logps` from `inputs` after its log-prob pass; that pass
        # (below) writes the ERA versions into this copy, so the rest of TRL's loss runs unchanged.
        self._era_loss_inputs = dict(inputs)
        try:
            return super()._compute_loss(model, self._era_loss_inputs)
        finally:
            self._era_loss_inputs = None

    @profiling_decorator
    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal_inputs,
    ):
        """TRL's log-probs, except inside the loss: there the ERA log-probs of the sampled tokens (spec 3.1-3.6)."""
        loss_inputs = self._era_loss_inputs
        if loss_inputs is None:  # generation-time passes ("old" or reference log-probs): the plain policy
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **multimodal_inputs,
            )
        passed = sorted(key for key in _MULTIMODAL_KEYS if multimodal_inputs.get(key) is not None)
        if passed:
            raise NotImplementedError(f"ERAGRPOTrainer supports text-only inputs, got {passed}")

        mask = loss_inputs["completion_mask"]
        if "tool_mask" in loss_inputs:
            mask = mask * loss_inputs["tool_mask"]
        advantages = loss_inputs["advantages"]
        unwrapped_model = self.accelerator.unwrap_model(model)
        batch_size = batch_size or input_ids.size(0)
        chunks = []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            # Runs inside the wrapper's forward, like TRL's `model(...)` call: DDP prepares its gradient reduction,
            # ZeRO-3 and FSDP keep the parameters gathered for the ERA scoring (the top-k pass).
            with self.accelerator.autocast():
                chunks.append(
                    self._forward_redirection(
                        model,
                        unwrapped_model,
                        self._era_forward,
                        unwrapped_model,
                        input_ids[rows],
                        attention_mask[rows],
                        logits_to_keep,
                        mask[rows],
                        advantages[rows],
                        compute_aux_loss,
                    )
                )
        era_logps, entropies, h_resp, factors = (torch.cat([c[i] for c in chunks]) for i in range(4))
        aux_loss = torch.stack([c[4] for c in chunks]).mean() if compute_aux_loss else None

        rescaled = self._era_head.rescaled_rows(factors)
        if loss_inputs.get("old_per_token_logps") is not None:
            # On-policy, the "old" policy of a rescaled response is the same rescaled policy (spec 3.4).
            old = loss_inputs["old_per_token_logps"]
            loss_inputs["old_per_token_logps"] = torch.where(rescaled.unsqueeze(-1), era_logps.detach(), old)
        if self.args.era_adv_scale:
            loss_inputs["advantages"] = scaled_advantages(advantages, factors)
        self._log_era_metrics(h_resp, factors, mask.bool().any(dim=-1))
        return era_logps, entropies if compute_entropy else None, aux_loss

    def _era_forward(
        self,
        unwrapped_model,
        input_ids,
        attention_mask,
        logits_to_keep,
        mask,
        advantages,
        compute_aux_loss,
    ):
        """One chunk of the loss's log-prob pass, run as the wrapped model's forward."""
        model_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if compute_aux_loss:
            model_inputs["output_router_logits"] = True
        # Only the completion tokens are scored, as in TRL.
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, :-logits_to_keep] = -100
        patched_model = (
            unwrapped_model.get_base_model() if is_peft_model(unwrapped_model) else unwrapped_model
        )
        args = self.args
        non_empty = mask.bool().any(dim=-1)
        # The responses that may be rescaled are scored at both factors in the same pass over the vocabulary.
        rescalable = rescalable_responses(advantages, non_empty, args.era_adv_threshold)
        # Bounds that no entropy in [0, log V] can cross leave their factor out; with neither factor attainable (or
        # no positive advantage) TRL's pass runs alone.
        attainable = attainable_logit_factors(args.era_lb, args.era_ub, args.era_k, self._era_vocab_size)
        with (
            capture_last_hidden_state(patched_model) as captured,
            self._era_head.one_pass(labels, rescalable, attainable) as scoring,
        ):
            outputs = unwrapped_model(**model_inputs, labels=labels, fused_lm_head=True)
        logps = outputs.log_probs[:, -logits_to_keep:]
        entropies = outputs.entropy[:, -logits_to_keep:]
        detached_entropies = entropies.detach()
        h_resp = top_entropy_mean(detached_entropies, mask, args.era_top_fraction)
        factors = logit_factors_from_response_entropy(
            h_resp,
            non_empty,
            advantages,
            lb=args.era_lb,
            ub=args.era_ub,
            k=args.era_k,
            adv_threshold=args.era_adv_threshold,
            vocab_size=self._era_vocab_size,
        )
        era_logps = self._era_head(captured["last_hidden_state"], labels, factors, logps, scoring)
        return era_logps, entropies, h_resp, factors, outputs.aux_loss

    def _log_era_metrics(self, h_resp: torch.Tensor, factors: torch.Tensor, non_empty: torch.Tensor) -> None:
        """Append the ERA metrics, over the non-empty responses of every process, to the trainer's metrics."""
        mode = "train" if self.model.training else "eval"
        args = self.args
        counts = torch.stack(
            [
                non_empty.sum(),
                (h_resp * non_empty).sum(),
                ((h_resp < args.era_lb) & non_empty).sum(),
                ((h_resp > args.era_ub) & non_empty).sum(),
                (factors > 1.0).sum(),
                (factors < 1.0).sum(),
            ]
        ).float()
        counts = self.accelerator.reduce(counts, reduction="sum")
        responses = counts[0].clamp(min=1.0)
        for name, value in zip(
            ("top_entropy_mean", "frac_below_lb", "frac_above_ub", "frac_sharpened", "frac_flattened"),
            (counts[1:] / responses).tolist(),
            strict=True,
        ):
            self._metrics[mode][f"era/{name}"].append(value)
