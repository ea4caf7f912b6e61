"""Pieces shared by the off- and on-policy ERA policies: argument checks and entropy measurements."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)

from era_core import gaussian_entropy
from sb3_era.distributions import TruncatedNormalDistribution

# The ERA authors' log-std bounds (SB3's SAC clamps at -20 and 2).
LOG_STD_MIN = -8.0
LOG_STD_MAX = 0.0
# The authors' tau for the softmax ERA on discrete actions.
SOFTMAX_TAU = 4.0
ACTION_DISTRIBUTIONS = ("truncated", "tanh")
FLOORS = ("state", "batch")


def check_action_distribution(action_distribution: str) -> None:
    """Raise ``ValueError`` unless ``action_distribution`` names a supported bounded distribution."""
    if action_distribution not in ACTION_DISTRIBUTIONS:
        raise ValueError(
            f"action_distribution must be one of {ACTION_DISTRIBUTIONS}, got {action_distribution!r}"
        )


def check_no_sde(use_sde: bool) -> None:
    """Raise ``ValueError`` for gSDE, whose noise matrix bypasses the ERA log-std activation."""
    if use_sde:
        raise ValueError(
            "ERA policies do not support gSDE (use_sde=True): gSDE draws its noise from a learned matrix, "
            "not from the log-std that ERA bounds, so the entropy floor would not hold. Use use_sde=False."
        )


def check_bounded_box(action_space: spaces.Space, supported: str) -> None:
    """Raise ``ValueError`` for an action space that is not the kind ERA supports here.

    :param action_space: the environment's action space.
    :param supported: the supported spaces, in words, for the error message.
    """
    if not isinstance(action_space, spaces.Box):
        raise ValueError(f"ERA policies support {supported} action spaces, got {action_space}")
    if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
        raise ValueError(
            f"ERA policies need a bounded Box action space (finite low and high), got {action_space}"
        )


class CompensationGradient(th.autograd.Function):
    """Identity on ``delta`` whose backward hands ``delta`` the spec-1.3 gradient instead of the loss's.

    ``slot["grad"]`` is filled after the forward pass, once the entropy that the compensation loss needs
    is known; a graph whose slot stays empty (e.g. a plain ``forward``) gives ``delta`` no gradient. This
    trains a learned ``delta`` inside the host's own ``train()``: the host's loss backward delivers it.
    """

    @staticmethod
    def forward(ctx: Any, delta: th.Tensor, slot: dict[str, th.Tensor]) -> th.Tensor:
        ctx.slot = slot
        return delta.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: th.Tensor) -> tuple[th.Tensor, None]:
        compensation = ctx.slot.get("grad")
        if compensation is None:
            return th.zeros_like(grad_output), None
        return compensation.to(grad_output), None


def final_policy_entropy(distribution: Distribution) -> th.Tensor:
    """Per-state entropy of the final bounded policy in the ``[-1, 1]``-scaled action space.

    Exact for categorical and truncated-normal actions; for the tanh-squashed Gaussian (no closed form) the
    one-sample Monte-Carlo estimate ``-log_prob`` of a fresh action per state.
    """
    if isinstance(distribution, CategoricalDistribution):
        return distribution.entropy()
    if isinstance(distribution, TruncatedNormalDistribution):
        return distribution.entropy() - distribution.log_scale_correction
    if isinstance(distribution, SquashedDiagGaussianDistribution):
        actions = distribution.sample()
        return -distribution.log_prob(actions, distribution.gaussian_actions)
    raise TypeError(f"no ERA entropy measurement for {type(distribution).__name__}")


def distribution_entropy_stats(
    distribution: Distribution, entropy_floor: float | None, action_half_range: np.ndarray | None = None
) -> dict[str, float]:
    """Entropies of a built action distribution, measured in the ``[-1, 1]``-scaled action space.

    Works for the ERA policies' distributions and for stock SB3 ones, so that a baseline is measured with the
    same code as its ERA counterpart.

    :param distribution: an SB3 distribution after ``proba_distribution``: truncated normal, tanh-squashed
        Gaussian, categorical, or (stock PPO/A2C) an unbounded diagonal or gSDE Gaussian.
    :param entropy_floor: the floor ERA guarantees (on the Gaussian entropy, or the categorical one);
        ``None`` for a policy without a floor.
    :param action_half_range: ``(high - low) / 2`` of the ``Box`` action space, for the unbounded Gaussians,
        which act in the environment's units (the other distributions act in ``[-1, 1]``).
    :return: ``entropy_floor`` when given; for continuous actions ``gaussian_entropy`` (mean over states)
        and ``gaussian_entropy_min`` (the floor holds when it is ``>= entropy_floor``); ``policy_entropy``,
        the mean entropy of the final bounded policy (exact for categorical and truncated-normal actions; for
        the tanh-squashed Gaussian the Monte-Carlo estimate ``-mean(log_prob)`` of one action per state; not
        given for the unbounded Gaussians, whose actions are clipped to the bounds).
    """
    stats = {} if entropy_floor is None else {"entropy_floor": float(entropy_floor)}
    if isinstance(distribution, CategoricalDistribution):
        stats["policy_entropy"] = final_policy_entropy(distribution).mean().item()
        return stats
    if not isinstance(
        distribution,
        (
            TruncatedNormalDistribution,
            SquashedDiagGaussianDistribution,
            DiagGaussianDistribution,
            StateDependentNoiseDistribution,
        ),
    ):
        raise TypeError(f"no entropy measurement for {type(distribution).__name__}")
    log_std = distribution.distribution.scale.log()
    unbounded = not isinstance(distribution, (TruncatedNormalDistribution, SquashedDiagGaussianDistribution))
    if unbounded and action_half_range is not None:
        log_std = log_std - log_std.new_tensor(np.log(action_half_range).reshape(-1))
    gaussian = gaussian_entropy(log_std)
    stats["gaussian_entropy"] = gaussian.mean().item()
    stats["gaussian_entropy_min"] = gaussian.min().item()
    if not unbounded:
        stats["policy_entropy"] = final_policy_entropy(distribution).mean().item()
    return stats
