"""Gaussian ERA: a log-std activation whose Gaussian entropy never drops below a target (spec section 1)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LOG_2PI_E = math.log(2.0 * math.pi * math.e)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of a diagonal Gaussian with the given log-stds, summed over the last dimension.

    :param log_std: ``(..., D)`` log standard deviations.
    :return: ``(...)`` entropies ``sum(log_std) + D/2 (1 + ln 2 pi)``.
    """
    return 0.5 * log_std.shape[-1] * LOG_2PI_E + log_std.sum(dim=-1)


def max_feasible_target(action_dim: int, log_std_max: float) -> float:
    """Largest unbounded-Gaussian target entropy ``Ht`` reachable with every log-std at ``log_std_max``.

    :param action_dim: number of action dimensions ``D``.
    :param log_std_max: upper log-std bound.
    :return: the entropy (nats) of a ``D``-dimensional Gaussian with every log-std at ``log_std_max``.
    """
    return action_dim * log_std_max + 0.5 * action_dim * LOG_2PI_E


def resolve_target_entropy(
    action_dim: int, target_entropy: float | None = None, target_entropy_per_dim: float | None = None
) -> float:
    """Absolute target entropy from whichever form the user gave; ``-action_dim / 2`` when neither is given.

    :param action_dim: number of action dimensions ``D``.
    :param target_entropy: absolute target (nats), or ``None``.
    :param target_entropy_per_dim: target per action dimension (nats), or ``None``; giving both raises
        ``ValueError``.
    :return: the absolute target entropy.
    """
    if target_entropy is not None and target_entropy_per_dim is not None:
        raise ValueError(
            f"give either target_entropy ({target_entropy}) or target_entropy_per_dim "
            f"({target_entropy_per_dim}), not both"
        )
    if target_entropy is not None:
        value = float(target_entropy)
    elif target_entropy_per_dim is not None:
        value = float(target_entropy_per_dim) * action_dim
    else:
        value = -0.5 * action_dim
    if not math.isfinite(value):
        raise ValueError(f"target entropy must be finite, got {value}")
    return value


def check_gaussian_era_args(
    action_dim: int, target_entropy: float, log_std_min: float, log_std_max: float, delta: float = 0.0
) -> None:
    """Raise ``ValueError`` for a shape or bound that the activation cannot honour (spec section 1)."""
    if int(action_dim) != action_dim or action_dim < 1:
        raise ValueError(f"action_dim must be a positive integer, got {action_dim}")
    if not (math.isfinite(log_std_min) and math.isfinite(log_std_max)) or log_std_min >= log_std_max:
        raise ValueError(
            f"need finite log_std_min < log_std_max, got log_std_min={log_std_min}, log_std_max={log_std_max}"
        )
    largest = max_feasible_target(action_dim, log_std_max)
    if target_entropy + delta > largest:
        raise ValueError(
            f"target_entropy={target_entropy}"
            + (f" with delta={delta}" if delta else "")
            + f" is above the largest feasible target {largest:.4g} for action_dim={action_dim} "
            f"and log_std_max={log_std_max} (K = Ht - D*log_std_max - D/2*ln(2*pi*e) must be <= 0)"
        )


