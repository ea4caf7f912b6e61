"""Softmax ERA: a logit activation that keeps a categorical distribution's entropy above a floor (spec section 2)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Inverse = Literal["approx", "newton"]
INVERSES: tuple[str, ...] = ("approx", "newton")
NEWTON_STEPS = 3


def softmax_era_feasible_range(num_classes: int, tau: float = 4.0) -> tuple[float, float]:
    """Interval ``(low, high]`` of ``min_entropy`` that the construction can honour for ``num_classes`` classes.

    ``low = 1 + ln(ln(tau)/tau)`` (exclusive: there the smallest share is 0) and
    ``high = 1 + ln(C ln(tau)/tau)`` (inclusive: the uniform distribution).
    """
    upper = math.log(tau) / tau
    return 1.0 + math.log(upper), 1.0 + math.log(num_classes * upper)


def check_softmax_era_args(num_classes: int, min_entropy: float, tau: float = 4.0) -> None:
    """Raise ``ValueError`` for a class count, floor or ``tau`` the construction cannot honour."""
    if not math.isfinite(tau) or tau <= math.e:
        raise ValueError(f"tau must be a finite number above e (so that 1/tau < 1/e), got {tau}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"softmax ERA needs at least 2 classes, got num_classes={num_classes}")
    low, high = softmax_era_feasible_range(num_classes, tau)
    if not (math.isfinite(min_entropy) and low < min_entropy <= high):
        raise ValueError(
            f"min_entropy={min_entropy} is infeasible for num_classes={num_classes} and tau={tau}: "
            f"the feasible interval is ({low:.4f}, {high:.4f}]"
        )


def _softmax_era_constants(num_classes: int, min_entropy: float, tau: float) -> tuple[float, float]:
    """``(slope, offset)`` of the share map ``h = slope * softmax(x) + offset``."""
    upper = math.log(tau) / tau
    total = math.exp(min_entropy - 1.0)
    slope = (upper - total / num_classes) / (1.0 - 1.0 / num_classes)
    return slope, (total - slope) / num_classes


def _softmax_era_transform(
    logits: torch.Tensor, slope: float, offset: float, newton_steps: int
) -> torch.Tensor:
    x = logits if logits.dtype == torch.float64 else logits.float()
    log_h = torch.log(slope * F.softmax(x, dim=-1) + offset)
    u = -1.0 - log_h
    y = -1.0 - torch.sqrt(2.0 * u) - 0.75 * u
    # Newton on y + ln(-y) = ln h, the exact inverse of -q ln q = h on the branch q < 1/e (y = ln q).
    for _ in range(newton_steps):
        y = y - (y + torch.log(-y) - log_h) / (1.0 + 1.0 / y)
    return y.to(logits.dtype)


def _checked_softmax_era_transform(
    logits: torch.Tensor, num_classes: int, slope: float, offset: float, newton_steps: int
) -> torch.Tensor:
    if logits.shape[-1] != num_classes:
        raise ValueError(
            "expected logits with "
            + str(num_classes)
            + " classes in the last dim, got shape "
            + str(logits.shape)
        )
    return _softmax_era_transform(logits, slope, offset, newton_steps)


# torch.fx records the checked transform as one call (its shape check and dtype choice are Python control
# flow that symbolic tracing cannot follow), so FX tooling such as timm's feature extraction traces SoftmaxERA.
torch.fx.wrap("_checked_softmax_era_transform")


def softmax_era_logits(
    logits: torch.Tensor,
    min_entropy: float,
    tau: float = 4.0,
    inverse: Inverse = "approx",
) -> torch.Tensor:
    """Spec 2: logits whose softmax has entropy ``>= min_entropy`` (approximately for ``inverse="approx"``).

    The network's softmax chooses per-class entropy shares ``h = slope * softmax(x) + b`` summing to
    ``T = exp(min_entropy - 1)``; each share is mapped back through ``f(p) = -p ln p`` on ``[0, 1/tau]``.
    ``inverse="approx"`` is the paper's ``y = -1 - sqrt(2u) - 0.75 u`` with ``u = -1 - ln h``;
    ``inverse="newton"`` refines it with Newton steps to the exact inverse, which makes the floor exact.
    Computed in float32 (float64 if given), returned in the input dtype.

    :param logits: shape ``(..., C)``.
    :return: transformed logits, same shape and dtype.
    """
    num_classes = logits.shape[-1]
    check_softmax_era_args(num_classes, min_entropy, tau)
    slope, offset = _softmax_era_constants(num_classes, min_entropy, tau)
    return _softmax_era_transform(logits, slope, offset, _newton_steps(inverse))


def _newton_steps(inverse: str) -> int:
    if inverse not in INVERSES:
        raise ValueError(f"inverse must be one of {INVERSES}, got {inverse!r}")
    return NEWTON_STEPS if inverse == "newton" else 0


class SoftmaxERA(nn.Module):
    """Logit activation keeping the softmax entropy above ``min_entropy`` (spec section 2).

    :param num_classes: number of classes ``C`` (at least 2).
    :param min_entropy: entropy floor ``Hmin`` in nats; must lie in :func:`softmax_era_feasible_range`.
    :param tau: share cap parameter (authors: 4); the largest share one class gets is ``ln(tau)/tau``.
    :param inverse: ``"approx"`` (the paper's closed form, default) or ``"newton"`` (exact inverse).
    """

    def __init__(
        self, num_classes: int, min_entropy: float, tau: float = 4.0, inverse: Inverse = "approx"
    ) -> None:
        super().__init__()
        check_softmax_era_args(num_classes, min_entropy, tau)
        self.newton_steps = _newton_steps(inverse)
        self.num_classes = int(num_classes)
        self.min_entropy = float(min_entropy)
        self.tau = float(tau)
        self.inverse = inverse
        self.slope, self.offset = _softmax_era_constants(self.num_classes, self.min_entropy, self.tau)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return _checked_softmax_era_transform(
            logits, self.num_classes, self.slope, self.offset, self.newton_steps
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, min_entropy={self.min_entropy}, tau={self.tau}, inverse={self.inverse!r}"
