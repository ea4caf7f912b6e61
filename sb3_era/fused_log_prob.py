"""A training pass of :class:`~sb3_era.TruncatedNormalDistribution` in one autograd node.

PPO and A2C evaluate a minibatch of a few dozen states per gradient step: from the mean and the log-std's ERA
pre-activation, the activation, ``exp``, the broadcast of a state-independent log-std, ``tanh`` and the clamp just
inside the bounds, the truncated normal's log-probability and entropy, and their sums over the action dimensions.
Recorded op by op, each costs torch's dispatch and an autograd node forward and backward, more at this size than
the arithmetic. :class:`TanhTruncatedLogProbAndEntropy` runs the chain as one node: the activation and the location
by their torch functions without gradient, the truncated normal by ``era_core``'s formulas on float64 NumPy arrays
(those its own fused node runs), and the backward in closed form through each link. SAC, TQC and CrossQ draw
reparameterised actions twice per gradient step; :class:`TanhTruncatedSample` does the same for that draw.
With ``action_distribution="tanh"``, :class:`TanhGaussianLogProb` is the same for SB3's tanh-squashed Gaussian:
its log-probability of a minibatch's actions (:func:`squashed_gaussian_log_prob`, which a rollout's actions take
too), from the mean and the log-std after the activation.
"""

from __future__ import annotations

import numpy as np
import torch as th
from torch.autograd.function import once_differentiable

from era_core import GaussianERA, gaussian_era_log_std, max_feasible_target
from era_core.truncated_normal import (
    _HALF_LOG_2PI,
    _array_ops,
    _log_prob_and_entropy_gradients,
    _log_prob_and_entropy_in_interval,
    _reparameterized_sample_in_interval,
    _TorchOps,
)


def tanh_location(mean: th.Tensor) -> th.Tensor:
    """The truncated normal's location in the unit box (spec 1.1): ``tanh(mean)`` clamped to ``1 - eps`` of the
    means' dtype, so that it stays strictly inside the box.

    :param mean: unbounded means.
    """
    edge = 1.0 - th.finfo(mean.dtype).eps
    return th.tanh(mean).clamp(-edge, edge)


def _location_derivative(loc: np.ndarray) -> np.ndarray:
    """``d loc / d mean`` in float64 from :func:`tanh_location`'s output: ``1 - loc^2`` inside the clamp, 0 where it
    holds the location."""
    loc64 = loc.astype("float64")
    return np.where(np.abs(loc) < 1.0 - float(np.finfo(loc.dtype).eps), 1.0 - loc64 * loc64, 0.0)


def fusable(mean: th.Tensor, log_std: th.Tensor) -> bool:
    """Whether :class:`TanhTruncatedLogProbAndEntropy` applies: a ``(batch, D)`` float32 or float64 mean on the CPU
    with SciPy installed (eager, not traced or compiled) and a log-std of its dtype, per state or one per dimension.
    """
    return (
        mean.dim() == 2
        and mean.dtype in (th.float32, th.float64)
        and log_std.dtype == mean.dtype
        and log_std.shape in (mean.shape, mean.shape[-1:])
        and log_std.device == mean.device
        and _array_ops(mean) is not _TorchOps
    )


def valid_parameters(mean: th.Tensor, log_std: th.Tensor) -> bool:
    """Whether ``TruncatedNormal``'s parameter checks surely pass: no NaN mean, and a positive ``exp(log_std)``.

    ``False`` (also for an ERA pre-activation of ``-inf``, which the activation maps to a valid log-std) sends the
    pass to the eager path, whose checks raise torch's own error where the parameters are invalid.
    """
    # exp(min(log_std, 0)) is positive exactly where exp(log_std) is (an infinite scale passes torch's check too),
    # and NaN where log_std is, without overflowing (cheaper than silencing NumPy's warning with np.errstate).
    scale = np.exp(np.minimum(log_std.detach().numpy(), 0.0))
    return not np.isnan(mean.detach().numpy()).any() and bool((scale > 0).all())


def carries_gradient(grad: th.Tensor | None) -> bool:
    """Whether an output's gradient adds anything to a backward: given, and not all zeros.

    PPO and A2C-ERA (``ent_coef=0``) multiply the entropy by zero in their loss, so its gradient is exactly zero;
    the entropy's terms of :class:`TanhTruncatedLogProbAndEntropy`'s backward, finite for valid parameters, then add
    exactly zero to the log-probability's, and skipping them changes no gradient.
    """
    return grad is not None and bool(grad.any())


def plan_training_pass(mean: th.Tensor, log_std: th.Tensor, fuse: bool) -> tuple[bool, bool]:
    """How a distribution's ``proba_distribution`` treats this pass: ``(fused, build_now)``.

    A rollout (no gradient) is neither fused nor checked. A training pass (with gradient) is fused where ``fuse``
    is set, :func:`fusable` holds and, when torch validates distribution arguments, :func:`valid_parameters`
    holds; otherwise, when torch validates, the distribution is to be built now so that invalid parameters raise
    torch's own error.

    :param mean: the distribution's means.
    :param log_std: its log-stds, or their ERA pre-activations.
    :param fuse: the distribution's ``fuse_training_pass``.
    """
    grad = th.is_grad_enabled()
    validate = grad and bool(th.distributions.Distribution._validate_args)
    fused = grad and fuse and fusable(mean, log_std) and (not validate or valid_parameters(mean, log_std))
    return fused, validate and not fused


