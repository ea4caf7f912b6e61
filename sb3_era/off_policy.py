"""ERA actors and policies for SAC, TQC (sb3-contrib) and CrossQ (sb3-contrib) (spec sections 1, 1.2-1.4).

The actor's log-std head goes through :class:`era_core.GaussianERA` (or :class:`era_core.BatchGaussianERA`)
inside ``get_action_dist_params``, SB3's single override point of the actor; the policies only change
``make_actor`` so that their ``_build`` creates the ERA actor and its optimizer as usual.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from sb3_contrib.crossq.policies import Actor as CrossQActor
from sb3_contrib.crossq.policies import CrossQPolicy
from sb3_contrib.tqc.policies import TQCPolicy
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor, NatureCNN
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.sac.policies import SACPolicy

from era_core import BatchGaussianERA, GaussianERA
from sb3_era.critics import CriticOptionsMixin
from sb3_era.distributions import TruncatedNormalDistribution
from sb3_era.policies import (
    FLOORS,
    LOG_STD_MAX,
    LOG_STD_MIN,
    CompensationGradient,
    check_action_distribution,
    check_bounded_box,
    check_no_sde,
    distribution_entropy_stats,
)

_ACTOR_PARAMS_DOC = """
    :param target_entropy: Target entropy ``H0`` of the final bounded policy (absolute, nats).
    :param target_entropy_per_dim: Alternatively ``H0 / D``. Default (neither given): ``H0 = -D / 2``.
    :param log_std_min: Lower log-std bound ``lmin``.
    :param log_std_max: Upper log-std bound ``lmax``.
    :param action_distribution: ``"truncated"`` (truncated normal on ``[-1, 1]``) or ``"tanh"`` (SB3's
        tanh-squashed Gaussian).
    :param delta: Compensation added to the target of the unbounded Gaussian, ``Ht = H0 + delta``.
    :param learn_delta: Learn ``delta`` from ``L = delta * stopgrad(H_hat - H0)`` alongside the actor loss.
    :param floor: ``"state"`` (floor for every state) or ``"batch"`` (batch-mean floor, spec 1.4).
    :param floor_momentum: Weight of the newest batch in the running shift of the batch floor.
    :param args: Positional arguments of the host actor.
    :param kwargs: Keyword arguments of the host actor.
