"""SB3 action distribution built on :class:`era_core.TruncatedNormal` (spec section 1.1)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch as th
from stable_baselines3.common.distributions import (
    DiagGaussianDistribution,
    SquashedDiagGaussianDistribution,
    sum_independent_dims,
)
from torch.distributions import Normal

from era_core import TruncatedNormal

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

    distribution: TruncatedNormal
    #: Whether :meth:`entropy` records a graph. ``ERAPPO``/``ERAA2C`` turn it off inside ``train()`` when
    #: ``ent_coef`` is 0, where the loss only multiplies the entropy by zero (it is still logged).
    entropy_needs_grad: bool = True

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
        # (actions, their version counter, log-probability) of the last sample drawn without gradient.
        self._sampled: tuple[th.Tensor, int, th.Tensor] | None = None
        # The entropy computed beside the last log-probability with gradient (one pass gives both).
        self._entropy: th.Tensor | None = None

    def proba_distribution(
        self: SelfTruncatedNormalDistribution, mean_actions: th.Tensor, log_std: th.Tensor
    ) -> SelfTruncatedNormalDistribution:
        """
        Create the distribution from the network's mean and log-std.

        :param mean_actions: Unbounded means ``mu``; the location in the unit box is ``tanh(mu)``.
        :param log_std: Log-stds in the unit box (broadcast against ``mean_actions``).
        :return: self
        """
        edge = 1.0 - th.finfo(mean_actions.dtype).eps
        loc = th.tanh(mean_actions).clamp(-edge, edge)
        scale = log_std.exp().expand_as(loc)
        if self.center.device != loc.device or self.center.dtype != loc.dtype:
            self.center, self.half_range = self.center.to(loc), self.half_range.to(loc)
        # A rollout (no gradient) skips the parameter checks; a training pass (with gradient) keeps them.
        validate_args = None if th.is_grad_enabled() else False
        self.distribution = TruncatedNormal(loc, scale, -1.0, 1.0, validate_args=validate_args)
        self._sampled = self._entropy = None
        return self

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
            return sampled[2]
        unit = self._to_unit_box(actions)
        if th.is_grad_enabled():
            # A training step reads the entropy next (PPO, A2C): one pass and one graph node give both.
            unit_log_prob, self._entropy = self.distribution.log_prob_and_entropy(unit)
        else:
            unit_log_prob = self.distribution.log_prob(unit)
        return sum_independent_dims(unit_log_prob) - self.log_scale_correction

    def entropy(self) -> th.Tensor:
        """Exact entropy in the environment's action space, summed over action dimensions."""
        with th.set_grad_enabled(th.is_grad_enabled() and self.entropy_needs_grad):
            entropy = self.distribution.entropy() if self._entropy is None else self._entropy
            if not th.is_grad_enabled():
                entropy = entropy.detach()
            return sum_independent_dims(entropy) + self.log_scale_correction

    def sample(self) -> th.Tensor:
        """
        Draw actions; with gradient a reparameterised sample, without (a rollout) one pass that also computes
        their log-probability, returned by the next ``log_prob`` of these very actions (left unmodified).

        :return: Actions in the environment's units
        """
        if th.is_grad_enabled():
            return self._from_unit_box(self.distribution.rsample())
        unit, unit_log_prob = self.distribution.sample_and_log_prob()
        actions = self._from_unit_box(unit)
        log_prob = sum_independent_dims(unit_log_prob) - self.log_scale_correction
        self._sampled = (actions, actions._version, log_prob)
        return actions

    def mode(self) -> th.Tensor:
        """The most likely action (``tanh(mean_actions)`` mapped to the action space)."""
        return self._from_unit_box(self.distribution.mode)


class RolloutSquashedDiagGaussianDistribution(SquashedDiagGaussianDistribution):
    """
    SB3's tanh-squashed diagonal Gaussian, whose rollouts (no gradient) skip the parameter and sample checks.

    A rollout builds one distribution per env step, where ``Normal``'s argument checks (each a comparison and
    a reduction) cost as much as the sample itself; ERA's activation bounds the log-std, and a training pass
    (with gradient) keeps the checks, as :class:`TruncatedNormalDistribution` does.

    :param action_dim: Dimension of the action space.
    :param epsilon: small value to avoid NaN due to numerical imprecision (SB3's).
    """

    def proba_distribution(
        self: SelfRolloutSquashedDiagGaussian, mean_actions: th.Tensor, log_std: th.Tensor
    ) -> SelfRolloutSquashedDiagGaussian:
        """
        Create the distribution given its parameters (mean, std), as SB3's ``DiagGaussianDistribution``.

        :param mean_actions: Means of the Gaussian before squashing.
        :param log_std: Log-stds (broadcast against ``mean_actions``).
        :return: self
        """
        action_std = th.ones_like(mean_actions) * log_std.exp()
        validate_args = None if th.is_grad_enabled() else False
        self.distribution = Normal(mean_actions, action_std, validate_args=validate_args)
        return self