class TanhTruncatedLogProbAndEntropy(th.autograd.Function):
    """``(log_prob(actions), entropy)`` summed over the action dimensions, from ``mean`` and ``log_std``.

    ``loc = tanh_location(mean)``; ``scale = exp(log_std)``, broadcast against ``mean``, or with ``era``
    ``scale = exp(era(log_std))`` (no gradient reaches a learned ``delta`` through it, as through
    :meth:`era_core.GaussianERA.forward`); then ``era_core``'s truncated normal on ``[-1, 1]`` in float64. The log-scale
    correction of a box other than ``[-1, 1]`` is subtracted from the log-probabilities and added to the entropies.
    ``actions`` are in the unit box and get no gradient.

    Gradients (the entropy's terms only where its gradient is not all zeros, :func:`carries_gradient`):
    ``d/d mean = d/d loc (1 - loc^2)`` inside the clamp (where ``loc = tanh(mean)``), 0 where it holds
    the location; ``d/d log-std = scale d/d scale``, summed over the states for a state-independent log-std;
    through ERA's ``lmax + K softmax(z)``, ``d/dz = K s (g - <g, s>)`` for ``s = softmax(z)`` and ``g`` the log-std's
    gradient where it is above ``log_std_min`` (0 where the clamp holds it).
    """

    @staticmethod
    def forward(
        ctx, mean, log_std, actions: np.ndarray, log_scale_correction: float, era: GaussianERA | None
    ):
        ops = _array_ops(mean)
        # Location and activation by torch in the parameters' dtype, as the eager path and a rollout compute them:
        # at a scale of exp(-8) one ulp of tanh moves a log-probability by 1e-4. The truncated normal is float64.
        loc = tanh_location(mean.detach()).numpy()
        activation = None
        if era is None:
            era_log_std = log_std.detach().numpy()
        else:
            # era(log_std), less its shape check (fusable's).
            floor = era.entropy_floor()
            era_log_std = gaussian_era_log_std(
                log_std.detach(), floor, era.log_std_min, era.log_std_max
            ).numpy()
            k = floor.item() - max_feasible_target(era.action_dim, era.log_std_max)
            activation = (k, log_std.detach().numpy(), era_log_std > era.log_std_min)
        # A state-independent scale stays (D,): the formulas broadcast it against the (batch, D) location.
        scale = np.exp(era_log_std)
        log_prob, entropy, saved = _log_prob_and_entropy_in_interval(
            ops,
            loc.astype("float64"),
            scale.astype("float64"),
            actions.astype("float64", copy=False),
            0.0,
            1.0,
        )
        ctx.set_materialize_grads(False)
        ctx.saved = (ops, saved, loc, log_std.dim() == 1, activation)
        return (
            ops.to_tensor(log_prob.sum(-1) - log_scale_correction, loc.dtype),
            ops.to_tensor(entropy.sum(-1) + log_scale_correction, loc.dtype),
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_prob, grad_entropy):
        ops, saved, loc, shared_std, activation = ctx.saved
        if grad_log_prob is not None and not carries_gradient(grad_entropy):
            grad_entropy = None
        # (batch, 1) columns: the formulas broadcast them against the (batch, D) terms.
        grads = (
            None if g is None else g.numpy().astype("float64")[:, None] for g in (grad_log_prob, grad_entropy)
        )
        grad_loc, grad_scale, _ = _log_prob_and_entropy_gradients(ops, saved, *grads, False)
        grad_mean = grad_log_std = None
        if ctx.needs_input_grad[0]:
            grad_mean = ops.to_tensor(grad_loc * _location_derivative(loc), loc.dtype)
        if ctx.needs_input_grad[1]:
            grad_log_std = grad_scale * saved[0]  # saved[0] is the scale, (D,) or (batch, D)
            if shared_std:
                grad_log_std = grad_log_std.sum(0)
            if activation is not None:
                k, z, above_min = activation
                g = np.where(above_min, grad_log_std, 0.0)
                s = th.softmax(th.from_numpy(z.astype("float64")), dim=-1).numpy()  # a third of SciPy's call
                grad_log_std = k * s * (g - (g * s).sum(-1, keepdims=True))
            grad_log_std = ops.to_tensor(grad_log_std, loc.dtype)
        return grad_mean, grad_log_std, None, None, None


