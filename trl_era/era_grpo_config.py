"""Configuration of the [`ERAGRPOTrainer`]: TRL's `GRPOConfig` plus the `era_*` options (spec section 3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from era_core import check_adv_threshold, check_response_era_args


@dataclass
class ERAGRPOConfig(GRPOConfig):
    r"""
    Configuration class for the [`ERAGRPOTrainer`]: every [`~trl.GRPOConfig`] option, plus the response-level ERA
    (Entropy Regularizing Activation) options below.

    ERA leaves sampling untouched. In the loss, the sampled tokens' log-probabilities of a response `r` with
    advantage `A_r > 0`, `A_r >= era_adv_threshold` are read from `log_softmax(c_r * logits / temperature)`, where `c_r = era_k`
    when the response's entropy `H_r` (the mean of its `era_top_fraction` highest token entropies) is below `era_lb`,
    `c_r = 1 / era_k` when it is above `era_ub`, and `c_r = 1` otherwise. This pushes the policy's entropy into
    `[era_lb, era_ub]` without an entropy bonus.

    ERA assumes that the completions were sampled by the policy being updated (the "old" log-probabilities are the
    rescaled current ones, so the importance ratio is 1): configurations in which TRL reuses a generation batch
    across optimizer steps (`gradient_accumulation_steps` not a multiple of `steps_per_generation * num_iterations`)
    are rejected.

    Parameters:
        era_lb (`float`, *optional*, defaults to `0.45`):
            Lower entropy bound (nats). Positive-advantage responses whose entropy `H_r` is below it are sharpened
            (`c_r = era_k`), which raises the policy's entropy. Choose it below the model's initial entropy.
        era_ub (`float`, *optional*, defaults to `3.0`):
            Upper entropy bound (nats), above `era_lb`. Positive-advantage responses whose entropy is above it are
            flattened (`c_r = 1 / era_k`), which lowers the policy's entropy. Choose it above the model's initial
            entropy; without it the entropy can explode.
        era_k (`float`, *optional*, defaults to `2.0`):
            Logit factor of sharpened responses (its inverse for flattened ones). Must be greater than 1.
        era_top_fraction (`float`, *optional*, defaults to `0.2`):
            Share of a response's tokens, the highest-entropy ("forking") ones, whose mean entropy is `H_r`: the
            `max(1, floor(era_top_fraction * length))` largest token entropies. In `(0, 1]`.
        era_topk_logits (`int` or `None`, *optional*, defaults to `None`):
            If set, the log-probabilities in the loss are taken over the `era_topk_logits` largest logits only
            (renormalised among them; a sampled token outside them gets log-probability `-1e4`), for every response.
            The authors used `20` in their first training stage. `None` keeps the whole vocabulary.
        era_adv_scale (`bool`, *optional*, defaults to `False`):
            Whether to divide the advantage of a rescaled response by its factor (`A_r / era_k` when sharpened,
            `A_r * era_k` when flattened). The authors report that it does not change results.
        era_adv_threshold (`float`, *optional*, defaults to `0.0`):
            A response is rescaled only when its advantage is positive and at least this threshold (must be `>= 0`).
            `0.0` is the paper's rule `A_r > 0`; `1.0` is the authors' released code, `A_r >= 1` (it stored
            advantages in an integer tensor).
    """

    era_lb: float = field(
        default=0.45,
        metadata={
            "help": "Lower entropy bound (nats). Positive-advantage responses whose entropy is below it are "
            "sharpened (logits times `era_k`), which raises the policy's entropy."
        },
    )
    era_ub: float = field(
        default=3.0,
        metadata={
            "help": "Upper entropy bound (nats), above `era_lb`. Positive-advantage responses whose entropy is above "
            "it are flattened (logits divided by `era_k`), which lowers the policy's entropy."
        },
    )
    era_k: float = field(
        default=2.0,
        metadata={
            "help": "Logit factor of sharpened responses (its inverse for flattened ones). Must be > 1."
        },
    )
    era_top_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Share of a response's highest-entropy tokens whose mean entropy is the response's entropy. "
            "In (0, 1]."
        },
    )
    era_topk_logits: int | None = field(
        default=None,
        metadata={
            "help": "If set, take the loss's log-probabilities over this many largest logits only (a sampled token "
            "outside them gets -1e4). The authors used 20 in their first stage. `None` keeps the whole vocabulary."
        },
    )
    era_adv_scale: bool = field(
        default=False,
        metadata={
            "help": "Whether to divide a rescaled response's advantage by its factor (A / era_k when sharpened, "
            "A * era_k when flattened)."
        },
    )
    era_adv_threshold: float = field(
        default=0.0,
        metadata={
            "help": "A response is rescaled only when its advantage is positive and at least this threshold "
            "(>= 0). 0.0 is the paper's rule A > 0; 1.0 is the authors' released code, A >= 1."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_response_era_args(self.era_lb, self.era_ub, self.era_k, self.era_top_fraction)
        if self.era_topk_logits is not None and self.era_topk_logits < 1:
            raise ValueError(f"era_topk_logits must be None or an integer >= 1, got {self.era_topk_logits}")
        check_adv_threshold(self.era_adv_threshold, "era_adv_threshold")
        # The same test by which `GRPOTrainer` decides to compute "old" log-probs for importance sampling.
        generate_every = self.steps_per_generation * self.num_iterations
        if self.gradient_accumulation_steps % generate_every != 0:
            raise ValueError(
                "ERA needs on-policy training (every generation batch is used within the optimizer step that "
                f"follows it), but gradient_accumulation_steps={self.gradient_accumulation_steps} is not a multiple "
                f"of steps_per_generation * num_iterations = {self.steps_per_generation} * {self.num_iterations}. "
                "Use num_iterations=1 and steps_per_generation dividing gradient_accumulation_steps (the default "
                "steps_per_generation equals gradient_accumulation_steps)."
            )
