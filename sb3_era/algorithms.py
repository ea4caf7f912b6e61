"""SAC-ERA and friends: SB3 / sb3-contrib algorithms whose default policies are the ERA policies.

Each class is a thin subclass: ``policy_aliases`` point to the ERA policies, ``ent_coef`` defaults to 0
(ERA replaces the entropy bonus, spec 1.2 and 1.5), the ERA knobs may be given at the top level (rl-zoo3's
Optuna samplers replace ``policy_kwargs`` wholesale, so a sampled ``target_entropy_per_dim`` must have a
place outside it) and the ERA measurements are recorded each time the logs are dumped. Training is the
host's own ``train()``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sb3_contrib import TQC, CrossQ
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.policies import BasePolicy

from sb3_era.callbacks import record_era_stats, warn_if_entropy_bonus
from sb3_era.distributions import TruncatedNormalDistribution
from sb3_era.off_policy import (
    ERACrossQPolicy,
    ERASACCnnPolicy,
    ERASACMultiInputPolicy,
    ERASACPolicy,
    ERATQCCnnPolicy,
    ERATQCMultiInputPolicy,
    ERATQCPolicy,
)
from sb3_era.on_policy import ERAActorCriticCnnPolicy, ERAActorCriticPolicy, ERAMultiInputActorCriticPolicy

# The two forms of the target entropy: giving one at the top level replaces both in policy_kwargs.
TARGET_ENTROPY_FORMS = ("target_entropy", "target_entropy_per_dim")


def merge_era_knobs(policy_kwargs: dict[str, Any] | None, knobs: dict[str, Any]) -> dict[str, Any] | None:
    """``policy_kwargs`` with the ERA knobs given at the top level (those not ``None``) taking precedence.

    A knob given at the top level overrides the same knob in ``policy_kwargs``, as rl-zoo3's ``-params``
    overrides a hyper-parameter file; a top-level ``target_entropy`` or ``target_entropy_per_dim`` replaces
    both forms there. Without top-level knobs the caller's dict itself is returned, so that the host's
    in-place additions reach it as with the stock algorithms (``load(path, policy_kwargs=...)`` compares it
    with the saved one).
    """
    given = {name: value for name, value in knobs.items() if value is not None}
    if not given:
        return policy_kwargs
    merged = dict(policy_kwargs or {})
    if given.keys() & set(TARGET_ENTROPY_FORMS):
        for name in TARGET_ENTROPY_FORMS:
            merged.pop(name, None)
    merged.update(given)
    return merged


class _ERALoggingMixin:
    """Warn about an entropy bonus at setup and record the ERA measurements with every log dump."""

    era_log_states: int

    def _setup_model(self) -> None:
        super()._setup_model()
        warn_if_entropy_bonus(self)

    def dump_logs(self, *args: Any) -> None:
        record_era_stats(self, self.era_log_states)
        super().dump_logs(*args)


class _ERAOffPolicyAlgorithm(_ERALoggingMixin):
    """Top-level ERA knobs and ``ent_coef=0.0`` for SAC, TQC and CrossQ."""

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: Any,
        *args: Any,
        ent_coef: str | float = 0.0,
        target_entropy: str | float = "auto",
        target_entropy_per_dim: float | None = None,
        log_std_min: float | None = None,
        log_std_max: float | None = None,
        action_distribution: str | None = None,
        delta: float | None = None,
        learn_delta: bool | None = None,
        floor: str | None = None,
        floor_momentum: float | None = None,
        era_log_states: int = 256,
        policy_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        self.era_log_states = era_log_states
        knobs = dict(
            target_entropy=None if isinstance(target_entropy, str) else target_entropy,
            target_entropy_per_dim=target_entropy_per_dim,
            log_std_min=log_std_min,
            log_std_max=log_std_max,
            action_distribution=action_distribution,
            delta=delta,
            learn_delta=learn_delta,
            floor=floor,
            floor_momentum=floor_momentum,
        )
        super().__init__(
            policy,
            env,
            *args,
            ent_coef=ent_coef,
            target_entropy=target_entropy,
            policy_kwargs=merge_era_knobs(policy_kwargs, knobs),
            **kwargs,
        )

    def _log_prob_unread(self) -> bool:
        """Whether ``train()`` reads the sampled actions' log-probabilities only to multiply them by zero.

        True for a fixed ``ent_coef=0`` (no temperature to learn) without a learned ``delta``: the actor loss and
        the critic target then hold ``0 * log_prob``, which the shortcut replaces by ``0 * 0``.
        """
        return (
            self.ent_coef_optimizer is None
            and self.ent_coef_tensor.item() == 0.0
            and not self.actor.era_kwargs["learn_delta"]
        )

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.actor.log_prob_unread = self._log_prob_unread()
        try:
            super().train(gradient_steps, batch_size)
        finally:
            self.actor.log_prob_unread = False


_OFF_POLICY_DOC = """
    {host} with ERA (Entropy Regularizing Activation): the actor's entropy stays above a floor by
    construction, so there is no entropy bonus (``ent_coef=0.0`` by default; spec 1.2).

    Takes every parameter of ``{host_path}``; the ERA knobs may also be given here instead of in
    ``policy_kwargs``, and take precedence over the same knob there (so rl-zoo3's ``-params`` overrides a
    hyper-parameter file; see :class:`sb3_era.{policy}` for their meaning):

    :param policy: The policy model to use (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"``: the ERA
        policies) or a policy class
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param policy_kwargs: Additional arguments passed to the policy on creation; the ERA knobs given here are
        overridden by the same knobs given at the top level
    :param target_entropy_per_dim: Target entropy per action dimension (default ``-1/2``)
    :param log_std_min: Lower log-std bound (default -8)
    :param log_std_max: Upper log-std bound (default 0)
    :param action_distribution: ``"truncated"`` (default) or ``"tanh"``
    :param delta: Constant compensation (default 0)
    :param learn_delta: Learn the compensation (default False)
    :param floor: ``"state"`` (default) or ``"batch"``
    :param floor_momentum: Running-shift weight of the batch floor (default 0.01)
    :param era_log_states: Number of recent states on which ``era/*`` is measured at each log dump
    :param ent_coef: Entropy bonus coefficient; keep 0 with ERA (any other value warns)
    :param target_entropy: A float is ERA's absolute target entropy ``H0`` (forwarded to the policy);
        ``"auto"`` (default) leaves the policy default ``H0 = -D/2``
"""


class ERASAC(_ERAOffPolicyAlgorithm, SAC):
    __doc__ = _OFF_POLICY_DOC.format(
        host="SAC",
        host_path="stable_baselines3.SAC",
        policy="ERASACPolicy",
    )
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ERASACPolicy,
        "CnnPolicy": ERASACCnnPolicy,
        "MultiInputPolicy": ERASACMultiInputPolicy,
    }


class ERATQC(_ERAOffPolicyAlgorithm, TQC):
    __doc__ = _OFF_POLICY_DOC.format(
        host="TQC",
        host_path="sb3_contrib.TQC",
        policy="ERATQCPolicy",
    )
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ERATQCPolicy,
        "CnnPolicy": ERATQCCnnPolicy,
        "MultiInputPolicy": ERATQCMultiInputPolicy,
    }


class ERACrossQ(_ERAOffPolicyAlgorithm, CrossQ):
    __doc__ = _OFF_POLICY_DOC.format(
        host="CrossQ",
        host_path="sb3_contrib.CrossQ",
        policy="ERACrossQPolicy",
    )
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": ERACrossQPolicy}


class _ERAOnPolicyAlgorithm(_ERALoggingMixin):
    """Top-level ERA knobs and ``ent_coef=0.0`` for PPO and A2C."""

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: Any,
        *args: Any,
        ent_coef: float = 0.0,
        target_entropy: float | None = None,
        target_entropy_per_dim: float | None = None,
        log_std_min: float | None = None,
        log_std_max: float | None = None,
        action_distribution: str | None = None,
        delta: float | None = None,
        learn_delta: bool | None = None,
        floor: str | None = None,
        state_dependent_std: bool | None = None,
        min_entropy: float | None = None,
        softmax_tau: float | None = None,
        softmax_construction: str | None = None,
        era_log_states: int = 256,
        policy_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        self.era_log_states = era_log_states
        knobs = dict(
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
        super().__init__(
            policy,
            env,
            *args,
            ent_coef=ent_coef,
            policy_kwargs=merge_era_knobs(policy_kwargs, knobs),
            **kwargs,
        )

    def train(self) -> None:
        # With ent_coef=0 the loss holds 0 * entropy: the entropy is then computed (it is logged) without a graph,
        # which leaves every gradient as it was and skips its backward.
        action_dist = getattr(self.policy, "action_dist", None)
        if not isinstance(action_dist, TruncatedNormalDistribution) or self.ent_coef != 0.0:
            return super().train()
        action_dist.entropy_needs_grad = False
        try:
            super().train()
        finally:
            action_dist.entropy_needs_grad = True

    def _maybe_recommend_cpu(self, mlp_class_name: str = ERAActorCriticPolicy.__name__) -> None:
        # SB3 recommends the CPU when the policy class is its MLP one, matched by name: ours has another name.
        super()._maybe_recommend_cpu(mlp_class_name)


_ON_POLICY_DOC = """
    {host} with ERA policies (spec 1.5): the entropy floor replaces the entropy bonus (``ent_coef=0.0``).

    Takes every parameter of ``{host_path}``; the ERA knobs may also be given here instead of in
    ``policy_kwargs``, and take precedence over the same knob there (so rl-zoo3's ``-params`` overrides a
    hyper-parameter file; see :class:`sb3_era.ERAActorCriticPolicy` for their meaning). Like SB3's PPO and
    A2C, warns when the MLP policy is put on a GPU (it runs faster on the CPU):

    :param policy: The policy model to use (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"``: the ERA
        policies) or a policy class
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param policy_kwargs: Additional arguments passed to the policy on creation; the ERA knobs given here are
        overridden by the same knobs given at the top level
    :param target_entropy: Absolute target entropy ``H0`` (continuous actions)
    :param target_entropy_per_dim: Target entropy per action dimension (default ``-1/2``)
    :param log_std_min: Lower log-std bound (default -8)
    :param log_std_max: Upper log-std bound (default 0)
    :param action_distribution: ``"truncated"`` (default) or ``"tanh"``
    :param delta: Compensation (default 0)
    :param learn_delta: Learn the compensation (default False)
    :param floor: ``"state"`` (default, the only one supported here)
    :param state_dependent_std: Log-std from a network head instead of a parameter vector
    :param min_entropy: Entropy floor for ``Discrete`` actions
    :param softmax_tau: ``tau`` of the softmax ERA for ``Discrete`` actions (default 4)
    :param softmax_construction: ``"paper"`` (default, loose floor), ``"mixture"`` or ``"calibrated"`` (tight: the
        smallest reachable entropy is ``min_entropy``) for ``Discrete`` actions
    :param era_log_states: Number of recent states on which ``era/*`` is measured at each log dump
    :param ent_coef: Entropy bonus coefficient; keep 0 with ERA (any other value warns)
"""


class ERAPPO(_ERAOnPolicyAlgorithm, PPO):
    __doc__ = _ON_POLICY_DOC.format(host="PPO", host_path="stable_baselines3.PPO")
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ERAActorCriticPolicy,
        "CnnPolicy": ERAActorCriticCnnPolicy,
        "MultiInputPolicy": ERAMultiInputActorCriticPolicy,
    }


class ERAA2C(_ERAOnPolicyAlgorithm, A2C):
    __doc__ = _ON_POLICY_DOC.format(host="A2C", host_path="stable_baselines3.A2C")
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = ERAPPO.policy_aliases