class TanhTruncatedSample(th.autograd.Function):
    """Reparameterised actions in the unit box at the quantile levels ``u``, from ``mean`` and ``log_std``.

    ``loc = tanh_location(mean)`` and ``scale = exp(log_std)``, broadcast against ``mean``, by torch in the
    parameters' dtype (as the op-by-op path computes them); then ``era_core``'s quantile ``x = icdf(u)`` of the
    truncated normal on ``[-1, 1]`` and its derivatives in float64 (:class:`era_core.TruncatedNormal`'s
    ``rsample`` with the same ``u`` gives the same actions). Gradients: ``d/d mean = dx/d loc (1 - loc^2)`` inside
    the location's clamp, 0 where it holds; ``d/d log-std = scale dx/d scale`` per state (autograd sums it over
    the states for a state-independent log-std).
    """

    @staticmethod
    def forward(ctx, mean, log_std, u):
        ops = _array_ops(mean)
        loc = tanh_location(mean.detach()).numpy()
        scale = th.exp(log_std.detach()).numpy()
        derivatives = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        x, saved = _reparameterized_sample_in_interval(
            ops,
            loc.astype("float64"),
            np.broadcast_to(scale.astype("float64"), loc.shape),
            0.0,
            1.0,
            u.numpy().astype("float64"),
            derivatives,
        )
        if derivatives:
            dx_dloc, dx_dscale = saved
            ctx.saved = (ops, loc.dtype, dx_dloc * _location_derivative(loc), dx_dscale * scale)
        return ops.to_tensor(x, loc.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_x):
        ops, dtype, dx_dmean, dx_dlog_std = ctx.saved
        grad = grad_x.numpy().astype("float64")
        grad_mean = ops.to_tensor(grad * dx_dmean, dtype) if ctx.needs_input_grad[0] else None
        grad_log_std = ops.to_tensor(grad * dx_dlog_std, dtype) if ctx.needs_input_grad[1] else None
        return grad_mean, grad_log_std, None


def squashed_gaussian_log_prob(
    actions: np.ndarray, mean: np.ndarray, log_std: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SB3's ``SquashedDiagGaussianDistribution.log_prob(actions)`` (no ``gaussian_actions``) in float64.

    ``gaussian = atanh(clip(actions, -1 + eps, 1 - eps))`` with ``eps`` of the actions' dtype (SB3's
    ``TanhBijector.inverse``); the Gaussian's log-density there, ``-xi^2 / 2 - log_std - ln(2 pi) / 2`` with
    ``xi = (gaussian - mean) / exp(log_std)``; less SB3's squash correction ``ln(1 - actions^2 + epsilon)``.

    :param actions: squashed actions, ``(batch, D)``, in ``[-1, 1]``.
    :param mean: the Gaussian's means, ``(batch, D)``.
    :param log_std: its log-stds, ``(D,)`` or ``(batch, D)``.
    :param epsilon: the distribution's ``epsilon`` in the squash correction.
    :return: ``(log_prob, xi, 1 / std)``: the log-probabilities summed over the action dimensions, and what the
        gradients read.
    """
    edge = 1.0 - float(np.finfo(actions.dtype).eps)
    actions64 = actions.astype("float64")
    log_std64 = log_std.astype("float64")
    inv_std = np.exp(-log_std64)
    xi = (np.arctanh(np.minimum(np.maximum(actions64, -edge), edge)) - mean.astype("float64")) * inv_std
    log_prob = -(0.5 * xi * xi + log_std64 + _HALF_LOG_2PI) - np.log(1.0 - actions64 * actions64 + epsilon)
    return log_prob.sum(-1), xi, inv_std


class TanhGaussianLogProb(th.autograd.Function):
    """``log_prob(actions)`` of SB3's tanh-squashed Gaussian, summed over the action dimensions, from ``mean`` and
    ``log_std`` (:func:`squashed_gaussian_log_prob`), in the dtype torch promotes the means' and the actions' to.

    ``log_std`` is ``(D,)`` (state-independent: its gradient is summed over the states) or per state; ``actions``
    get no gradient. Gradients: ``d/d mean = xi / std`` and ``d/d log-std = xi^2 - 1``.
    """

    @staticmethod
    def forward(ctx, mean, log_std, actions: np.ndarray, epsilon: float):
        ops, mean_array = _array_ops(mean), mean.detach().numpy()
        log_prob, xi, inv_std = squashed_gaussian_log_prob(
            actions, mean_array, log_std.detach().numpy(), epsilon
        )
        ctx.saved = (ops, xi, inv_std, log_std.dim() == 1, mean_array.dtype)
        return ops.to_tensor(log_prob, np.promote_types(mean_array.dtype, actions.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_prob):
        ops, xi, inv_std, shared_std, dtype = ctx.saved
        grad = grad_log_prob.numpy().astype("float64")[:, None]
        grad_mean = grad_log_std = None
        if ctx.needs_input_grad[0]:
            grad_mean = ops.to_tensor(grad * xi * inv_std, dtype)
        if ctx.needs_input_grad[1]:
            grad_log_std = grad * (xi * xi - 1.0)
            grad_log_std = ops.to_tensor(grad_log_std.sum(0) if shared_std else grad_log_std, dtype)
        return grad_mean, grad_log_std, None, None
