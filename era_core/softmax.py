"""Softmax ERA: a logit activation that keeps a categorical distribution's entropy above a floor (spec section 2).

Three constructions share one interface (``construction=``):

- ``"paper"`` (default): the authors' share map (spec 2). Its floor holds but is loose: the smallest entropy it lets
  through is well above ``min_entropy`` (10 classes, floor 0.6: 0.98 nats).
- ``"mixture"``: ``p' = (1 - eps) softmax(x) + eps / C`` (spec 2.1). The floor is exact and attained at one-hot
  inputs, for any ``0 < min_entropy < ln C``.
- ``"calibrated"``: the paper's map with its internal floor ``Hmin'`` solved once so that the smallest entropy over
  all inputs equals ``min_entropy`` (spec 2.1): exact with ``inverse="newton"``, see :func:`smallest_entropy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Inverse = Literal["approx", "newton"]
INVERSES: tuple[str, ...] = ("approx", "newton")
NEWTON_STEPS = 3
Construction = Literal["paper", "mixture", "calibrated"]
CONSTRUCTIONS: tuple[str, ...] = ("paper", "mixture", "calibrated")
DEFAULT_TAU = 4.0
DEFAULT_INVERSE: Inverse = "approx"
_BISECTION_STEPS = 80  # halves the bracket below float64 resolution
_SOLVE_TOLERANCE = 1e-9  # nats: how closely the solved parameter must reproduce the requested floor


def softmax_era_feasible_range(
    num_classes: int, tau: float = DEFAULT_TAU, construction: Construction = "paper"
) -> tuple[float, float]:
    """Feasible ``min_entropy`` interval for ``num_classes`` classes.

    ``"paper"``: ``(1 + ln(ln(tau)/tau), 1 + ln(C ln(tau)/tau)]`` (low exclusive: there the smallest share is 0;
    high inclusive: the uniform distribution). ``"mixture"`` and ``"calibrated"``: ``(0, ln C)``, both ends
    exclusive (a floor of ``ln C`` would make the output the constant uniform distribution).

    :param num_classes: number of classes ``C``.
    :param tau: share cap parameter of the paper's map (authors: 4).
    :param construction: ``"paper"``, ``"mixture"`` or ``"calibrated"``.
    :return: ``(low, high)``.
    """
    if construction == "paper":
        upper = math.log(tau) / tau
        return 1.0 + math.log(upper), 1.0 + math.log(num_classes * upper)
    return 0.0, math.log(num_classes)


def check_softmax_era_args(
    num_classes: int,
    min_entropy: float,
    tau: float = DEFAULT_TAU,
    construction: Construction = "paper",
    inverse: Inverse = DEFAULT_INVERSE,
) -> None:
    """Raise ``ValueError`` for a class count, floor, ``tau``, ``inverse`` or construction that cannot be honoured.

    :param num_classes: number of classes ``C``.
    :param min_entropy: entropy floor in nats.
    :param tau: share cap parameter of the paper's map (authors: 4).
    :param construction: ``"paper"``, ``"mixture"`` or ``"calibrated"`` (see :class:`SoftmaxERA`).
    :param inverse: ``"approx"`` (the paper's closed form) or ``"newton"`` (exact inverse).
    """
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"construction must be one of {CONSTRUCTIONS}, got {construction!r}")
    if inverse not in INVERSES:
        raise ValueError(f"inverse must be one of {INVERSES}, got {inverse!r}")
    if not math.isfinite(tau) or tau <= math.e:
        raise ValueError(f"tau must be a finite number above e (so that 1/tau < 1/e), got {tau}")
    if construction == "mixture" and (tau != DEFAULT_TAU or inverse != DEFAULT_INVERSE):
        raise ValueError(
            f"tau and inverse configure the paper's share map; construction='mixture' has neither "
            f"(got tau={tau}, inverse={inverse!r})"
        )
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"softmax ERA needs at least 2 classes, got num_classes={num_classes}")
    low, high = softmax_era_feasible_range(num_classes, tau, construction)
    feasible = low < min_entropy <= high if construction == "paper" else low < min_entropy < high
    if not (math.isfinite(min_entropy) and feasible):
        closing = "]" if construction == "paper" else ")"
        raise ValueError(
            f"min_entropy={min_entropy} is infeasible for num_classes={num_classes}, construction={construction!r}"
            f"{f' and tau={tau}' if construction != 'mixture' else ''}: "
            f"the feasible interval is ({low:.4f}, {high:.4f}{closing}"
        )


def _softmax_era_constants(num_classes: int, min_entropy: float, tau: float) -> tuple[float, float]:
    """``(slope, offset)`` of the share map ``h = slope * softmax(x) + offset``."""
    upper = math.log(tau) / tau
    total = math.exp(min_entropy - 1.0)
    slope = (upper - total / num_classes) / (1.0 - 1.0 / num_classes)
    return slope, (total - slope) / num_classes


def _share_inverse_log(log_h: torch.Tensor, newton_steps: int) -> torch.Tensor:
    """``y = ln q`` with ``-q ln q = h``, ``q < 1/e``: the paper's closed form, then ``newton_steps`` Newton steps."""
    u = -1.0 - log_h
    y = -1.0 - torch.sqrt(2.0 * u) - 0.75 * u
    # Newton on y + ln(-y) = ln h, the exact inverse of -q ln q = h on the branch q < 1/e (y = ln q).
    for _ in range(newton_steps):
        y = y - (y + torch.log(-y) - log_h) / (1.0 + 1.0 / y)
    return y


def _softmax_era_transform(
    logits: torch.Tensor, slope: float, offset: float, newton_steps: int
) -> torch.Tensor:
    x = logits if logits.dtype == torch.float64 else logits.float()
    y = _share_inverse_log(torch.log(slope * F.softmax(x, dim=-1) + offset), newton_steps)
    return y.to(logits.dtype)


def _mixture_transform(logits: torch.Tensor, log_keep: float, log_floor: float) -> torch.Tensor:
    x = logits if logits.dtype == torch.float64 else logits.float()
    mixed = torch.logaddexp(F.log_softmax(x, dim=-1) + log_keep, torch.full_like(x, log_floor))
    return mixed.to(logits.dtype)


def _bisect(increasing: Callable[[float], float], target: float, low: float, high: float) -> float:
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if increasing(middle) < target:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def _entropy_of_two_levels(num_classes: int, log_top: float, log_rest: float) -> float:
    """Entropy of ``softmax`` of logits ``(log_top, log_rest, ..., log_rest)``."""
    gap = log_rest - log_top
    top = 1.0 / (1.0 + (num_classes - 1) * math.exp(gap))
    rest = (1.0 - top) / (num_classes - 1)
    return -top * math.log(top) - (num_classes - 1) * (rest * math.log(rest) if rest > 0 else 0.0)


def _mixture_eps(num_classes: int, min_entropy: float) -> float:
    """Spec 2.1: the ``eps`` whose one-hot mixture has entropy ``min_entropy`` (increasing in ``eps``)."""

    def one_hot_entropy(eps: float) -> float:
        return _entropy_of_two_levels(
            num_classes, math.log1p(-eps + eps / num_classes), math.log(eps / num_classes)
        )

    return _bisect(one_hot_entropy, min_entropy, 0.0, 1.0)


def _share_logits(top_share: float, rest_share: float, newton_steps: int) -> tuple[float, float]:
    shares = torch.tensor([top_share, rest_share], dtype=torch.float64)
    top, rest = _share_inverse_log(shares.log(), newton_steps).tolist()
    return top, rest


def _paper_one_hot_entropy(num_classes: int, internal_entropy: float, tau: float, newton_steps: int) -> float:
    slope, offset = _softmax_era_constants(num_classes, internal_entropy, tau)
    return _entropy_of_two_levels(num_classes, *_share_logits(slope + offset, offset, newton_steps))


def _calibrated_internal_entropy(
    num_classes: int, min_entropy: float, tau: float, newton_steps: int
) -> float:
    """The paper's ``Hmin'`` whose one-hot output has entropy ``min_entropy`` (increasing in ``Hmin'``)."""
    low, high = softmax_era_feasible_range(num_classes, tau, "paper")
    internal = _bisect(
        lambda h: _paper_one_hot_entropy(num_classes, h, tau, newton_steps), min_entropy, low, high
    )
    reached = _paper_one_hot_entropy(num_classes, internal, tau, newton_steps)
    if not abs(reached - min_entropy) <= _SOLVE_TOLERANCE:
        raise ValueError(
            f"construction='calibrated' cannot resolve min_entropy={min_entropy} for num_classes={num_classes} in "
            f"float64 (closest floor reached {reached:.3g}); use construction='mixture' for so small a floor"
        )
    return internal


def _resolve(
    num_classes: int, min_entropy: float, tau: float, inverse: Inverse, construction: Construction
) -> tuple[float, float]:
    """Validate, then the two constants of the transform: ``(slope, offset)`` or ``(log_keep, log_floor)``."""
    check_softmax_era_args(num_classes, min_entropy, tau, construction, inverse)
    if construction == "mixture":
        eps = _mixture_eps(num_classes, min_entropy)
        return math.log1p(-eps), math.log(eps / num_classes)
    if construction == "calibrated":
        min_entropy = _calibrated_internal_entropy(num_classes, min_entropy, tau, _newton_steps(inverse))
    return _softmax_era_constants(num_classes, min_entropy, tau)


def _checked_softmax_era_transform(
    logits: torch.Tensor, num_classes: int, mixture: bool, first: float, second: float, newton_steps: int
) -> torch.Tensor:
    """The construction's transform after the class-count check: ``(first, second)`` are the paper map's
    ``(slope, offset)`` or the mixture's ``(log(1 - eps), log(eps / C))``."""
    if logits.shape[-1] != num_classes:
        raise ValueError(
            "expected logits with "
            + str(num_classes)
            + " classes in the last dim, got shape "
            + str(logits.shape)
        )
    if mixture:
        return _mixture_transform(logits, first, second)
    return _softmax_era_transform(logits, first, second, newton_steps)


# torch.fx records the checked transform as one call (its shape check and dtype choice are Python control
# flow that symbolic tracing cannot follow), so FX tooling such as timm's feature extraction traces SoftmaxERA.
torch.fx.wrap("_checked_softmax_era_transform")


def softmax_era_logits(
    logits: torch.Tensor,
    min_entropy: float,
    tau: float = DEFAULT_TAU,
    inverse: Inverse = DEFAULT_INVERSE,
    construction: Construction = "paper",
) -> torch.Tensor:
    """Spec 2: logits whose softmax has entropy ``>= min_entropy``.

    ``construction="paper"``: the network's softmax chooses per-class entropy shares ``h = slope * softmax(x) + b``
    summing to ``T = exp(min_entropy - 1)``; each share is mapped back through ``f(p) = -p ln p`` on ``[0, 1/tau]``.
    ``inverse="approx"`` is the paper's ``y = -1 - sqrt(2u) - 0.75 u`` with ``u = -1 - ln h``;
    ``inverse="newton"`` refines it with Newton steps to the exact inverse. ``"mixture"`` and ``"calibrated"`` make
    the floor tight (spec 2.1, see :class:`SoftmaxERA`). Computed in float32 (float64 if given), returned in the input
    dtype. This function solves the construction's constants on every call; build :class:`SoftmaxERA` once instead
    in a training loop.

    :param logits: shape ``(..., C)``.
    :param min_entropy: entropy floor in nats.
    :param tau: share cap parameter of the paper's map (authors: 4).
    :param inverse: ``"approx"`` (the paper's closed form) or ``"newton"`` (exact inverse).
    :param construction: ``"paper"``, ``"mixture"`` or ``"calibrated"`` (see :class:`SoftmaxERA`).
    :return: transformed logits, same shape and dtype.
    """
    return SoftmaxERA(logits.shape[-1], min_entropy, tau, inverse, construction)(logits)


def smallest_entropy(
    num_classes: int,
    min_entropy: float,
    tau: float = DEFAULT_TAU,
    inverse: Inverse = DEFAULT_INVERSE,
    construction: Construction = "paper",
) -> float:
    """The entropy (nats) of the construction's output for a one-hot ``softmax(x)``: its smallest output entropy.

    ``"mixture"``: proven (entropy is concave and the mixture affine, so the minimum over the simplex is at a vertex);
    the value is ``min_entropy`` itself. ``"paper"`` / ``"calibrated"`` with ``inverse="newton"``: proven too. With
    ``q_i = f^-1(h_i)`` and ``S = sum q_i`` the output entropy is ``T/S + ln S``, decreasing in ``S`` because
    ``S <= T``; ``S`` is a sum of the convex increasing ``f^-1`` of an affine map of ``softmax(x)``, so convex on the
    simplex and largest at a vertex. With the paper's closed-form inverse (``"approx"``) the vertex is the minimum
    found by an adversarial search (``benchmarks/softmax_constructions.py``, margins in its JSON).

    :param num_classes: number of classes ``C``.
    :param min_entropy: entropy floor in nats.
    :param tau: share cap parameter of the paper's map (authors: 4).
    :param inverse: ``"approx"`` (the paper's closed form) or ``"newton"`` (exact inverse).
    :param construction: ``"paper"``, ``"mixture"`` or ``"calibrated"`` (see :class:`SoftmaxERA`).
    :return: the smallest output entropy (nats).
    """
    return _entropy_of_two_levels(
        num_classes, *_one_hot_logits(num_classes, min_entropy, tau, inverse, construction)
    )


def max_probability(
    num_classes: int,
    min_entropy: float,
    tau: float = DEFAULT_TAU,
    inverse: Inverse = DEFAULT_INVERSE,
    construction: Construction = "paper",
) -> float:
    """The largest probability any class can get from the construction: the confidence a floor trades away.

    It is reached at a one-hot ``softmax(x)`` in every construction: the output probability of class ``i`` grows with
    its own share and falls with every other share, and each share is an increasing function of ``softmax(x)_i``.
    Mixture: ``1 - eps + eps / C``.

    :param num_classes: number of classes ``C``.
    :param min_entropy: entropy floor in nats.
    :param tau: share cap parameter of the paper's map (authors: 4).
    :param inverse: ``"approx"`` (the paper's closed form) or ``"newton"`` (exact inverse).
    :param construction: ``"paper"``, ``"mixture"`` or ``"calibrated"`` (see :class:`SoftmaxERA`).
    :return: the largest class probability.
    """
    top, rest = _one_hot_logits(num_classes, min_entropy, tau, inverse, construction)
    return 1.0 / (1.0 + (num_classes - 1) * math.exp(rest - top))


def _one_hot_logits(
    num_classes: int, min_entropy: float, tau: float, inverse: Inverse, construction: Construction
) -> tuple[float, float]:
    """Output logits ``(top, rest)`` of the construction for a one-hot ``softmax(x)``, in float64."""
    first, second = _resolve(num_classes, min_entropy, tau, inverse, construction)
    if construction == "mixture":
        log_keep, log_floor = first, second
        return math.log(math.exp(log_keep) + math.exp(log_floor)), log_floor
    return _share_logits(first + second, second, _newton_steps(inverse))


def _newton_steps(inverse: str) -> int:
    if inverse not in INVERSES:
        raise ValueError(f"inverse must be one of {INVERSES}, got {inverse!r}")
    return NEWTON_STEPS if inverse == "newton" else 0


class SoftmaxERA(nn.Module):
    """Logit activation keeping the softmax entropy above ``min_entropy`` (spec sections 2 and 2.1).

    :param num_classes: number of classes ``C`` (at least 2).
    :param min_entropy: entropy floor ``Hmin`` in nats; must lie in :func:`softmax_era_feasible_range` of the
        construction.
    :param tau: share cap parameter of the paper's map (authors: 4); the largest share one class gets is
        ``ln(tau)/tau``. Not used by ``"mixture"``.
    :param inverse: ``"approx"`` (the paper's closed form, default) or ``"newton"`` (exact inverse) of the share map.
        Not used by ``"mixture"``.
    :param construction: ``"paper"`` (default, the authors' construction: the floor holds but loosely),
        ``"mixture"`` (exact floor, attained at one-hot inputs, for ``0 < min_entropy < ln C``) or ``"calibrated"``
        (the paper's map with its internal floor solved once at construction so that the smallest output entropy
        equals ``min_entropy``; exact with ``inverse="newton"``, see :func:`smallest_entropy`). Constants are solved
        here, once; ``forward`` costs the same as the paper's map (mixture: one ``logaddexp`` after ``log_softmax``).
    """

    def __init__(
        self,
        num_classes: int,
        min_entropy: float,
        tau: float = DEFAULT_TAU,
        inverse: Inverse = DEFAULT_INVERSE,
        construction: Construction = "paper",
    ) -> None:
        super().__init__()
        first, second = _resolve(num_classes, min_entropy, tau, inverse, construction)
        self.newton_steps = _newton_steps(inverse)
        self.num_classes = int(num_classes)
        self.min_entropy = float(min_entropy)
        self.tau = float(tau)
        self.inverse = inverse
        self.construction = construction
        self.mixture = construction == "mixture"
        # Paper map: slope and offset of the shares; mixture: log(1 - eps) and log(eps / C). The other pair is nan:
        # TorchScript compiles both branches of forward, so all four attributes exist.
        self.slope, self.offset = (math.nan, math.nan) if self.mixture else (first, second)
        self.log_keep, self.log_floor = (first, second) if self.mixture else (math.nan, math.nan)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Transformed logits whose softmax entropy is at least :attr:`min_entropy`.

        :param logits: ``(..., C)`` logits.
        :return: transformed logits, same shape and dtype.
        """
        if self.mixture:
            return _checked_softmax_era_transform(
                logits, self.num_classes, True, self.log_keep, self.log_floor, self.newton_steps
            )
        return _checked_softmax_era_transform(
            logits, self.num_classes, False, self.slope, self.offset, self.newton_steps
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, min_entropy={self.min_entropy}, tau={self.tau}, "
            f"inverse={self.inverse!r}, construction={self.construction!r}"
        )
