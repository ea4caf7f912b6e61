"""The ERA authors' critic for SB3's SAC and sb3-contrib's TQC: LayerNorm hidden layers and an AdamW optimizer.

The authors' SAC-ERA (jaxrl) builds each critic as ``Dense -> LayerNorm -> ELU`` per hidden layer (2 x 512)
with a linear output, trains the critics with AdamW (optax's defaults: weight decay ``1e-4``, eps ``1e-8``,
lr 3e-4) and the actor with Adam (spec 1.2; LayerNorm critics after Nauman et al., 2024). SB3's policies
build both networks from one ``activation_fn`` and one ``optimizer_class``: :class:`CriticOptionsMixin`
adds critic-only options to them, overriding ``make_critic`` (LayerNorm inserted into SB3's own critic) and
``_build`` (the critic's activation, and its optimizer rebuilt over the parameters SB3 chose). It is mixed
into the ERA policies (:class:`sb3_era.ERASACPolicy`, :class:`sb3_era.ERATQCPolicy`) and into
:class:`CriticOptionsSACPolicy` / :class:`CriticOptionsTQCPolicy`, the baseline policies for stock ``SAC``
and ``TQC`` that differ from SB3's only by these options::

    from stable_baselines3 import SAC
    from sb3_era.critics import CriticOptionsSACPolicy, authors_critic_kwargs

    SAC(CriticOptionsSACPolicy, "Hopper-v5", policy_kwargs=dict(net_arch=[512, 512], **authors_critic_kwargs()))
"""

from __future__ import annotations

from typing import Any

import torch as th
from sb3_contrib.tqc.policies import TQCPolicy
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

__all__ = [
    "AUTHORS_CRITIC_WEIGHT_DECAY",
    "LAYER_NORM_EPS",
    "CriticOptionsMixin",
    "CriticOptionsSACPolicy",
    "CriticOptionsTQCPolicy",
    "add_layer_norm",
    "authors_critic_kwargs",
]

# optax.adamw's default weight decay, which the authors' critic optimizer uses (torch's AdamW defaults to 0.01).
AUTHORS_CRITIC_WEIGHT_DECAY = 1e-4
# flax.linen.LayerNorm's default epsilon, which the authors' critic uses (torch's nn.LayerNorm defaults to 1e-5).
LAYER_NORM_EPS = 1e-6


def authors_critic_kwargs() -> dict[str, Any]:
    """
    The ERA authors' critic as policy keyword arguments of :class:`CriticOptionsMixin` policies.

    :return: a new dict: ``critic_layer_norm=True``, ``critic_activation_fn=nn.ELU``,
        ``critic_optimizer_class=th.optim.AdamW`` and ``critic_optimizer_kwargs=dict(weight_decay=1e-4)``.
        The network width (their 2 x 512) is SB3's ``net_arch``; the actor keeps ``activation_fn`` (ReLU)
        and ``optimizer_class`` (Adam), as theirs does.
    """
    return dict(
        critic_layer_norm=True,
        critic_activation_fn=nn.ELU,
        critic_optimizer_class=th.optim.AdamW,
        critic_optimizer_kwargs=dict(weight_decay=AUTHORS_CRITIC_WEIGHT_DECAY),
    )


def _with_layer_norm(q_net: nn.Sequential) -> nn.Sequential:
    """``q_net`` (SB3's ``create_mlp`` layers) with a LayerNorm after every linear layer but the output one."""
    linear_indices = [index for index, module in enumerate(q_net) if isinstance(module, nn.Linear)]
    modules: list[nn.Module] = []
    for index, module in enumerate(q_net):
        modules.append(module)
        if index in linear_indices[:-1]:
            modules.append(nn.LayerNorm(module.out_features, eps=LAYER_NORM_EPS))
    return nn.Sequential(*modules)


def add_layer_norm(critic: BaseModel) -> None:
    """
    Insert ``nn.LayerNorm`` after each hidden linear layer of every Q-network of an SB3 critic, in place.

    Each hidden layer becomes ``Linear -> LayerNorm -> activation``; the output layer stays linear. The
    linear layers (and their initialisation) are SB3's own, so a seed gives the same weights with or without
    LayerNorm.

    :param critic: an SB3 ``ContinuousCritic`` or sb3-contrib TQC ``Critic`` (anything whose Q-networks are
        the ``nn.Sequential`` modules listed in ``q_networks``).
    """
    children = dict(critic.named_children())
    for index, q_net in enumerate(critic.q_networks):
        name = next(name for name, child in children.items() if child is q_net)
        normalized = _with_layer_norm(q_net)
        critic.add_module(name, normalized)
        critic.q_networks[index] = normalized


def _check_module_class(name: str, value: Any, base: type, example: str) -> None:
    if value is not None and not (isinstance(value, type) and issubclass(value, base)):
        raise ValueError(
            f"{name} must be None or a subclass of {base.__module__}.{base.__qualname__} (a class, e.g. "
            f"{example}), got {value!r}"
        )


