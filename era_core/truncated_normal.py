"""A truncated normal distribution, numerically safe in the tails (spec section 1.1).

Every quantity is computed from log-space normal CDFs. Where the interval lies in the upper tail
(``alpha + beta > 0``) the computation uses the mirror image ``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)``, so
the CDF differences never cancel, and quantiles are taken with :func:`ndtri_exp`, the inverse of
``log Phi``, so probabilities below float32's smallest normal number still give finite samples.
"""

from __future__ import annotations

import functools
import math
from numbers import Number

import torch
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution, constraints
from torch.distributions.utils import broadcast_all

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_HALF_LOG_2PI_E = 0.5 * math.log(2.0 * math.pi * math.e)
_LOG_4PI = math.log(4.0 * math.pi)
_SQRT_2 = math.sqrt(2.0)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate on both sides of ``-ln 2``."""
    near_zero = x > -math.log(2.0)
    safe_near = torch.where(near_zero, x, torch.full_like(x, -1.0))
    safe_far = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(safe_near)), torch.log1p(-torch.exp(safe_far)))


def log_ndtr_diff(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """``log(Phi(upper) - Phi(lower))`` for ``lower <= upper``, without cancellation in either tail."""
    mirrored = (lower + upper) > 0
    hi = torch.where(mirrored, -lower, upper)
    lo = torch.where(mirrored, -upper, lower)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + _log1mexp(torch.special.log_ndtr(lo) - log_hi)


def _log_normal_pdf(x: torch.Tensor) -> torch.Tensor:
    return -0.5 * x * x - _HALF_LOG_2PI


def _newton_deep_tail_quantile(log_p: torch.Tensor) -> torch.Tensor:
    """``Phi^-1(exp(log_p))`` for ``log_p`` below what ``ndtri`` resolves (for inputs without gradient: see
    :class:`_DeepTailQuantile` for its derivative).

    Asymptotic start ``x = -sqrt(2 q - ln(4 pi q))`` for ``q = -log_p`` (from ``Phi(x) ~ phi(x) / -x``), then
    Newton on ``log Phi(x) = log_p``, whose step's ``Phi(x) / phi(x)`` is ``sqrt(pi / 2) erfcx(-x / sqrt 2)``:
    unlike ``exp(log Phi(x) - log phi(x))`` it does not cancel at large ``|x|``. One step reaches float32's
    resolution (down to its most negative number) and two float64's (down to ``-1e308``).
    """
    q = -log_p
    x = -_SQRT_2 * torch.sqrt(torch.sub(q, torch.log(q) + _LOG_4PI, alpha=0.5))
    for _ in range(2 if log_p.dtype == torch.float64 else 1):
        residual = torch.special.log_ndtr(x) + q
        x = torch.addcmul(x, residual, torch.special.erfcx(-_SQRT_HALF * x), value=-_SQRT_HALF_PI)
    return x


class _DeepTailQuantile(torch.autograd.Function):
    """:func:`_newton_deep_tail_quantile` with the quantile's own derivative, ``dx/d log_p = Phi(x) / phi(x) =
    sqrt(pi / 2) erfcx(-x / sqrt 2)``. Autograd through the Newton step would take ``log_ndtr``'s backward, which
    loses all precision at large ``|x|`` (the exponential of a difference of two numbers near ``x^2 / 2``). The
    backward is written in torch ops on the saved quantile, so it differentiates again; ``setup_context`` lets
    ``torch.func.grad`` run it too.
    """

    @staticmethod
    def forward(log_p: torch.Tensor) -> torch.Tensor:
        return _newton_deep_tail_quantile(log_p)

    @staticmethod
    def setup_context(ctx, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad_x: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_x * (_SQRT_HALF_PI * torch.special.erfcx(-_SQRT_HALF * x))


def _deep_tail_quantile(log_p: torch.Tensor, deep_tail: torch.Tensor, tiny_log: float) -> torch.Tensor:
    """``Phi^-1(exp(log_p))`` where ``deep_tail`` (``log_p < tiny_log``, below what ``ndtri`` resolves); elsewhere
    the values are meaningless but finite, and so is their gradient."""
    lp_tail = torch.where(deep_tail, log_p, 2.0 * tiny_log)
    if lp_tail.requires_grad:  # False in no-grad mode too
        return _DeepTailQuantile.apply(lp_tail)
    return _newton_deep_tail_quantile(lp_tail)


def ndtri_exp(log_p: torch.Tensor) -> torch.Tensor:
    """Standard normal quantile of ``exp(log_p)`` (differentiable).

    :param log_p: log-probabilities, ``< 0``; the quantile is finite down to float32's most negative number and,
        in float64, down to ``-1e308``.
    :return: ``Phi^-1(exp(log_p))``, same shape.
    """
    tiny_log = math.log(torch.finfo(log_p.dtype).tiny) + 1.0
    upper_half = log_p > -math.log(2.0)
    deep_tail = log_p < tiny_log
    # Upper half: Phi^-1(p) = -Phi^-1(1 - p), with 1 - p = -expm1(log_p) kept exact; one ndtri for both.
    safe = torch.where(deep_tail, -1.0, log_p)
    z = torch.special.ndtri(torch.where(upper_half, -torch.expm1(safe), torch.exp(safe)))
    x = torch.where(upper_half, -z, z)
    # Deep lower tail (p below the dtype's smallest normal; only for locations far outside the support). On a
    # CPU it is skipped when no element needs it; on an accelerator that test would be a host sync, so the
    # branch is always computed there.
    if log_p.device.type != "cpu" or bool(deep_tail.any()):
        x = torch.where(deep_tail, _deep_tail_quantile(log_p, deep_tail, tiny_log), x)
    return x


def _standard_quantile(
    alpha: torch.Tensor, beta: torch.Tensor, log_z: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """``Phi^-1(Phi(alpha) + value * Z)``, the standardised quantile, mirrored in the upper tail."""
    mirrored = (alpha + beta) > 0
    # In the mirror image the quantile 1 - value of -X is taken from the lower bound -beta.
    start = torch.where(mirrored, -beta, alpha)
    fraction = torch.where(mirrored, 1.0 - value, value)
    tiny = torch.finfo(fraction.dtype).tiny
    log_p = torch.logaddexp(torch.special.log_ndtr(start), torch.log(fraction.clamp_min(tiny)) + log_z)
    z = ndtri_exp(log_p.clamp(max=-tiny))
    return torch.where(mirrored, -z, z)


class _TorchOps:
    """The array functions :func:`_sample_and_log_prob_in_interval` needs, on torch tensors."""

    abs = staticmethod(torch.abs)
    exp = staticmethod(torch.exp)
    log = staticmethod(torch.log)
    log1p = staticmethod(torch.log1p)
    expm1 = staticmethod(torch.expm1)
    logaddexp = staticmethod(torch.logaddexp)
    log_ndtr = staticmethod(torch.special.log_ndtr)
    ndtri_exp = staticmethod(ndtri_exp)
    where = staticmethod(torch.where)
    clip = staticmethod(torch.clamp)


@functools.cache
def _scipy_ops() -> type | None:
    """The same functions on float64 NumPy arrays through SciPy (``None`` without SciPy).

    A rollout samples one state per step and a PPO minibatch holds a few dozen: there torch's per-operation
    dispatch, not the arithmetic, is the cost. NumPy and SciPy's ufuncs take a fraction of it per call, and
    their ``ndtri_exp`` covers the deep tail itself.
    """
    try:
        from scipy import special
    except ImportError:
        return None
    import numpy as np

    class _ScipyOps:
        abs = staticmethod(np.abs)
        exp = staticmethod(np.exp)
        log = staticmethod(np.log)
        log1p = staticmethod(np.log1p)
        expm1 = staticmethod(np.expm1)
        logaddexp = staticmethod(np.logaddexp)
        log_ndtr = staticmethod(special.log_ndtr)
        ndtri_exp = staticmethod(special.ndtri_exp)
        where = staticmethod(np.where)

        @staticmethod
        def to_tensor(array: np.ndarray, dtype: np.dtype) -> torch.Tensor:
            """A CPU tensor of ``dtype``, cast by NumPy (cheaper than torch on small arrays; 0-d results too)."""
            return torch.from_numpy(np.asarray(array).astype(dtype, copy=False))

        @staticmethod
        def clip(x: np.ndarray, low: float, high: float) -> np.ndarray:
            return np.minimum(np.maximum(x, low), high)  # np.clip's Python wrapper costs more than both

    return _ScipyOps


def _array_ops(tensor: torch.Tensor):
    """The namespace the array formulas run with: SciPy's on the CPU (eager, SciPy installed), torch's otherwise."""
    if tensor.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        scipy_ops = _scipy_ops()
        if scipy_ops is not None:
            return scipy_ops
    return _TorchOps


def _log_normalizer_in_interval(ops, loc, scale, center: float, half_width: float):
    """``(ln Phi(a), ln Z)`` on ``[center - half_width, center + half_width]``, on the mirror image.

    With ``d = |loc - center|`` the standardised bounds ``a = (-half_width - d) / scale`` and
    ``b = (half_width - d) / scale`` keep the interval in the lower tail of the standard normal, so
    ``ln Z = ln Phi(b) + ln(-expm1(ln Phi(a) - ln Phi(b)))`` never cancels and needs no elementwise choice; it is
    exact to the dtype's resolution in absolute terms, which is what log-probabilities and entropies need.
    """
    distance = ops.abs(loc - center)
    log_phi_a = ops.log_ndtr((-half_width - distance) / scale)
    log_phi_b = ops.log_ndtr((half_width - distance) / scale)
    return log_phi_a, log_phi_b + ops.log(-ops.expm1(log_phi_a - log_phi_b))


def _sample_and_log_prob_in_interval(ops, loc, scale, center: float, half_width: float, u):
    """A sample on ``[center - half_width, center + half_width]`` and its log-density, in few operations.

    The quantile of :func:`_standard_quantile`, taken on the mirror image that keeps the interval in the lower
    tail of the standard normal: with ``d = |loc - center|`` its standardised bounds are
    ``a = (-half_width - d) / scale`` and ``b = (half_width - d) / scale`` on either side of the centre, so no
    elementwise choice is needed until the end. ``u`` (uniform) is the quantile's level in that image:
    ``x = loc + s * scale * Phi^-1(Phi(a) + u * Z)`` with ``s = -1`` below the centre (the sample
    :meth:`TruncatedNormal.icdf` gives for ``1 - u`` there and ``u`` above; the same distribution).
    ``ln Z`` is :func:`_log_normalizer_in_interval`'s. The log-density at the sample is read off the standardised
    quantile ``z`` it is made of: ``-z^2 / 2 - ln(2 pi) / 2 - ln(scale) - ln(Z)``. Written once for any array
    library whose functions ``ops`` names (:class:`_TorchOps`, :func:`_scipy_ops`); without gradient.
    """
    x, z, log_z = _sample_in_interval(ops, loc, scale, center, half_width, u)
    return x, _log_prob_of_sample(ops, z, scale, log_z)


def _sample_in_interval(ops, loc, scale, center: float, half_width: float, u):
    """``(x, z, ln Z)``: :func:`_sample_and_log_prob_in_interval`'s sample, and what its log-density is read off
    (:func:`_log_prob_of_sample`), for callers that may never need it."""
    z, log_z = _standardized_sample_in_interval(ops, loc, scale, center, half_width, u)
    return ops.clip(loc + scale * z, center - half_width, center + half_width), z, log_z


def _sample_arrays_in_interval(ops, loc, scale, center: float, half_width: float, u, eps: float):
    """:func:`_sample_in_interval` through NumPy/SciPy ``ops``, on float64 copies of the CPU tensors ``loc``,
    ``scale`` and the levels ``u`` (broadcast against each other by NumPy), the levels kept in ``[eps, 1 - eps]``.

    :return: ``(x, z, ln Z, scale)`` as float64 arrays, the last three what :func:`_log_prob_of_sample` reads.
    """
    loc, scale, u = (t.numpy().astype("float64") for t in (loc, scale, u))
    x, z, log_z = _sample_in_interval(ops, loc, scale, center, half_width, ops.clip(u, eps, 1.0 - eps))
    return x, z, log_z, scale


def _log_prob_of_sample(ops, z, scale, log_z):
    """The log-density at the sample ``loc + scale * z`` of :func:`_sample_in_interval`:
    ``-z^2 / 2 - ln(2 pi) / 2 - ln(scale) - ln(Z)``."""
    return -(0.5 * z * z + (_HALF_LOG_2PI + ops.log(scale) + log_z))


def _standardized_sample_in_interval(ops, loc, scale, center: float, half_width: float, u):
    """``(z, ln Z)``: the standardised sample ``z = (x - loc) / scale`` of level ``u`` in the mirror image of
    :func:`_sample_and_log_prob_in_interval`, and the log-normaliser."""
    log_phi_a, log_z = _log_normalizer_in_interval(ops, loc, scale, center, half_width)
    # Below 0, where the quantile is finite: u <= 1 - eps keeps Phi(a) + u Z below Phi(b) <= 1 even rounded.
    z = ops.ndtri_exp(ops.logaddexp(log_phi_a, ops.log(u) + log_z))
    return ops.where(loc < center, -z, z), log_z


def _reparameterized_sample_in_interval(
    ops, loc, scale, center: float, half_width: float, u, derivatives: bool
):
    """``x = icdf(u)`` on ``[center - half_width, center + half_width]`` and, if ``derivatives``, ``(dx/d loc,
    dx/d scale)`` (formulas in :class:`_ReparameterizedSample`), else ``None``.

    The quantile of :func:`_standardized_sample_in_interval` at level ``1 - u`` below the centre and ``u`` above,
    which is ``icdf(u)`` itself. Written once for any array library whose functions ``ops`` names.
    """
    low, high = center - half_width, center + half_width
    z, _ = _standardized_sample_in_interval(
        ops, loc, scale, center, half_width, ops.where(loc < center, 1.0 - u, u)
    )
    raw = loc + scale * z
    x = ops.clip(raw, low, high)
    if not derivatives:
        return x, None
    alpha, beta = (low - loc) / scale, (high - loc) / scale
    # w_a = (1 - u) phi(alpha) / phi(z), w_b = u phi(beta) / phi(z).
    w_a = ops.exp(ops.log1p(-u) + 0.5 * (z * z - alpha * alpha))
    w_b = ops.exp(ops.log(u) + 0.5 * (z * z - beta * beta))
    # A clamped sample does not move with the parameters (as the clamp's own gradient says).
    inside = (raw >= low) & (raw <= high)
    return x, (ops.where(inside, 1.0 - w_a - w_b, 0.0), ops.where(inside, z - alpha * w_a - beta * w_b, 0.0))


class _ReparameterizedSample(torch.autograd.Function):
    """``x = loc + scale * Phi^-1(Phi(alpha) + u * Z)`` with its gradient in closed form (spec 1.1).

    Differentiating ``Phi((x - loc) / scale) = (1 - u) Phi(alpha) + u Phi(beta)`` gives, with ``z = (x - loc) /
    scale``, ``w_a = (1 - u) phi(alpha) / phi(z)`` and ``w_b = u phi(beta) / phi(z)``:
    ``dx/dloc = 1 - w_a - w_b`` and ``dx/dscale = z - alpha w_a - beta w_b``. The forward records no graph and
    the backward is two products, instead of differentiating the few dozen operations of the quantile. With
    number bounds the forward is :func:`_reparameterized_sample_in_interval`, on the CPU in float64 through
    NumPy and SciPy (:func:`_array_ops`): SAC's batch of a few hundred states costs torch's per-operation
    dispatch more than arithmetic.
    """

    @staticmethod
    def forward(ctx, loc, scale, u, low, high, standardized_bounds=None):
        derivatives = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        if isinstance(low, Number) and isinstance(high, Number):
            ops = _array_ops(loc)
            center, half_width = 0.5 * (low + high), 0.5 * (high - low)
            if ops is _TorchOps:
                x, saved = _reparameterized_sample_in_interval(
                    ops, loc, scale, center, half_width, u, derivatives
                )
            else:
                dtype = loc.detach().numpy().dtype
                loc, scale, u = (t.detach().numpy().astype("float64") for t in (loc, scale, u))
                x, saved = _reparameterized_sample_in_interval(
                    ops, loc, scale, center, half_width, u, derivatives
                )
                x = ops.to_tensor(x, dtype)
                saved = saved and tuple(ops.to_tensor(d, dtype) for d in saved)
            if derivatives:
                ctx.save_for_backward(*saved)
            return x
        if standardized_bounds is None:
            alpha, beta = (low - loc) / scale, (high - loc) / scale
            log_z = log_ndtr_diff(beta, alpha)
        else:  # (alpha, beta, log Z), already computed by the distribution
            alpha, beta, log_z = standardized_bounds
        z = _standard_quantile(alpha, beta, log_z, u)
        raw = loc + scale * z
        x = raw.clamp(low, high)
        if derivatives:
            log_pdf_z = _log_normal_pdf(z)
            w_a = torch.exp(torch.log1p(-u) + _log_normal_pdf(alpha) - log_pdf_z)
            w_b = torch.exp(torch.log(u) + _log_normal_pdf(beta) - log_pdf_z)
            # A clamped sample does not move with the parameters (as the clamp's own gradient says).
            inside = ((raw >= low) & (raw <= high)).to(x.dtype)
            ctx.save_for_backward(inside * (1.0 - w_a - w_b), inside * (z - alpha * w_a - beta * w_b))
        return x

    @staticmethod
    def backward(ctx, grad_x):
        dx_dloc, dx_dscale = ctx.saved_tensors
        grad_loc = grad_x * dx_dloc if ctx.needs_input_grad[0] else None
        grad_scale = grad_x * dx_dscale if ctx.needs_input_grad[1] else None
        return grad_loc, grad_scale, None, None, None, None


class _LogZAndDensityRatios(torch.autograd.Function):
    """``(ln Z, phi(alpha) / Z, phi(beta) / Z)`` for ``Z = Phi(beta) - Phi(alpha)``, with the gradient in closed form.

    With ``pa = phi(alpha) / Z``, ``pb = phi(beta) / Z`` and ``phi'(x) = -x phi(x)``: ``d ln Z / d alpha = -pa``,
    ``d ln Z / d beta = pb``, ``d pa / d alpha = pa (pa - alpha)``, ``d pa / d beta = -pa pb``,
    ``d pb / d alpha = pa pb`` and ``d pb / d beta = -pb (beta + pb)``. The log-probability, entropy, mean and
    variance need no more than these three; the backward is a few products instead of differentiating the
    tail-safe ``log_ndtr_diff``.
    """

    @staticmethod
    def forward(ctx, alpha, beta):
        log_z = log_ndtr_diff(beta, alpha)
        pa = torch.exp(_log_normal_pdf(alpha) - log_z)
        pb = torch.exp(_log_normal_pdf(beta) - log_z)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(alpha, beta, pa, pb)
        return log_z, pa, pb

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_z, grad_pa, grad_pb):
        alpha, beta, pa, pb = ctx.saved_tensors
        grad_alpha = torch.zeros_like(alpha)
        grad_beta = torch.zeros_like(beta)
        if grad_log_z is not None:
            grad_alpha -= grad_log_z * pa
            grad_beta += grad_log_z * pb
        if grad_pa is not None:
            weighted = grad_pa * pa
            grad_alpha += weighted * (pa - alpha)
            grad_beta -= weighted * pb
        if grad_pb is not None:
            weighted = grad_pb * pb
            grad_alpha += weighted * pa
            grad_beta -= weighted * (beta + pb)
        return grad_alpha, grad_beta


def _log_prob_and_entropy_in_interval(ops, loc, scale, value, center: float, half_width: float):
    """``(log_prob(value), entropy, saved)`` on ``[center - half_width, center + half_width]``, without gradient.

    ``saved`` holds what :func:`_log_prob_and_entropy_gradients` reads. Written once for any array library whose
    functions ``ops`` names (:class:`_TorchOps`, :func:`_scipy_ops`).
    """
    _, log_z = _log_normalizer_in_interval(ops, loc, scale, center, half_width)
    low, high = center - half_width, center + half_width
    alpha = (low - loc) / scale
    beta = (high - loc) / scale
    log_norm = _HALF_LOG_2PI + log_z  # pa = phi(alpha) / Z = exp(-alpha^2 / 2 - ln(2 pi) / 2 - ln Z)
    pa = ops.exp(-0.5 * alpha * alpha - log_norm)
    pb = ops.exp(-0.5 * beta * beta - log_norm)
    xi = (value - loc) / scale
    log_norm = log_norm + ops.log(scale)  # of the density: ln(sqrt(2 pi) scale Z)
    inside = (value >= low) & (value <= high)
    log_prob = ops.where(inside, -0.5 * xi * xi - log_norm, -math.inf)
    tail = alpha * pa - beta * pb
    entropy = 0.5 + log_norm + 0.5 * tail  # ln(sqrt(2 pi e) scale Z) + T / 2
    return log_prob, entropy, (scale, alpha, beta, pa, pb, xi, tail, inside)


def _log_prob_and_entropy_gradients(ops, saved, grad_log_prob, grad_entropy, value_grad: bool):
    """The gradients of :func:`_log_prob_and_entropy_in_interval`'s outputs for ``loc``, ``scale`` and ``value``.

    ``grad_log_prob`` or ``grad_entropy`` may be ``None`` (not used by the loss), not both. ``value``'s gradient
    is ``None`` unless ``value_grad``. Formulas in :class:`_LogProbAndEntropy`.
    """
    scale, alpha, beta, pa, pb, xi, tail, inside = saved
    # Gradients times scale, divided by it once at the end.
    loc_term = scale_term = 0.0
    grad_value = None
    if grad_log_prob is not None:
        inside_grad = ops.where(inside, grad_log_prob, 0.0)
        loc_term = inside_grad * (xi - pa + pb)
        scale_term = inside_grad * (xi * xi - 1.0 - tail)
        if value_grad:
            grad_value = -inside_grad * xi / scale
    if grad_entropy is not None:
        d_alpha = 0.5 * pa * (tail - alpha * alpha - 1.0)
        d_beta = 0.5 * pb * (beta * beta - tail + 1.0)
        loc_term = loc_term - grad_entropy * (d_alpha + d_beta)
        scale_term = scale_term + grad_entropy * (1.0 - alpha * d_alpha - beta * d_beta)
    return loc_term / scale, scale_term / scale, grad_value


class _LogProbAndEntropy(torch.autograd.Function):
    """``(log_prob(value), entropy)`` of the truncated normal on ``[low, high]`` (numbers), one node in the graph.

    The same quantities as :meth:`TruncatedNormal.log_prob` and :meth:`TruncatedNormal.entropy` (``ln Z``,
    ``pa = phi(alpha) / Z``, ``pb = phi(beta) / Z``), with the gradient in closed form:
    for ``xi = (value - loc) / scale`` and ``T = alpha pa - beta pb``, the log-probability has
    ``d/d loc = (xi - pa + pb) / scale``, ``d/d scale = (xi^2 - 1 - T) / scale`` and
    ``d/d value = -xi / scale`` inside the support (0 outside, where it is ``-inf``); the entropy has
    ``d/d alpha = pa (T - alpha^2 - 1) / 2`` and ``d/d beta = pb (beta^2 - T + 1) / 2``, hence
    ``d/d loc = -(d/d alpha + d/d beta) / scale`` and
    ``d/d scale = (1 - alpha d/d alpha - beta d/d beta) / scale``. A training step (PPO's log-ratio and
    entropy, SAC's actor loss) records one node instead of a few dozen elementwise ones. On the CPU with SciPy
    both passes run in float64 on NumPy arrays (:func:`_array_ops`): a minibatch of a few dozen states costs
    torch's per-operation dispatch more than arithmetic.
    """

    @staticmethod
    def forward(ctx, loc, scale, value, low: float, high: float):
        ops = _array_ops(loc)
        center, half_width = 0.5 * (low + high), 0.5 * (high - low)
        ctx.set_materialize_grads(False)
        ctx.ops = ops
        if ops is _TorchOps:
            log_prob, entropy, saved = _log_prob_and_entropy_in_interval(
                ops, loc, scale, value, center, half_width
            )
            ctx.save_for_backward(*saved)
            return log_prob, entropy
        loc, scale, value = (t.detach().numpy() for t in (loc, scale, value))
        ctx.dtype = loc.dtype
        arrays = (t.astype("float64") for t in (loc, scale, value))
        log_prob, entropy, ctx.arrays = _log_prob_and_entropy_in_interval(ops, *arrays, center, half_width)
        return ops.to_tensor(log_prob, ctx.dtype), ops.to_tensor(entropy, ctx.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_prob, grad_entropy):
        ops, value_grad = ctx.ops, ctx.needs_input_grad[2]
        if ops is _TorchOps:
            grads = _log_prob_and_entropy_gradients(
                ops, ctx.saved_tensors, grad_log_prob, grad_entropy, value_grad
            )
        else:
            grad_log_prob, grad_entropy = (
                None if g is None else g.numpy().astype("float64") for g in (grad_log_prob, grad_entropy)
            )
            grads = _log_prob_and_entropy_gradients(ops, ctx.arrays, grad_log_prob, grad_entropy, value_grad)
            grads = tuple(None if g is None else ops.to_tensor(g, ctx.dtype) for g in grads)
        grad_loc, grad_scale, grad_value = (
            grad if needed else None for grad, needed in zip(grads, ctx.needs_input_grad, strict=False)
        )
        return grad_loc, grad_scale, grad_value, None, None


def uniform_levels(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """The quantile levels of :meth:`TruncatedNormal.rsample`: ``u ~ Uniform(eps, 1 - eps)`` of ``like``'s dtype and
    device (from torch's generator), kept off 0 and 1 so that the quantile stays finite.

    :param shape: shape of the levels.
    :param like: a tensor of the dtype and device to draw in.
    """
    eps = torch.finfo(like.dtype).eps
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp_(eps, 1.0 - eps)


class TruncatedNormal(Distribution):
    """Normal distribution ``N(loc, scale^2)`` restricted to ``[low, high]`` and renormalised.

    :param loc: location of the parent normal (the mode when inside ``[low, high]``).
    :param scale: scale of the parent normal, ``> 0``.
    :param low: lower bound of the support.
    :param high: upper bound of the support, ``> low``.
    :param validate_args: check the arguments, as for every ``torch.distributions.Distribution`` (``None``: the
        global default).

    Half-precision parameters (bfloat16, float16) are computed in float32 and results are returned in
    the parameters' dtype, since PyTorch's ``log_ndtr`` has no half-precision kernels.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor | float,
        scale: torch.Tensor | float,
        low: torch.Tensor | float = -1.0,
        high: torch.Tensor | float = 1.0,
        validate_args: bool | None = None,
    ) -> None:
        # Fast path for the common case (tensor loc/scale of one shape, number bounds): no broadcast, no sync.
        if isinstance(low, Number) and isinstance(high, Number):
            if not low < high:
                raise ValueError(f"TruncatedNormal needs low < high, got low={low}, high={high}")
            loc_t, scale_t = (
                v if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for v in (loc, scale)
            )
            if loc_t.shape != scale_t.shape or loc_t.dtype != scale_t.dtype:
                loc_t, scale_t = broadcast_all(loc_t, scale_t)
            params = (loc_t, scale_t, float(low), float(high))
        else:
            params = broadcast_all(loc, scale, low, high)
            if not torch.jit.is_tracing() and bool((params[2] >= params[3]).any()):
                raise ValueError(f"TruncatedNormal needs low < high everywhere, got low={low}, high={high}")
        self._out_dtype = params[0].dtype
        if self._out_dtype in (torch.bfloat16, torch.float16):
            params = tuple(p.float() if isinstance(p, torch.Tensor) else p for p in params)
        self.loc, self.scale, self.low, self.high = params
        batch_shape = torch.Size() if all(isinstance(v, Number) for v in (loc, scale)) else self.loc.shape
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    # Computed on first use: a distribution that is only sampled (rsample computes its own) never needs them.
    @functools.cached_property
    def _alpha(self) -> torch.Tensor:
        return (self.low - self.loc) / self.scale

    @functools.cached_property
    def _beta(self) -> torch.Tensor:
        return (self.high - self.loc) / self.scale

    @functools.cached_property
    def _truncation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ln Z, phi(alpha) / Z, phi(beta) / Z)``, differentiable in closed form."""
        return _LogZAndDensityRatios.apply(self._alpha, self._beta)

    @property
    def _log_z(self) -> torch.Tensor:
        return self._truncation[0]

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        """The interval ``[low, high]``."""
        return constraints.interval(self.low, self.high)

    def expand(self, batch_shape: torch.Size, _instance: TruncatedNormal | None = None) -> TruncatedNormal:
        """A view of this distribution with a larger batch shape (as ``torch.distributions.Distribution.expand``).

        :param batch_shape: the new batch shape.
        :param _instance: an instance of a subclass to fill (PyTorch's protocol for subclasses).
        """
        new = self._get_checked_instance(TruncatedNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in ("loc", "scale", "low", "high", "_alpha", "_beta"):
            value = getattr(self, name)
            setattr(new, name, value.expand(batch_shape) if isinstance(value, torch.Tensor) else value)
        new._truncation = tuple(value.expand(batch_shape) for value in self._truncation)
        new._out_dtype = self._out_dtype
        super(TruncatedNormal, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mode(self) -> torch.Tensor:
        """``loc`` clamped to ``[low, high]``."""
        return self.loc.clamp(self.low, self.high).to(self._out_dtype)

    @property
    def mean(self) -> torch.Tensor:
        """``loc + scale (phi(alpha) - phi(beta)) / Z``."""
        _, pa, pb = self._truncation
        mean = self.loc + self.scale * (pa - pb)
        return mean.to(self._out_dtype)

    @property
    def variance(self) -> torch.Tensor:
        """``scale^2 (1 + (alpha phi(alpha) - beta phi(beta)) / Z - ((phi(alpha) - phi(beta)) / Z)^2)``."""
        _, pa, pb = self._truncation
        variance = self.scale.pow(2) * (1.0 + self._alpha * pa - self._beta * pb - (pa - pb).pow(2))
        return variance.to(self._out_dtype)

    def entropy(self) -> torch.Tensor:
        """``ln(sqrt(2 pi e) scale Z) + (alpha phi(alpha) - beta phi(beta)) / (2 Z)`` per element."""
        log_z, pa, pb = self._truncation
        tail = self._alpha * pa - self._beta * pb
        entropy = _HALF_LOG_2PI_E + torch.log(self.scale) + log_z + 0.5 * tail
        return entropy.to(self._out_dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-density at ``value``: the parent normal's minus ``log Z`` inside ``[low, high]``, ``-inf`` outside.

        :param value: points, broadcast against the batch shape.
        """
        if self._validate_args:
            self._validate_sample(value)
        value = value.to(self.loc.dtype)
        if self._fusable(value) and torch.is_grad_enabled():
            log_prob = _LogProbAndEntropy.apply(self.loc, self.scale, value, self.low, self.high)[0]
            return log_prob.to(self._out_dtype)
        xi = (value - self.loc) / self.scale
        log_p = _log_normal_pdf(xi) - torch.log(self.scale) - self._log_z
        inside = (value >= self.low) & (value <= self.high)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf)).to(self._out_dtype)

    def log_prob_and_entropy(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_prob(value), entropy())`` in one pass, as a training step reads them (PPO's ratio and entropy).

        With number bounds and ``value`` of the batch shape, both come from one autograd node with a
        closed-form gradient (for ``loc``, ``scale`` and ``value``); otherwise from the two methods.

        :param value: points of the batch shape.
        :return: the log-probabilities and the entropies, both of the batch shape.
        """
        value = value.to(self.loc.dtype)
        if not self._fusable(value):
            return self.log_prob(value), self.entropy()
        if self._validate_args:
            self._validate_sample(value)
        log_prob, entropy = _LogProbAndEntropy.apply(self.loc, self.scale, value, self.low, self.high)
        return log_prob.to(self._out_dtype), entropy.to(self._out_dtype)

    def _fusable(self, value: torch.Tensor) -> bool:
        """Whether :class:`_LogProbAndEntropy` applies: number bounds and ``value`` of the batch shape."""
        return (
            not isinstance(self.low, torch.Tensor)
            and not isinstance(self.high, torch.Tensor)
            and value.shape == self.loc.shape
        )

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """``(Phi(xi) - Phi(alpha)) / Z`` with ``xi`` clamped to the support (0 below it, 1 above).

        :param value: points, broadcast against the batch shape.
        """
        xi = ((value.to(self.loc.dtype) - self.loc) / self.scale).clamp(min=self._alpha, max=self._beta)
        return torch.exp(log_ndtr_diff(xi, self._alpha) - self._log_z).clamp(0.0, 1.0).to(self._out_dtype)

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        """Quantile: ``loc + scale * Phi^-1(Phi(alpha) + value * Z)``, mirrored in the upper tail.

        ``icdf(0)`` is ``low`` and ``icdf(1)`` is ``high``; a level outside ``[0, 1]`` raises a ``ValueError``
        when the arguments are validated and gives NaN otherwise, as for ``torch.distributions.Normal``.
        """
        value = torch.as_tensor(value, dtype=self.loc.dtype, device=self.loc.device)
        outside = (value < 0) | (value > 1)
        if self._validate_args and bool(outside.any()):
            raise ValueError(
                f"TruncatedNormal.icdf expects probabilities in [0, 1], got values in "
                f"[{value.min().item()}, {value.max().item()}]"
            )
        x = self.loc + self.scale * _standard_quantile(self._alpha, self._beta, self._log_z, value)
        # The quantile keeps its levels off 0 and 1 so as to stay finite: at the ends it would stop a few dozen
        # standard deviations out, short of bounds that lie further.
        x = torch.where(
            value >= 1, self.high, torch.where(value <= 0, self.low, x.clamp(self.low, self.high))
        )
        return x.masked_fill(outside, math.nan).to(self._out_dtype)

    def sample_and_log_prob(
        self, sample_shape: torch.Size = torch.Size()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample (no gradient) and its log-probability, as ``x = sample(); log_prob(x)`` in fewer operations.

        Draws ``u ~ Uniform(eps, 1 - eps)`` like :meth:`rsample` and returns ``icdf(u)`` where the location is
        at or above the middle of ``[low, high]`` and ``icdf(1 - u)`` below it (the same distribution), with
        the log-density read off the quantile that made the sample, in a few dozen elementwise operations
        (number bounds; tensor bounds take the two-call route). Meant for rollouts, where one state per step
        makes the number of small operations the cost: on the CPU with SciPy installed the same formula runs
        in float64 on NumPy arrays (SciPy's ``log_ndtr`` and ``ndtri_exp``), torch's otherwise.

        :param sample_shape: Shape of the sample, prepended to the batch shape.
        :return: The sample and its elementwise log-probability, both of shape ``sample_shape + batch_shape``.
        """
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self.sample_and_log_prob(sample_shape)
        if isinstance(self.low, torch.Tensor) or isinstance(self.high, torch.Tensor):
            x = self.rsample(sample_shape)
            return x, self.log_prob(x)
        shape = self._extended_shape(sample_shape)
        eps = torch.finfo(self.loc.dtype).eps
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        center, half_width = 0.5 * (self.low + self.high), 0.5 * (self.high - self.low)
        ops = _array_ops(self.loc)
        if ops is not _TorchOps:
            x, z, log_z, scale = _sample_arrays_in_interval(
                ops, self.loc, self.scale, center, half_width, u, eps
            )
            dtype = self.loc.numpy().dtype
            x, log_prob = (
                ops.to_tensor(x, dtype),
                ops.to_tensor(_log_prob_of_sample(ops, z, scale, log_z), dtype),
            )
        else:
            x, log_prob = _sample_and_log_prob_in_interval(
                _TorchOps,
                self.loc.expand(shape),
                self.scale.expand(shape),
                center,
                half_width,
                u.clamp_(eps, 1.0 - eps),
            )
        return x.to(self._out_dtype), log_prob.to(self._out_dtype)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Reparameterised sample, ``icdf(u)`` for ``u ~ Uniform(eps, 1 - eps)``, with a closed-form gradient."""
        shape = self._extended_shape(sample_shape)
        u = uniform_levels(shape, self.loc)
        low, high = (v.expand(shape) if isinstance(v, torch.Tensor) else v for v in (self.low, self.high))
        # Number bounds take the one-pass formula. With tensor bounds and without gradient the distribution's own
        # alpha, beta and log Z are computed once and shared with a later log_prob; with gradient they are
        # computed without a graph inside the Function.
        bounds = None
        if isinstance(low, torch.Tensor) and not torch.is_grad_enabled():
            bounds = tuple(t.expand(shape) for t in (self._alpha, self._beta, self._log_z))
        x = _ReparameterizedSample.apply(
            self.loc.expand(shape), self.scale.expand(shape), u, low, high, bounds
        )
        return x.to(self._out_dtype)
