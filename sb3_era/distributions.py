"""SB3 action distribution built on :class:`era_core.TruncatedNormal` (spec section 1.1)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.distributions import (
    DiagGaussianDistribution,
    SquashedDiagGaussianDistribution,
    sum_independent_dims,
)
from torch.distributions import Normal

from era_core import GaussianERA, TruncatedNormal
from era_core.truncated_normal import (
    _array_ops,
    _log_prob_of_sample,
    _sample_arrays_in_interval,
    uniform_levels,
)
from sb3_era.fused_log_prob import (
    TanhGaussianLogProb,
    TanhTruncatedLogProbAndEntropy,
    TanhTruncatedSample,
    fusable,
    plan_training_pass,
    squashed_gaussian_log_prob,
    tanh_location,
)

SelfTruncatedNormalDistribution = TypeVar(
    "SelfTruncatedNormalDistribution", bound="TruncatedNormalDistribution"
)
SelfRolloutSquashedDiagGaussian = TypeVar(
    "SelfRolloutSquashedDiagGaussian", bound="RolloutSquashedDiagGaussianDistribution"
)


class TruncatedNormalDistribution(DiagGaussianDistribution):
    """
    Diagonal Gaussian truncated to a box, the bounded policy of the ERA authors (spec 1.1).

    The network outputs a mean ``mu`` and a log-std, as for SB3's ``DiagGaussianDistribution`` (so it
    is built with the same ``proba_distribution_net`` and used wherever that one is). In the unit box
    ``[-1, 1]^D`` the location is ``tanh(mu)``, kept just inside the bounds, and the scale is
    ``exp(log_std)``; the deterministic action is the mode, i.e. the location. When ``low``/``high``
    differ from ``-1``/``1`` the unit box is mapped affinely onto them, so log-probabilities and the
    entropy are those of the actions in the env's units.

    :param action_dim: Dimension of the action space.
    :param low: Lower bounds of the actions (scalar, or one per dimension in any shape, e.g. a ``Box``'s).
    :param high: Upper bounds of the actions (scalar, or one per dimension in any shape).
    """

    #: Whether :meth:`entropy` records a graph. ``ERAPPO``/``ERAA2C`` turn it off inside ``train()`` when
    #: ``ent_coef`` is 0, where the loss only multiplies the entropy by zero (it is still logged).
    entropy_needs_grad: bool = True
    #: Whether a training pass on the CPU takes its log-probability and entropy, or its reparameterised sample, from
    #: one autograd node (:mod:`sb3_era.fused_log_prob`); ``False`` records the same computation op by op.
    fuse_training_pass: bool = True

    def __init__(self, action_dim: int, low: float | np.ndarray = -1.0, high: float | np.ndarray = 1.0):
        super().__init__(action_dim)
        # Bounds of a multi-dimensional Box (e.g. shape (2, 2)) are flattened like the actions SB3 stores.
        low_arr = np.broadcast_to(np.asarray(low, dtype=np.float32).ravel(), (action_dim,))
        high_arr = np.broadcast_to(np.asarray(high, dtype=np.float32).ravel(), (action_dim,))
        if not (
            np.all(np.isfinite(low_arr)) and np.all(np.isfinite(high_arr)) and np.all(low_arr < high_arr)
        ):
            raise ValueError(
                f"TruncatedNormalDistribution needs finite bounds with low < high, got low={low}, high={high}"
            )
        self.center = th.as_tensor((high_arr + low_arr) / 2.0)
        self.half_range = th.as_tensor((high_arr - low_arr) / 2.0)
        self.is_unit_box = bool(np.all(low_arr == -1.0) and np.all(high_arr == 1.0))
        # log|det| of the map from the unit box to [low, high]; subtract it to get unit-box entropies.
        self.log_scale_correction = float(np.log((high_arr - low_arr) / 2.0).sum())
        # (actions, their version counter, log-probability) of the last sample drawn without gradient; the
        # log-probability may be a function computing it on its first read (SAC never reads it).
        self._sampled: tuple[th.Tensor, int, th.Tensor | Callable[[], th.Tensor]] | None = None
        # The entropy (summed, in env units) computed beside the last log-probability with gradient.
        self._entropy: th.Tensor | None = None
        # The parameters of the last proba_distribution, whether it ran with gradient, and whether its training
        # pass's log_prob and entropy take the fused node.
        self._params: tuple[th.Tensor, th.Tensor, GaussianERA | None] | None = None
        self._grad = self._fused = False

    def proba_distribution(
        self: SelfTruncatedNormalDistribution,
        mean_actions: th.Tensor,
        log_std: th.Tensor,
        log_std_era: GaussianERA | None = None,
    ) -> SelfTruncatedNormalDistribution:
        """
        Create the distribution from the network's mean and log-std.

        A training pass (with gradient) on the CPU defers building :attr:`distribution`: its
        :meth:`log_prob` and :meth:`entropy` come from one autograd node on the parameters, ERA's activation
        included, and so does a :meth:`sample` (:mod:`sb3_era.fused_log_prob`); the truncated normal is built only
        if something else reads it. The parameters are checked here either way. A rollout (no gradient) checks
        nothing and builds it only if something reads it (on the CPU, its :meth:`sample` does not).

        :param mean_actions: Unbounded means ``mu``; the location in the unit box is ``tanh(mu)``.
        :param log_std: Log-stds in the unit box (broadcast against ``mean_actions``), or with ``log_std_era``
            their ERA pre-activations.
        :param log_std_era: The activation to apply to ``log_std``, ``log_std_era(log_std)`` (``None``: none).
        :return: self
        """
        if log_std_era is not None and log_std.shape[-1:] != (log_std_era.action_dim,):
            raise ValueError(
                f"expected ERA pre-activations of shape (..., {log_std_era.action_dim}), got {tuple(log_std.shape)}"
            )
        if self.center.device != mean_actions.device or self.center.dtype != mean_actions.dtype:
            self.center, self.half_range = self.center.to(mean_actions), self.half_range.to(mean_actions)
        self._params = (mean_actions, log_std, log_std_era)
        self._grad = th.is_grad_enabled()
        self._sampled = self._entropy = None
        self.__dict__.pop("distribution", None)
        self._fused, build_now = plan_training_pass(mean_actions, log_std, self.fuse_training_pass)
        if build_now:
            self.distribution  # noqa: B018 (built now, so invalid parameters raise torch's own error)
        return self

    @functools.cached_property
    def distribution(self) -> TruncatedNormal:
        """The truncated normal on the unit box, in the graph of the pass that made the parameters."""
        mean_actions, log_std, log_std_era = self._params
        with th.set_grad_enabled(self._grad):
            loc = tanh_location(mean_actions)
            scale = (log_std if log_std_era is None else log_std_era(log_std)).exp().expand_as(loc)
            return TruncatedNormal(loc, scale, -1.0, 1.0, validate_args=None if self._grad else False)

    def _to_unit_box(self, actions: th.Tensor) -> th.Tensor:
        if self.is_unit_box:
            return actions
        unit = (actions - self.center) / self.half_range
        # Float round-off in the affine map may step a bound action a hair outside the box.
        return unit.clamp(-1.0, 1.0)

    def _from_unit_box(self, unit: th.Tensor) -> th.Tensor:
        if self.is_unit_box:
            return unit
        return self.center + self.half_range * unit

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        """Log-likelihood of ``actions`` in the environment's action space, summed over action dimensions.

        :param actions: actions within the action space's bounds.
        """
        sampled = self._sampled
        if (
            sampled is not None
            and actions is sampled[0]
            and actions._version == sampled[1]
            and not th.is_grad_enabled()
        ):
            if not isinstance(sampled[2], th.Tensor):
                self._sampled = (*sampled[:2], sampled[2]())
            return self._sampled[2]
        unit = self._to_unit_box(actions)
        if not th.is_grad_enabled():
            return sum_independent_dims(self.distribution.log_prob(unit)) - self.log_scale_correction
        # A training step reads the entropy next (PPO, A2C): one pass and one graph node give both.
        if self._fused and unit.shape == self._params[0].shape and not unit.requires_grad:
            unit_array = unit.numpy()
            validate = th.distributions.Distribution._validate_args
            if not validate or ((unit_array >= -1.0) & (unit_array <= 1.0)).all():
                mean_actions, log_std, log_std_era = self._params
                log_prob, self._entropy = TanhTruncatedLogProbAndEntropy.apply(
                    mean_actions, log_std, unit_array, self.log_scale_correction, log_std_era
                )
                return log_prob
        unit_log_prob, unit_entropy = self.distribution.log_prob_and_entropy(unit)
        self._entropy = sum_independent_dims(unit_entropy) + self.log_scale_correction
        return sum_independent_dims(unit_log_prob) - self.log_scale_correction

    def entropy(self) -> th.Tensor:
        """Exact entropy in the environment's action space, summed over action dimensions."""
        with th.set_grad_enabled(th.is_grad_enabled() and self.entropy_needs_grad):
            if self._entropy is None:
                entropy = sum_independent_dims(self.distribution.entropy()) + self.log_scale_correction
            else:
                entropy = self._entropy
            return entropy if th.is_grad_enabled() else entropy.detach()

    def sample(self) -> th.Tensor:
        """
        Draw actions; with gradient a reparameterised sample (in a training pass on the CPU, one autograd node
        from the mean and the log-std: :class:`~sb3_era.fused_log_prob.TanhTruncatedSample`), without (a rollout)
        one pass whose log-probability is returned by the next ``log_prob`` of these very actions (left
        unmodified). On the CPU that pass runs from the parameters, without building :attr:`distribution`, and
        leaves the log-probability to be computed by that ``log_prob`` (SAC's rollouts and critic target never
        read it); the same draws give the same actions as :meth:`era_core.TruncatedNormal.sample_and_log_prob`,
        and its log-probabilities summed in float64.

        :return: Actions in the environment's units
        """
        mean_actions, log_std, log_std_era = self._params
        if th.is_grad_enabled():
            if self._fused and log_std_era is None:
                unit = TanhTruncatedSample.apply(
                    mean_actions, log_std, uniform_levels(mean_actions.shape, mean_actions)
                )
            else:
                unit = self.distribution.rsample()
            return self._from_unit_box(unit)
        if not fusable(mean_actions, log_std):
            unit, unit_log_prob = self.distribution.sample_and_log_prob()
            actions = self._from_unit_box(unit)
            log_prob = sum_independent_dims(unit_log_prob) - self.log_scale_correction
            self._sampled = (actions, actions._version, log_prob)
            return actions
        # TruncatedNormal.sample_and_log_prob's draws and formulas, on the location and scale of distribution.
        ops, eps = _array_ops(mean_actions), th.finfo(mean_actions.dtype).eps
        u = th.rand(mean_actions.shape, dtype=mean_actions.dtype)
        loc = tanh_location(mean_actions)
        scale = (log_std if log_std_era is None else log_std_era(log_std)).exp()
        unit, z, log_z, scale = _sample_arrays_in_interval(ops, loc, scale, 0.0, 1.0, u, eps)
        dtype = loc.numpy().dtype
        actions = self._from_unit_box(ops.to_tensor(unit, dtype))
        correction = self.log_scale_correction

        def log_prob() -> th.Tensor:
            # Summed in float64 and rounded once, as the training pass's fused node does.
            return ops.to_tensor(_log_prob_of_sample(ops, z, scale, log_z).sum(-1) - correction, dtype)

        self._sampled = (actions, actions._version, log_prob)
        return actions

    def mode(self) -> th.Tensor:
        """The most likely action (``tanh(mean_actions)`` mapped to the action space)."""
        return self._from_unit_box(self.distribution.mode)


class RolloutSquashedDiagGaussianDistribution(SquashedDiagGaussianDistribution):
    """
    SB3's tanh-squashed diagonal Gaussian, whose rollouts (no gradient) skip the parameter and sample checks and
    whose log-probabilities of given actions on the CPU take one pass.

    A rollout builds one distribution per env step, where ``Normal``'s argument checks (each a comparison and
    a reduction) cost as much as the sample itself; ERA's activation bounds the log-std, and a training pass
    (with gradient) keeps the checks, as :class:`TruncatedNormalDistribution` does. :meth:`log_prob` of actions
    (PPO and A2C's rollouts and minibatches) computes SB3's formula in float64 NumPy
    (:func:`~sb3_era.fused_log_prob.squashed_gaussian_log_prob`), with gradient as one autograd node
    (:class:`~sb3_era.fused_log_prob.TanhGaussianLogProb`); a training pass then builds the ``Normal`` only if
    something else reads it.

    :param action_dim: Dimension of the action space.
    :param epsilon: small value to avoid NaN due to numerical imprecision (SB3's).
    """

    #: Whether a training pass on the CPU takes its log-probabilities from one autograd node; ``False`` records
    #: SB3's ops.
    fuse_training_pass: bool = True

    def __init__(self, action_dim: int, epsilon: float = 1e-6):
        super().__init__(action_dim, epsilon)
        # The parameters of the last proba_distribution and whether it ran with gradient.
        self._params: tuple[th.Tensor, th.Tensor] | None = None
        self._grad = self._fused = False

    def proba_distribution(
        self: SelfRolloutSquashedDiagGaussian, mean_actions: th.Tensor, log_std: th.Tensor
    ) -> SelfRolloutSquashedDiagGaussian:
        """
        Create the distribution given its parameters (mean, std), as SB3's ``DiagGaussianDistribution``.

        The ``Normal`` is built when something reads :attr:`distribution`; a training pass checks the parameters
        here either way.

        :param mean_actions: Means of the Gaussian before squashing.
        :param log_std: Log-stds (broadcast against ``mean_actions``).
        :return: self
        """
        self._params = (mean_actions, log_std)
        self._grad = th.is_grad_enabled()
        self.__dict__.pop("distribution", None)
        self._fused, build_now = plan_training_pass(mean_actions, log_std, self.fuse_training_pass)
        if build_now:
            self.distribution  # noqa: B018 (built now, so invalid parameters raise torch's own error)
        return self

    @functools.cached_property
    def distribution(self) -> Normal:
        """The Gaussian before squashing, in the graph of the pass that made the parameters."""
        mean_actions, log_std = self._params
        with th.set_grad_enabled(self._grad):
            action_std = th.ones_like(mean_actions) * log_std.exp()
            return Normal(mean_actions, action_std, validate_args=None if self._grad else False)

    def log_prob(self, actions: th.Tensor, gaussian_actions: th.Tensor | None = None) -> th.Tensor:
        """Log-likelihood of squashed ``actions``, summed over action dimensions (SB3's formula).

        :param actions: actions in ``[-1, 1]``.
        :param gaussian_actions: their values before squashing, if known (then SB3's ops compute it).
        """
        mean_actions, log_std = self._params
        grad = th.is_grad_enabled()
        if (
            gaussian_actions is None
            and (self._fused if grad else fusable(mean_actions, log_std))
            and actions.shape == mean_actions.shape
            and actions.dtype in (th.float32, th.float64)
            and actions.device.type == "cpu"
            and not actions.requires_grad
        ):
            unit = actions.numpy()
            # Outside [-1, 1] (or NaN) SB3's formula is NaN or raises: its ops give that.
            if ((unit >= -1.0) & (unit <= 1.0)).all():
                if grad:
                    return TanhGaussianLogProb.apply(mean_actions, log_std, unit, self.epsilon)
                mean_array = mean_actions.detach().numpy()
                log_prob, _, _ = squashed_gaussian_log_prob(
                    unit, mean_array, log_std.detach().numpy(), self.epsilon
                )
                return th.from_numpy(log_prob.astype(np.promote_types(mean_array.dtype, unit.dtype)))
        return super().log_prob(actions, gaussian_actions)