"""


class ERAActorMixin:
    __doc__ = (
        "\n    Turns an SB3 squashed-Gaussian actor into an ERA actor. Mixed in front of SAC's or CrossQ's ``Actor``.\n"
        "\n    The host actor's ``log_std`` linear head supplies the pre-activations ``z``; ERA maps them to log-stds\n"
        "    whose Gaussian entropy is at least the floor for every state.\n" + _ACTOR_PARAMS_DOC
    )

    action_space: spaces.Box
    era: GaussianERA | BatchGaussianERA

    def __init__(
        self,
        *args: Any,
        target_entropy: float | None = None,
        target_entropy_per_dim: float | None = None,
        log_std_min: float = LOG_STD_MIN,
        log_std_max: float = LOG_STD_MAX,
        action_distribution: str = "truncated",
        delta: float = 0.0,
        learn_delta: bool = False,
        floor: str = "state",
        floor_momentum: float = 0.01,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        action_dim = get_action_dim(self.action_space)
        if floor == "state":
            self.era = GaussianERA(
                action_dim,
                target_entropy,
                target_entropy_per_dim,
                log_std_min,
                log_std_max,
                delta,
                learn_delta,
            )
        else:
            self.era = BatchGaussianERA(
                action_dim, target_entropy, target_entropy_per_dim, log_std_min, log_std_max, floor_momentum
            )
        if action_distribution == "truncated":
            self.action_dist = TruncatedNormalDistribution(action_dim)
        self.era_kwargs = dict(
            target_entropy=target_entropy,
            target_entropy_per_dim=target_entropy_per_dim,
            log_std_min=log_std_min,
            log_std_max=log_std_max,
            action_distribution=action_distribution,
            delta=delta,
            learn_delta=learn_delta,
            floor=floor,
            floor_momentum=floor_momentum,
        )
        self._pending_compensation: dict[str, th.Tensor] | None = None
        # Set by the ERA algorithms around ``train()`` while nothing reads the log-probabilities there.
        self.log_prob_unread = False

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.era_kwargs)
        return data

    def _era_log_std(self, z: th.Tensor) -> th.Tensor:
        if not (self.era_kwargs["learn_delta"] and th.is_grad_enabled()):
            return self.era(z)
        # Route the compensation gradient to delta (spec 1.3); the slot is filled in action_log_prob.
        slot: dict[str, th.Tensor] = {}
        self._pending_compensation = slot
        return self.era(z, delta=CompensationGradient.apply(self.era.delta, slot))

    def get_action_dist_params(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor, dict[str, th.Tensor]]:
        """
        Mean and ERA log-std of the action distribution.

        :param obs: Observation
        :return: Mean, log-std (whose Gaussian entropy is at least the floor) and no extra keyword arguments.
        """
        features = self.extract_features(obs, self.features_extractor)
        latent_pi = self.latent_pi(features)
        mean_actions = self.mu(latent_pi)
        return mean_actions, self._era_log_std(self.log_std(latent_pi)), {}

    def action_log_prob(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """
        Sample actions and their log-probabilities (SB3's ``action_log_prob``).

        While ``log_prob_unread`` is set (a fixed ``ent_coef=0`` and no learned ``delta``: the host's ``train()``
        only multiplies the log-probabilities by zero), the log-probabilities are not computed and zeros are
        returned: the losses and every gradient are the same, bit for bit.

        :param obs: Observation
        :return: Sampled actions and their log-probabilities (or zeros, see above)
        """
        if self.log_prob_unread:
            mean_actions, log_std, kwargs = self.get_action_dist_params(obs)
            actions = self.action_dist.actions_from_params(mean_actions, log_std, **kwargs)
            return actions, actions.new_zeros(actions.shape[0])
        actions, log_prob = super().action_log_prob(obs)
        if self._pending_compensation is not None:
            slot, self._pending_compensation = self._pending_compensation, None
            (slot["grad"],) = th.autograd.grad(self.era.compensation_loss(log_prob), self.era.delta)
        return actions, log_prob

    @th.no_grad()
    def entropy_stats(self, obs: PyTorchObs) -> dict[str, float]:
        """
        Measure the ERA floor, the Gaussian entropy and the final policy's entropy on a batch of states.

        Uses the actor's current training mode (evaluation mode uses the batch floor's running shift).

        :param obs: A batch of observations.
        :return: see :func:`sb3_era.policies.distribution_entropy_stats`, plus ``delta`` (the compensation
            in use) for the per-state floor.
        """
        mean_actions, log_std, _ = self.get_action_dist_params(obs)
        distribution = self.action_dist.proba_distribution(mean_actions, log_std)
        stats = distribution_entropy_stats(distribution, self.era.entropy_floor().item())
        if isinstance(self.era, GaussianERA):
            stats["delta"] = self.era.effective_delta().item()
        return stats


class ERAActor(ERAActorMixin, SACActor):
    __doc__ = (
        "\n    ERA actor for SAC and TQC: SB3's SAC ``Actor`` with the ERA log-std activation.\n"
        + _ACTOR_PARAMS_DOC
    )


class ERACrossQActor(ERAActorMixin, CrossQActor):
    __doc__ = (
        "\n    ERA actor for CrossQ: sb3-contrib's CrossQ ``Actor`` (BatchRenorm layers) with the ERA log-std activation.\n"
        + _ACTOR_PARAMS_DOC
    )


class ERAOffPolicyMixin:
    """
    Makes an SB3 actor-critic policy build an ERA actor. Mixed in front of ``SACPolicy`` and friends.

    Checks the ERA arguments at construction, passes them to the actor made by ``make_actor`` and
    records them in ``_get_constructor_parameters`` so that saving and loading keeps them.
    """

    actor_class: type[BasePolicy]
    actor_kwargs: dict[str, Any]

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
        floor_momentum: float = 0.01,
        **kwargs: Any,
    ):
        check_bounded_box(action_space, "Box (continuous)")
        check_no_sde(kwargs.get("use_sde", False))
        check_action_distribution(action_distribution)
        if floor not in FLOORS:
            raise ValueError(f"floor must be one of {FLOORS}, got {floor!r}")
        if floor == "batch" and (delta != 0.0 or learn_delta):
            raise ValueError(
                f"delta={delta} and learn_delta={learn_delta} apply to the per-state floor only; "
                "use floor='state' or leave delta=0.0, learn_delta=False"
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
            floor_momentum=floor_momentum,
        )
        super().__init__(observation_space, action_space, lr_schedule, *args, **kwargs)

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> BasePolicy:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return self.actor_class(**actor_kwargs, **self.era_kwargs).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.era_kwargs)
        return data


_POLICY_PARAMS_DOC = """
    :param observation_space: Observation space
    :param action_space: Action space (a bounded ``Box``)
    :param lr_schedule: Learning rate schedule (could be constant)
    :param target_entropy: Target entropy ``H0`` of the final bounded policy (absolute, nats). Give this or
        ``target_entropy_per_dim``, not both.
    :param target_entropy_per_dim: Target entropy per action dimension, ``H0 / D``. Default (neither
        given): ``H0 = -D / 2``, the paper's example. A target above what ``log_std_max`` allows raises
        ``ValueError`` naming the largest feasible one.
    :param log_std_min: Lower log-std bound ``lmin`` (the authors' -8; SB3's SAC clamps at -20)
    :param log_std_max: Upper log-std bound ``lmax`` (the authors' 0; SB3's SAC clamps at 2)
    :param action_distribution: Bounded final distribution: ``"truncated"`` (default, the authors' choice:
        a normal truncated to ``[-1, 1]`` at ``tanh(mu)``) or ``"tanh"`` (SB3's tanh-squashed Gaussian)
    :param delta: Compensation added to the Gaussian's target, ``Ht = H0 + delta``; bounding the action
        lowers the entropy, a positive ``delta`` makes up for it
    :param learn_delta: Learn ``delta`` (starting at ``delta``) with ``L = delta * stopgrad(H_hat - H0)``,
        ``H_hat = -mean(log_prob)`` of the final policy, in the actor's optimizer alongside the actor loss;
        capped so that the floor stays feasible
    :param floor: ``"state"`` (default, ``GaussianERA``: the floor holds for every state) or ``"batch"``
        (``BatchGaussianERA``, spec 1.4: the batch-mean entropy is held at the target, a running shift is
        used in evaluation)
    :param floor_momentum: Weight of the newest batch in the batch floor's running shift
    :param kwargs: The host policy's parameters ({host}), e.g. ``net_arch``, ``n_critics``.
        ``use_sde=True`` raises ``ValueError``: gSDE bypasses the ERA log-std.
"""


_CRITIC_OPTIONS_IN_KWARGS = """
    The critic options (``critic_layer_norm``, ``critic_activation_fn``, ``critic_optimizer_class``,
    ``critic_optimizer_kwargs``; all off by default) pass through ``kwargs``, as documented in
    :class:`sb3_era.{baseline}`.
"""


class ERASACPolicy(ERAOffPolicyMixin, CriticOptionsMixin, SACPolicy):
    __doc__ = (
        "\n    SAC policy whose actor keeps its Gaussian entropy above a floor by construction (ERA, spec 1.2).\n"
        "    Use with ``ent_coef=0.0`` (the default of :class:`sb3_era.ERASAC`).\n"
        + _CRITIC_OPTIONS_IN_KWARGS.format(baseline="CriticOptionsSACPolicy")
        + _POLICY_PARAMS_DOC.format(host="see ``stable_baselines3.sac.policies.SACPolicy``")
    )
    actor_class = ERAActor


class ERASACCnnPolicy(ERASACPolicy):
    __doc__ = (
        "\n    :class:`ERASACPolicy` with SB3's ``NatureCNN`` features extractor by default.\n\n"
        "    :param features_extractor_class: Features extractor (default: SB3's ``NatureCNN``); every other\n"
        "        parameter as in :class:`ERASACPolicy`.\n"
    )

    def __init__(
        self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any
    ):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class ERASACMultiInputPolicy(ERASACPolicy):
    __doc__ = (
        "\n    :class:`ERASACPolicy` for dict observations (SB3's ``CombinedExtractor`` by default).\n\n"
        "    :param features_extractor_class: Features extractor (default: SB3's ``CombinedExtractor``); every\n"
        "        other parameter as in :class:`ERASACPolicy`.\n"
    )

    def __init__(
        self,
        *args: Any,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        **kwargs: Any,
    ):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class ERATQCPolicy(ERAOffPolicyMixin, CriticOptionsMixin, TQCPolicy):
    __doc__ = (
        "\n    TQC policy (sb3-contrib) with the ERA actor; use with ``ent_coef=0.0``.\n"
        + _CRITIC_OPTIONS_IN_KWARGS.format(baseline="CriticOptionsTQCPolicy")
        + _POLICY_PARAMS_DOC.format(host="see ``sb3_contrib.tqc.policies.TQCPolicy``, e.g. ``n_quantiles``")
    )
    actor_class = ERAActor


class ERATQCCnnPolicy(ERATQCPolicy):
    __doc__ = (
        "\n    :class:`ERATQCPolicy` with SB3's ``NatureCNN`` features extractor by default.\n\n"
        "    :param features_extractor_class: Features extractor (default: SB3's ``NatureCNN``); every other\n"
        "        parameter as in :class:`ERATQCPolicy`.\n"
    )

    def __init__(
        self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN, **kwargs: Any
    ):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class ERATQCMultiInputPolicy(ERATQCPolicy):
    __doc__ = (
        "\n    :class:`ERATQCPolicy` for dict observations (SB3's ``CombinedExtractor`` by default).\n\n"
        "    :param features_extractor_class: Features extractor (default: SB3's ``CombinedExtractor``); every\n"
        "        other parameter as in :class:`ERATQCPolicy`.\n"
    )

    def __init__(
        self,
        *args: Any,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        **kwargs: Any,
    ):
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class ERACrossQPolicy(ERAOffPolicyMixin, CrossQPolicy):
    __doc__ = (
        "\n    CrossQ policy (sb3-contrib) with the ERA actor (its BatchRenorm layers kept); use with\n"
        "    ``ent_coef=0.0``. CrossQ has only an MLP policy.\n"
        + _POLICY_PARAMS_DOC.format(
            host="see ``sb3_contrib.crossq.policies.CrossQPolicy``, e.g. ``batch_norm``, ``renorm_warmup_steps``"
        )
    )
    actor_class = ERACrossQActor