class CriticOptionsMixin:
    """
    Critic-only options for an SB3 actor-critic policy. Mixed in front of ``SACPolicy`` or ``TQCPolicy``.

    Every option defaults to SB3's behaviour (the critic built and optimised like the actor).

    :param critic_layer_norm: Insert ``nn.LayerNorm`` (epsilon 1e-6, flax's) after each hidden linear layer
        of the critics and their targets: ``Linear -> LayerNorm -> activation`` per hidden layer, linear
        output (the ERA authors' critic)
    :param critic_activation_fn: Activation of the critics' hidden layers; ``None`` uses ``activation_fn``
        like SB3 (the authors: ``nn.ELU``, with ReLU in the actor)
    :param critic_optimizer_class: Optimizer class of the critics; ``None`` uses ``optimizer_class`` like SB3
        (the authors: ``th.optim.AdamW``, with Adam for the actor)
    :param critic_optimizer_kwargs: Keyword arguments of the critics' optimizer, excluding the learning rate
        (the critics use the actor's ``learning_rate`` schedule); ``None`` uses ``optimizer_kwargs`` like
        SB3. The authors' AdamW has optax's default weight decay: ``dict(weight_decay=1e-4)`` (torch's AdamW
        default is 0.01). The ERA authors' critic as a whole: :func:`authors_critic_kwargs`.
    :param args: Positional arguments of the host policy.
    :param kwargs: Keyword arguments of the host policy.
    """

    critic_kwargs: dict[str, Any]
    activation_fn: type[nn.Module]
    optimizer_class: type[th.optim.Optimizer]
    optimizer_kwargs: dict[str, Any]
    device: th.device
    critic: BaseModel

    def __init__(
        self,
        *args: Any,
        critic_layer_norm: bool = False,
        critic_activation_fn: type[nn.Module] | None = None,
        critic_optimizer_class: type[th.optim.Optimizer] | None = None,
        critic_optimizer_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        if not isinstance(critic_layer_norm, bool):
            raise ValueError(f"critic_layer_norm must be True or False, got {critic_layer_norm!r}")
        _check_module_class("critic_activation_fn", critic_activation_fn, nn.Module, "nn.ELU")
        _check_module_class(
            "critic_optimizer_class", critic_optimizer_class, th.optim.Optimizer, "th.optim.AdamW"
        )
        if critic_optimizer_kwargs is not None:
            if not isinstance(critic_optimizer_kwargs, dict):
                raise ValueError(
                    f"critic_optimizer_kwargs must be None or a dict, got {critic_optimizer_kwargs!r}"
                )
            if "lr" in critic_optimizer_kwargs:
                raise ValueError(
                    "critic_optimizer_kwargs must not hold 'lr': the critics use the algorithm's "
                    "learning_rate (schedule), like the actor"
                )
        self.critic_options = dict(
            critic_layer_norm=critic_layer_norm,
            critic_activation_fn=critic_activation_fn,
            critic_optimizer_class=critic_optimizer_class,
            critic_optimizer_kwargs=critic_optimizer_kwargs,
        )
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule: Schedule) -> None:
        # The host's __init__ fills critic_kwargs (a copy of the actor's arguments) before calling _build.
        self.critic_kwargs["activation_fn"] = (
            self.critic_options["critic_activation_fn"] or self.activation_fn
        )
        super()._build(lr_schedule)  # type: ignore[misc]
        # The host chose which parameters the critic optimizes (not a features extractor shared with the
        # actor); only the optimizer class and its arguments change.
        critic_parameters = [
            parameter for group in self.critic.optimizer.param_groups for parameter in group["params"]
        ]
        optimizer_class = self.critic_options["critic_optimizer_class"] or self.optimizer_class
        optimizer_kwargs = self.critic_options["critic_optimizer_kwargs"]
        self.critic.optimizer = optimizer_class(
            critic_parameters,
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **(self.optimizer_kwargs if optimizer_kwargs is None else optimizer_kwargs),
        )

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> BaseModel:
        critic = super().make_critic(features_extractor)  # type: ignore[misc]
        if self.critic_options["critic_layer_norm"]:
            add_layer_norm(critic)
        return critic.to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self.critic_options)
        return data


CRITIC_OPTIONS_DOC = """
    :param critic_layer_norm: Insert ``nn.LayerNorm`` after each hidden linear layer of the critics (default
        ``False``); see :class:`sb3_era.critics.CriticOptionsMixin`
    :param critic_activation_fn: Activation of the critics' hidden layers (default ``None``: ``activation_fn``)
    :param critic_optimizer_class: Optimizer class of the critics (default ``None``: ``optimizer_class``)
    :param critic_optimizer_kwargs: Its keyword arguments, without ``lr`` (default ``None``:
        ``optimizer_kwargs``). The ERA authors' critic: ``**sb3_era.critics.authors_critic_kwargs()``
"""


class CriticOptionsSACPolicy(CriticOptionsMixin, SACPolicy):
    __doc__ = (
        "\n    SB3's SAC policy with critic-only options: LayerNorm, activation, optimizer (the baseline for SAC-ERA\n"
        "    with the authors' critic). Use it with stock ``SAC``; other parameters: see\n"
        "    ``stable_baselines3.sac.policies.SACPolicy``.\n" + CRITIC_OPTIONS_DOC
    )


class CriticOptionsTQCPolicy(CriticOptionsMixin, TQCPolicy):
    __doc__ = (
        "\n    sb3-contrib's TQC policy with critic-only options: LayerNorm, activation, optimizer. Use it with\n"
        "    stock ``TQC``; other parameters: see ``sb3_contrib.tqc.policies.TQCPolicy``.\n"
        + CRITIC_OPTIONS_DOC
    )
