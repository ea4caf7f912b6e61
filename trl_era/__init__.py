"""ERA (Entropy Regularizing Activation) for LLM reinforcement learning with TRL (spec section 3).

`ERAGRPOConfig` and `ERAGRPOTrainer` replace TRL's `GRPOConfig` and `GRPOTrainer`; `python -m trl_era.scripts.grpo`
(console script `trl-era-grpo`) mirrors TRL's `grpo` script.
"""

from trl_era.era_grpo_config import ERAGRPOConfig
from trl_era.era_grpo_trainer import ERAGRPOTrainer
from trl_era.logprobs import ScaledLogProbHead, topk_token_logprobs

__all__ = ["ERAGRPOConfig", "ERAGRPOTrainer", "ScaledLogProbHead", "topk_token_logprobs"]
