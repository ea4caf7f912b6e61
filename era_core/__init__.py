"""ERA (Entropy Regularizing Activation): the maths, in pure PyTorch.

Nothing here imports Stable-Baselines3, timm or TRL; the adapter packages build on it.
"""

from era_core.gaussian import (
    BatchGaussianERA,
    GaussianERA,
    gaussian_entropy,
    gaussian_era_log_std,
    max_feasible_target,
    resolve_target_entropy,
)
from era_core.llm import (
    OUTSIDE_TOPK_LOGPROB,
    attainable_logit_factors,
    categorical_entropy,
    check_adv_threshold,
    check_response_era_args,
    logit_factors_from_response_entropy,
    rescalable_responses,
    response_factor_values,
    response_logit_factors,
    scaled_advantages,
    scaled_token_logprobs,
    top_entropy_mean,
    topk_token_logprob,
)
from era_core.softmax import (
    SoftmaxERA,
    check_softmax_era_args,
    max_probability,
    smallest_entropy,
    softmax_era_feasible_range,
    softmax_era_logits,
)
from era_core.truncated_normal import TruncatedNormal, ndtri_exp

__all__ = [
    "OUTSIDE_TOPK_LOGPROB",
    "BatchGaussianERA",
    "GaussianERA",
    "SoftmaxERA",
    "TruncatedNormal",
    "attainable_logit_factors",
    "categorical_entropy",
    "check_adv_threshold",
    "check_response_era_args",
    "check_softmax_era_args",
    "gaussian_entropy",
    "gaussian_era_log_std",
    "logit_factors_from_response_entropy",
    "max_feasible_target",
    "max_probability",
    "ndtri_exp",
    "rescalable_responses",
    "resolve_target_entropy",
    "response_factor_values",
    "response_logit_factors",
    "scaled_advantages",
    "scaled_token_logprobs",
    "smallest_entropy",
    "softmax_era_feasible_range",
    "softmax_era_logits",
    "top_entropy_mean",
    "topk_token_logprob",
]
