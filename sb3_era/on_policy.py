"""ERA actor-critic policies for PPO, A2C and sb3-contrib's RecurrentPPO (spec sections 1.5 and 2).

Continuous (``Box``) actions: ERA's log-std activation is applied to SB3's state-independent ``log_std``
parameter vector (so the floor holds for every state), or with ``state_dependent_std=True`` to a linear
head on the actor's latent. Discrete actions: :class:`era_core.SoftmaxERA` on the action logits. The
override point is ``_get_action_dist_from_latent``; the modules ERA adds are created in ``_build`` after
the host's networks, and the optimizer is rebuilt so that it trains them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.distributions import Distribution, SquashedDiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

from era_core import GaussianERA, SoftmaxERA, check_softmax_era_args, softmax_era_feasible_range
from era_core.softmax import Construction
from sb3_era.distributions import RolloutSquashedDiagGaussianDistribution, TruncatedNormalDistribution
from sb3_era.policies import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    SOFTMAX_TAU,
    CompensationGradient,
    check_action_distribution,
    check_bounded_box,
    check_no_sde,
    distribution_entropy_stats,
    final_policy_entropy,
)

_PARAMS_DOC = """
    :param observation_space: Observation space
    :param action_space: Action space: a bounded ``Box`` or ``Discrete``
    :param lr_schedule: Learning rate schedule (could be constant)
    :param target_entropy: ``Box`` only. Target entropy ``H0`` (absolute, nats); give this or
        ``target_entropy_per_dim``. Default (neither given): ``H0 = -D / 2``. Entropies are measured in the
        ``[-1, 1]``-scaled action space; a target above what ``log_std_max`` allows raises ``ValueError``.
    :param target_entropy_per_dim: ``Box`` only. Target entropy per action dimension, ``H0 / D``.
    :param log_std_min: ``Box`` only. Lower log-std bound ``lmin``
    :param log_std_max: ``Box`` only. Upper log-std bound ``lmax``
    :param action_distribution: ``Box`` only. ``"truncated"`` (default: a normal truncated to the action
        bounds, located at ``tanh(mu)`` in the scaled space) or ``"tanh"`` (SB3's tanh-squashed Gaussian,
        rescaled to the bounds by the algorithm)
    :param delta: ``Box`` only. Compensation, ``Ht = H0 + delta`` (the starting value when learned)
    :param learn_delta: ``Box`` only. Learn ``delta`` with ``L = delta * stopgrad(H_hat - H0)`` (spec 1.3),
        ``H_hat`` the mean entropy of the final bounded policy on the minibatch (exact for the truncated
        normal, one fresh sample per state for ``"tanh"``), in the policy's optimizer during the host's own
        ``train()``; capped so that the floor stays feasible
    :param floor: ``Box`` only. ``"state"`` (the only value: the floor holds in every state). ``"batch"``
        (spec 1.4) raises ``ValueError``: the state-independent log-std gives every state the same entropy,
        so the per-state floor already is the batch floor; with ``state_dependent_std=True`` the batch shift
        would make the policy that PPO/A2C update differ from the one that collected the rollout (evaluation
        mode, running shift), so the rollout's log-probabilities would not be the updated policy's
    :param state_dependent_std: ``Box`` only. Compute the ERA pre-activations with a linear head on the
        actor's latent (a log-std per state) instead of SB3's state-independent ``log_std`` vector
    :param min_entropy: ``Discrete`` only, and required there. Entropy floor ``Hmin`` of the action
        distribution (nats), inside the interval that :func:`era_core.softmax_era_feasible_range` gives
        (the error message states it)
    :param softmax_tau: ``Discrete`` only. ``tau`` of the softmax ERA (the authors' 4)
    :param softmax_construction: ``Discrete`` only. ``"paper"`` (default, the authors' map: the floor holds loosely,
        e.g. 10 actions and ``min_entropy=0.6`` let no entropy below 0.98 through), ``"mixture"`` or
        ``"calibrated"`` (tight: the smallest entropy the policy can reach is ``min_entropy``); see
        :class:`era_core.SoftmaxERA`
    :param args: Positional parameters of the host policy
    :param kwargs: Keyword parameters of the host policy (see ``ActorCriticPolicy``), e.g. ``net_arch``,
        ``log_std_init`` (the initial ERA pre-activation for the state-independent log-std; equal values
        give equal log-stds). ``use_sde=True`` raises ``ValueError``: gSDE bypasses the ERA log-std.
"""


class ERAActorCriticMixin:
    __doc__ = (
        "\n    Makes an SB3 actor-critic policy an ERA policy. Mixed in front of ``ActorCriticPolicy`` and friends.\n"
        + _PARAMS_DOC
    )

    action_space: spaces.Space
    action_dist: Distribution
    optimizer_class: type[th.optim.Optimizer]
    optimizer_kwargs: dict[str, Any]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *args: Any,
        target_entropy: float | None = None,
        target_entropy_per_dim: float | None = None,
        log_std_min: float = LOG_STD_MIN,
        log_std_max: float = LOG_STD_MAX,
        action_distribution: str = "truncated",
        delta: float = 0.0,
        learn_delta: bool = False,
        floor: str = "state",
        state_dependent_std: bool = False,
        min_entropy: float | None = None,
        softmax_tau: float = SOFTMAX_TAU,
        softmax_construction: Construction = "paper",
        **kwargs: Any,
    ):
        check_no_sde(kwargs.get("use_sde", False))
        if floor != "state":
            raise ValueError(
                f"floor={floor!r}: the PPO/A2C ERA policies support floor='state' only. With the "
                "state-independent log-std every state has the same entropy, so the per-state floor already "
                "holds the batch mean; with state_dependent_std=True a batch-level shift (spec 1.4) would change "
                "the policy with each minibatch, so the rollout's log-probabilities (collected in evaluation "
                "mode) would not be those of the policy being updated. Use floor='state' (and learn_delta=True "
                "to hold the final policy's entropy at the target)."
            )
        if isinstance(action_space, spaces.Discrete):
            continuous_knobs = dict(
                target_entropy=target_entropy is not None,
                target_entropy_per_dim=target_entropy_per_dim is not None,
                log_std_min=log_std_min != LOG_STD_MIN,
                log_std_max=log_std_max != LOG_STD_MAX,
                action_distribution=action_distribution != "truncated",
                delta=delta != 0.0,
                learn_delta=learn_delta,
                state_dependent_std=state_dependent_std,
            )
            given = [name for name, is_set in continuous_knobs.items() if is_set]
            if given:
                raise ValueError(f"{', '.join(given)} apply to Box action spaces, not to {action_space}")
            if min_entropy is None:
                low, high = softmax_era_feasible_range(int(action_space.n), softmax_tau, softmax_construction)
                raise ValueError(
                    f"ERA for Discrete actions needs min_entropy, the entropy floor (nats); for {action_space}, "
                    f"softmax_construction={softmax_construction!r} and softmax_tau={softmax_tau} it must lie in "
                    f"({low:.4f}, {high:.4f}{']' if softmax_construction == 'paper' else ')'}"
                )
            check_softmax_era_args(int(action_space.n), min_entropy, softmax_tau, softmax_construction)
        else:
            check_bounded_box(action_space, "Box (continuous) and Discrete")
            check_action_distribution(action_distribution)
            if min_entropy is not None or softmax_tau != SOFTMAX_TAU or softmax_construction != "paper":
                raise ValueError(
                    f"min_entropy, softmax_tau and softmax_construction apply to Discrete action spaces, not to "
                    f"{action_space}"
                )
        self.era_kwargs = dict(
            target_entropy=target_entropy,
            target_entropy_per_dim=target_entropy_per_dim,
            log_std_min=log_std_min,
            log_std_max=log_std_max,
            action_distribution=action_distribution,
            delta=delta,
            learn_delta=learn_delta,
            floor=floor,
            state_dependent_std=state_dependent_std,
            min_entropy=min_entropy,
            softmax_tau=softmax_tau,
            softmax_construction=softmax_construction,
        )
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.era_kwargs)
        return data

    def _make_bounded_distribution(self) -> Distribution:
        action_dim = get_action_dim(self.action_space)
        if self.era_kwargs["action_distribution"] == "truncated":
            return TruncatedNormalDistribution(action_dim, self.action_space.low, self.action_space.high)
        return RolloutSquashedDiagGaussianDistribution(action_dim)

    def _build(self, lr_schedule: Schedule) -> None:
        """
        Create the host's networks, then ERA's modules, and an optimizer over all of them.

        :param lr_schedule: Learning rate schedule; ``lr_schedule(1)`` is the initial learning rate
        """
        if isinstance(self.action_space, spaces.Box):
            self.action_dist = self._make_bounded_distribution()
            # Squashed actions live in [-1, 1]; the algorithm then rescales them to the bounds.
            self._squash_output = isinstance(self.action_dist, SquashedDiagGaussianDistribution)
        super()._build(lr_schedule)
        knobs = self.era_kwargs
        if isinstance(self.action_space, spaces.Discrete):
            self.logits_era = SoftmaxERA(
                int(self.action_space.n),
                knobs["min_entropy"],
                knobs["softmax_tau"],
                construction=knobs["softmax_construction"],
            )
        else:
            action_dim = get_action_dim(self.action_space)
            self.log_std_era = GaussianERA(
                action_dim,
                knobs["target_entropy"],
                knobs["target_entropy_per_dim"],
                knobs["log_std_min"],
                knobs["log_std_max"],
                knobs["delta"],
                knobs["learn_delta"],
            )
            if knobs["state_dependent_std"]:
                # The head replaces the state-independent vector, which would otherwise sit idle.
                del self.log_std
                self.log_std_net = nn.Linear(self.mlp_extractor.latent_dim_pi, action_dim)
                if self.ortho_init:
                    self.log_std_net.apply(partial(self.init_weights, gain=0.01))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> Distribution:
        """
        Action distribution with the ERA activation applied to its spread parameters.

        :param latent_pi: Latent code for the actor
        :return: Action distribution
        """
        mean_actions = self.action_net(latent_pi)
        if isinstance(self.action_space, spaces.Discrete):
            return self.action_dist.proba_distribution(action_logits=self.logits_era(mean_actions))
        if self.era_kwargs["learn_delta"] and th.is_grad_enabled():
            # Spec 1.3 inside the host's train(): the loss's backward hands delta the compensation gradient.
            pre_activation = (
                self.log_std_net(latent_pi) if self.era_kwargs["state_dependent_std"] else self.log_std
            )
            era = self.log_std_era
            slot: dict[str, th.Tensor] = {}
            log_std = era(pre_activation, delta=CompensationGradient.apply(era.delta, slot))
            distribution = self.action_dist.proba_distribution(mean_actions, log_std)
            with th.no_grad():
                entropy = final_policy_entropy(distribution)
            # compensation_loss reads H_hat = -mean(log_prob); the exact per-state entropies stand in for it.
            (slot["grad"],) = th.autograd.grad(era.compensation_loss(-entropy), era.delta)
            return distribution
        state_dependent = self.era_kwargs["state_dependent_std"]
        if isinstance(self.action_dist, TruncatedNormalDistribution) and (
            state_dependent or th.is_grad_enabled()
        ):
            # The distribution applies the activation itself: a training pass fuses it into one node.
            pre_activation = self.log_std_net(latent_pi) if state_dependent else self.log_std
            return self.action_dist.proba_distribution(
                mean_actions, pre_activation, log_std_era=self.log_std_era
            )
        if state_dependent:
            log_std = self.log_std_era(self.log_std_net(latent_pi))
        else:
            log_std = self._state_independent_log_std()
        return self.action_dist.proba_distribution(mean_actions, log_std)

    def _state_independent_log_std(self) -> th.Tensor:
        """ERA applied to the ``log_std`` vector; without gradient (rollouts), reused until a parameter changes.

        A rollout builds one distribution per env step from the same ``log_std``, which only changes when the
        optimizer (or ``load_state_dict``, ``.to(...)``) writes to it: the cache is keyed on the storage and the
        in-place version counter of ``log_std`` and of the ERA module's one state, its ``delta`` (parameter or
        buffer).
        """
        if th.is_grad_enabled():
            return self.log_std_era(self.log_std)
        log_std, delta = self.log_std, self.log_std_era.delta
        key = (log_std.data_ptr(), log_std._version, delta.data_ptr(), delta._version)
        cached = getattr(self, "_log_std_cache", None)
        if cached is None or cached[0] != key:
            cached = self._log_std_cache = (key, self.log_std_era(self.log_std))
        return cached[1]

    def entropy_floor(self) -> float:
        """The floor ERA guarantees: on the Gaussian entropy (``Box``) or the categorical entropy."""
        if isinstance(self.action_space, spaces.Discrete):
            return float(self.era_kwargs["min_entropy"])
        return self.log_std_era.entropy_floor().item()

    def _distribution_entropy_stats(self, distribution: Distribution) -> dict[str, float]:
        stats = distribution_entropy_stats(distribution, self.entropy_floor())
        if isinstance(self.action_space, spaces.Box):
            stats["delta"] = self.log_std_era.effective_delta().item()
        return stats


class ERAActorCriticPolicy(ERAActorCriticMixin, ActorCriticPolicy):
    __doc__ = (
        "\n    ERA policy for PPO and A2C: ``PPO(ERAActorCriticPolicy, env, policy_kwargs=dict(...))``.\n"
        + _PARAMS_DOC
    )

    @th.no_grad()
    def entropy_stats(self, obs: PyTorchObs) -> dict[str, float]:
        """
        Measure the ERA floor, the Gaussian entropy and the final policy's entropy on a batch of states.

        :param obs: A batch of observations.
        :return: see :func:`sb3_era.policies.distribution_entropy_stats`.
        """
        return self._distribution_entropy_stats(self.get_distribution(obs))


class ERAActorCriticCnnPolicy(ERAActorCriticPolicy):
    __doc__ = (
        "\n    :class:`ERAActorCriticPolicy` with SB3's ``NatureCNN`` features extractor by default.\n\n"
        "    :param features_extractor_class: Features extractor (default: SB3's ``NatureCNN``); every other\n"
        "        parameter as in :class:`ERAActorCriticPolicy`.\n"
    )

    def __init__(
        self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any
    ):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class ERAMultiInputActorCriticPolicy(ERAActorCriticPolicy):
    __doc__ = (
        "\n    :class:`ERAActorCriticPolicy` for dict observations (SB3's ``CombinedExtractor`` by default).\n\n"
        "    :param features_extractor_class: Features extractor (default: SB3's ``CombinedExtractor``); every\n"
        "        other parameter as in :class:`ERAActorCriticPolicy`.\n"
    )

    def __init__(
        self,
        *args: Any,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        **kwargs: Any,
    ):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class ERARecurrentActorCriticPolicy(ERAActorCriticMixin, RecurrentActorCriticPolicy):
    __doc__ = (
        "\n    ERA policy for sb3-contrib's RecurrentPPO (LSTM actor-critic). With ``Box`` actions only\n"
        '    ``action_distribution="truncated"`` is accepted for bounds other than ``[-1, 1]``: RecurrentPPO\n'
        "    clips actions instead of rescaling them, so a tanh-squashed policy could not reach the bounds.\n"
        + _PARAMS_DOC
    )

    def _make_bounded_distribution(self) -> Distribution:
        unit_box = np.all(self.action_space.low == -1.0) and np.all(self.action_space.high == 1.0)
        if self.era_kwargs["action_distribution"] == "tanh" and not unit_box:
            raise ValueError(
                "action_distribution='tanh' with RecurrentPPO needs a Box with bounds [-1, 1] (RecurrentPPO "
                f"clips actions instead of rescaling them), got {self.action_space}; use 'truncated'"
            )
        return super()._make_bounded_distribution()

    @th.no_grad()
    def entropy_stats(
        self, obs: PyTorchObs, lstm_states: tuple[th.Tensor, th.Tensor], episode_starts: th.Tensor
    ) -> dict[str, float]:
        """
        Measure the ERA floor, the Gaussian entropy and the final policy's entropy on a batch of states.

        :param obs: A batch of observations, one time step each.
        :param lstm_states: The actor LSTM's hidden and cell states before each observation.
        :param episode_starts: Whether each observation starts an episode (the states are then reset).
        :return: see :func:`sb3_era.policies.distribution_entropy_stats`.
        """
        distribution, _ = self.get_distribution(obs, lstm_states, episode_starts)
        return self._distribution_entropy_stats(distribution)