def gaussian_era_log_std(
    z: torch.Tensor,
    target_entropy: float | torch.Tensor,
    log_std_min: float = -8.0,
    log_std_max: float = 0.0,
) -> torch.Tensor:
    """Spec 1: ``log_std = max(lmax + K * softmax(z), lmin)`` with ``K = Ht - D*lmax - D/2 ln(2 pi e)``.

    :param z: pre-activations, shape ``(..., D)``.
    :param target_entropy: ``Ht``, the floor on the Gaussian entropy (``H0 + delta``); a float or a
        0-dim tensor (a learned compensation flows through it).
    :param log_std_min: lower clamp ``lmin``; it can only raise the entropy.
    :param log_std_max: ``lmax``; every log-std stays at or below it when ``K <= 0``.
    :return: log-stds of shape ``(..., D)`` and dtype of ``z`` whose Gaussian entropy is
        ``>= target_entropy``. Computed in at least float32 (float64 stays float64); a narrower result
        is rounded upwards, so that rounding never takes the entropy below the floor.
    """
    dim = z.shape[-1]
    k = target_entropy - dim * log_std_max - 0.5 * dim * LOG_2PI_E
    if not isinstance(k, torch.Tensor) and k > 0:
        check_gaussian_era_args(dim, float(target_entropy), log_std_min, log_std_max)
    compute_dtype = torch.promote_types(z.dtype, torch.float32)
    log_std = (log_std_max + k * F.softmax(z.to(compute_dtype), dim=-1)).clamp_min(log_std_min)
    rounded = log_std.to(z.dtype)
    if rounded.dtype == log_std.dtype:
        return rounded
    # Round-to-nearest may step each log-std down by half an ulp; step those up one ulp instead.
    with torch.no_grad():
        rounded_down = rounded.to(compute_dtype) < log_std
        up = torch.nextafter(rounded, torch.full_like(rounded, math.inf))
        ulp = torch.where(rounded_down, up - rounded, torch.zeros_like(rounded))
    return rounded + ulp


