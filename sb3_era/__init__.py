"""ERA (Entropy Regularizing Activation) for Stable-Baselines3, sb3-contrib and RL Baselines3 Zoo.

Switch one argument and the policy keeps its entropy above a floor by construction::

    from sb3_era import ERASAC
    ERASAC("MlpPolicy", "HalfCheetah-v5", target_entropy_per_dim=-0.5)
"""

from sb3_era.algorithms import ERAA2C, ERAPPO, ERASAC, ERATQC, ERACrossQ
from sb3_era.callbacks import ERAEntropyCallback, era_entropy_stats, policy_entropy_stats
from sb3_era.critics import CriticOptionsSACPolicy, CriticOptionsTQCPolicy, authors_critic_kwargs
from sb3_era.distributions import TruncatedNormalDistribution
from sb3_era.off_policy import (
    ERAActor,
    ERACrossQActor,
    ERACrossQPolicy,
    ERASACCnnPolicy,
    ERASACMultiInputPolicy,
    ERASACPolicy,
    ERATQCCnnPolicy,
    ERATQCMultiInputPolicy,
    ERATQCPolicy,
)
from sb3_era.on_policy import (
    ERAActorCriticCnnPolicy,
    ERAActorCriticPolicy,
    ERAMultiInputActorCriticPolicy,
    ERARecurrentActorCriticPolicy,
)

__all__ = [
    "ERAA2C",
    "ERAPPO",
    "ERASAC",
    "ERATQC",
    "CriticOptionsSACPolicy",
    "CriticOptionsTQCPolicy",
    "ERAActor",
    "ERAActorCriticCnnPolicy",
    "ERAActorCriticPolicy",
    "ERACrossQ",
    "ERACrossQActor",
    "ERACrossQPolicy",
    "ERAEntropyCallback",
    "ERAMultiInputActorCriticPolicy",
    "ERARecurrentActorCriticPolicy",
    "ERASACCnnPolicy",
    "ERASACMultiInputPolicy",
    "ERASACPolicy",
    "ERATQCCnnPolicy",
    "ERATQCMultiInputPolicy",
    "ERATQCPolicy",
    "TruncatedNormalDistribution",
    "authors_critic_kwargs",
    "era_entropy_stats",
    "policy_entropy_stats",
]