class GaussianERA(nn.Module):
    """Log-std activation that keeps a diagonal Gaussian's entropy above a floor (spec sections 1, 1.3).

    :param action_dim: number of action dimensions ``D``.
    :param target_entropy: target entropy ``H0`` of the final policy (absolute, nats).
    :param target_entropy_per_dim: alternatively ``H0 / D``; default ``H0 = -D / 2``.
    :param log_std_min: lower log-std bound ``lmin`` (authors: -8).
    :param log_std_max: upper log-std bound ``lmax`` (authors: 0).
    :param delta: compensation added to the target: ``Ht = H0 + delta``.
    :param learn_delta: make ``delta`` a learnable parameter trained with :meth:`compensation_loss`.
    """

    def __init__(
        self,
        action_dim: int,
        target_entropy: float | None = None,
        target_entropy_per_dim: float | None = None,
        log_std_min: float = -8.0,
        log_std_max: float = 0.0,
        delta: float = 0.0,
        learn_delta: bool = False,
    ) -> None:
        super().__init__()
        self.action_dim = int(action_dim)
        self.target_entropy = resolve_target_entropy(action_dim, target_entropy, target_entropy_per_dim)
        check_gaussian_era_args(action_dim, self.target_entropy, log_std_min, log_std_max, delta)
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        self.learn_delta = bool(learn_delta)
        # The largest delta keeping K <= 0; a learned delta is capped there so the floor stays feasible.
        self.max_delta = max_feasible_target(self.action_dim, self.log_std_max) - self.target_entropy
        delta_tensor = torch.tensor(float(delta))
        if learn_delta:
            self.delta = nn.Parameter(delta_tensor)
        else:
            self.register_buffer("delta", delta_tensor)

    def effective_delta(self, delta: torch.Tensor | None = None) -> torch.Tensor:
        """The compensation in use, capped at :attr:`max_delta`.

        :param delta: a stand-in for :attr:`delta` (its gradient is the caller's); when not given,
            :attr:`delta` detached: spec 1.3 trains it by :meth:`compensation_loss` only, never by the loss
            that the log-stds feed.
        """
        return (self.delta.detach() if delta is None else delta).clamp(max=self.max_delta)

    def entropy_floor(self, delta: torch.Tensor | None = None) -> torch.Tensor:
        """The guaranteed lower bound ``Ht = H0 + delta`` on the Gaussian entropy."""
        return self.target_entropy + self.effective_delta(delta)

    def forward(self, z: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """Log-stds for pre-activations ``z``; no gradient reaches a learned :attr:`delta` through them.

        :param delta: a stand-in for :attr:`delta` carrying its value, for callers that route the
            compensation's gradient themselves (a learned ``delta`` trained beside an actor loss).
        """
        if z.shape[-1] != self.action_dim:
            raise ValueError(
                f"expected pre-activations of shape (..., {self.action_dim}), got {tuple(z.shape)}"
            )
        return gaussian_era_log_std(z, self.entropy_floor(delta), self.log_std_min, self.log_std_max)

    def compensation_loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """Spec 1.3: ``delta * stopgrad(H_hat - H0)`` with ``H_hat = -mean(log_prob)`` of the final policy.

        Minimising it raises ``delta`` while the measured entropy is below ``H0``. At the feasibility cap
        the push upwards is dropped so that ``delta`` does not wind up beyond what it can use.
        """
        error = (-log_prob.detach().mean() - self.target_entropy).to(self.delta.dtype)
        at_cap = (self.delta >= self.max_delta) & (error < 0)
        return self.delta * torch.where(at_cap, torch.zeros_like(error), error)

    def extra_repr(self) -> str:
        return (
            f"action_dim={self.action_dim}, target_entropy={self.target_entropy:.4g}, "
            f"log_std_min={self.log_std_min}, log_std_max={self.log_std_max}, learn_delta={self.learn_delta}"
        )


class BatchGaussianERA(nn.Module):
    """Batch-level ERA (spec 1.4): the batch-mean Gaussian entropy is held at the target.

    One scalar shift per batch moves the raw log-stds so that their batch-mean sum meets the target; a
    running mean of that shift (like BatchNorm's statistics) is used in evaluation; the result is clamped
    to ``[log_std_min, log_std_max]``, so the floor is on average and approximate, not per state.

    :param action_dim: number of action dimensions ``D``.
    :param target_entropy: target entropy ``H0`` of the batch mean (absolute, nats).
    :param target_entropy_per_dim: alternatively ``H0 / D``; default ``H0 = -D / 2``.
    :param log_std_min: lower log-std bound (authors: -8).
    :param log_std_max: upper log-std bound (authors: 0).
    :param momentum: weight of the newest batch in the running shift.
    """

    def __init__(
        self,
        action_dim: int,
        target_entropy: float | None = None,
        target_entropy_per_dim: float | None = None,
        log_std_min: float = -8.0,
        log_std_max: float = 0.0,
        momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.action_dim = int(action_dim)
        self.target_entropy = resolve_target_entropy(action_dim, target_entropy, target_entropy_per_dim)
        check_gaussian_era_args(action_dim, self.target_entropy, log_std_min, log_std_max)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.log_std_min = float(log_std_min)
        self.log_std_max = float(log_std_max)
        self.momentum = float(momentum)
        self.register_buffer("running_shift", torch.tensor(0.0))

    def entropy_floor(self) -> torch.Tensor:
        """The target ``H0`` that the batch-mean Gaussian entropy is held at (not a per-state bound)."""
        return torch.tensor(self.target_entropy)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Log-stds for pre-activations ``z``: shifted by the batch's shift in training (updating the running
        shift), by the running shift in evaluation, then clamped to ``[log_std_min, log_std_max]``.

        :param z: ``(..., D)`` pre-activations.
        :return: ``(..., D)`` log-stds.
        """
        if z.shape[-1] != self.action_dim:
            raise ValueError(
                f"expected pre-activations of shape (..., {self.action_dim}), got {tuple(z.shape)}"
            )
        if self.training and z.dim() > 1:
            needed = self.target_entropy - 0.5 * self.action_dim * LOG_2PI_E
            # The shift is differentiated through, as BatchNorm's batch mean is.
            shift = (needed - z.float().sum(dim=-1).mean()) / self.action_dim
            with torch.no_grad():
                self.running_shift.lerp_(shift.detach().to(self.running_shift.dtype), self.momentum)
        else:
            shift = self.running_shift
        return (z + shift.to(z.dtype)).clamp(self.log_std_min, self.log_std_max)
