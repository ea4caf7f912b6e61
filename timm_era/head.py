"""The ERA head for timm classifiers: ``forward_head`` ends in :class:`era_core.SoftmaxERA` (spec section 2).

A model gets the head by changing class, not by changing modules: :func:`apply_era` swaps the model's class for
a subclass (``ResNet`` -> ``ResNetERA``, cached per class) whose ``forward_head`` runs the original head and then
the activation, and adds an ``era`` submodule without parameters or buffers. The state dict therefore keeps the
plain model's keys, ``pre_logits=True`` still returns the pooled features, and ``forward``, ``reset_classifier``,
TorchScript, ``torch.compile``, ONNX export and ``ModelEmaV3`` see an ordinary timm model.
"""

from __future__ import annotations

import copy
import inspect
import math
import types
from typing import Any

import torch
from torch import nn

from era_core import SoftmaxERA, check_softmax_era_args
from era_core.softmax import CONSTRUCTIONS, INVERSES, Construction, Inverse

__all__ = [
    "DEFAULT_ERA_CONSTRUCTION",
    "DEFAULT_ERA_INVERSE",
    "DEFAULT_ERA_TAU",
    "ERAClassifierMixin",
    "apply_era",
    "build_era_head",
    "default_min_entropy",
    "era_class",
    "has_era",
    "remove_era",
    "resolve_min_entropy",
]

DEFAULT_ERA_TAU = 4.0
"""Default ``era_tau``: the authors' share cap parameter."""
DEFAULT_ERA_INVERSE: Inverse = "approx"
"""Default ``era_inverse``: the paper's closed-form inverse of the share map."""
DEFAULT_ERA_CONSTRUCTION: Construction = "paper"
"""Default ``era_construction``: the authors' map (a loose floor; ``"mixture"``/``"calibrated"`` are tight)."""
ERA_SUFFIX = "_era"
_ERA_ARGS = (
    "min_entropy",
    "era_tau",
    "era_inverse",
    "era_construction",
)  # create_model kwargs consumed by the ERA head

# The authors' floors: 0.6 nats for CIFAR-10 (10 classes) and 1.2 for ImageNet (1000 classes). The default is the
# line through both points in log10(num_classes): 0.3 * (1 + log10(C)).
_DEFAULT_FLOOR_AT_ONE_CLASS = 0.3
_DEFAULT_FLOOR_PER_DECADE = 0.3


def default_min_entropy(num_classes: int) -> float:
    """Default floor in nats: ``0.3 * (1 + log10(num_classes))``.

    It reproduces the authors' settings (0.6 for 10 classes, 1.2 for 1000) and interpolates log-linearly between
    and beyond them (0.39 for 2 classes, 0.9 for 100, 1.6 for 21841); it is feasible for every ``C >= 2``.

    :param num_classes: number of classes ``C``.
    """
    return _DEFAULT_FLOOR_AT_ONE_CLASS + _DEFAULT_FLOOR_PER_DECADE * math.log10(num_classes)


def resolve_min_entropy(
    num_classes: int,
    min_entropy: float | None,
    tau: float = DEFAULT_ERA_TAU,
    construction: Construction = DEFAULT_ERA_CONSTRUCTION,
) -> float | None:
    """The floor the head applies for ``num_classes`` classes, validated; ``None`` when the head has no classes.

    :param num_classes: classifier outputs; ``0`` (timm's "no classifier, return features") turns ERA off.
    :param min_entropy: floor in nats, or ``None`` for :func:`default_min_entropy`.
    :param tau: ERA's share cap parameter.
    :param construction: ``"paper"``, ``"mixture"`` or ``"calibrated"`` (see :class:`era_core.SoftmaxERA`); the
        feasible interval depends on it.
    :raises ValueError: for a 1-class head (its softmax is the constant 1, so no entropy floor can hold), a
        negative class count, or a floor outside the feasible interval (the message names the interval).
    """
    if num_classes == 0:
        return None
    if num_classes == 1:
        raise ValueError(
            "ERA needs a softmax over at least 2 classes, got num_classes=1: a 1-class softmax is constant (entropy 0), "
            "so no floor can hold. Use the plain model for a single logit (e.g. sigmoid/BCE), or num_classes=0 for "
            "features."
        )
    if min_entropy is None:
        min_entropy = default_min_entropy(num_classes)
    check_softmax_era_args(num_classes, min_entropy, tau, construction)
    return float(min_entropy)


def build_era_head(
    num_classes: int,
    min_entropy: float | None = None,
    tau: float = DEFAULT_ERA_TAU,
    inverse: Inverse = DEFAULT_ERA_INVERSE,
    construction: Construction = DEFAULT_ERA_CONSTRUCTION,
) -> nn.Module:
    """``SoftmaxERA`` for a classifier with ``num_classes`` outputs, or ``nn.Identity`` when ``num_classes == 0``.

    :param num_classes: classifier outputs; ``0`` (timm's "no classifier, return features") gives ``nn.Identity``.
    :param min_entropy: floor in nats, or ``None`` for :func:`default_min_entropy`.
    :param tau: ERA's share cap parameter (authors: 4).
    :param inverse: ``"approx"`` (the paper's closed form) or ``"newton"`` (exact inverse of the share map).
    :param construction: ``"paper"``, ``"mixture"`` or ``"calibrated"`` (see :class:`era_core.SoftmaxERA`).
    :raises ValueError: as :func:`resolve_min_entropy`.
    """
    if inverse not in INVERSES:
        raise ValueError(f"era_inverse must be one of {INVERSES}, got {inverse!r}")
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"era_construction must be one of {CONSTRUCTIONS}, got {construction!r}")
    if construction == "mixture" and (tau != DEFAULT_ERA_TAU or inverse != DEFAULT_ERA_INVERSE):
        raise ValueError(
            f"era_tau and era_inverse configure the paper's share map; era_construction='mixture' takes neither "
            f"(got era_tau={tau}, era_inverse={inverse!r})"
        )
    floor = resolve_min_entropy(num_classes, min_entropy, tau, construction)
    if floor is None:
        return nn.Identity()
    return SoftmaxERA(num_classes, floor, tau=tau, inverse=inverse, construction=construction)


class ERAClassifierMixin:
    """Methods that :func:`era_class` puts in front of a timm model class.

    Attributes set by :func:`apply_era`: ``era`` (the activation module), ``era_min_entropy`` (the floor as given,
    ``None`` for the class-count default), ``era_tau``, ``era_inverse`` and ``era_construction``. ``model.era.min_entropy`` is the floor
    in force. (No class-level annotations here: TorchScript would read them as attribute types.)
    """

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self._plain_forward_head(x, pre_logits=pre_logits)
        if pre_logits:
            return x
        return self.era(x)

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        """timm's ``reset_classifier``; the ERA head is rebuilt (and validated first) for the new class count."""
        head = build_era_head(
            num_classes, self.era_min_entropy, self.era_tau, self.era_inverse, self.era_construction
        )
        super().reset_classifier(num_classes, *args, **kwargs)
        self.era = head

    def __reduce_ex__(self, protocol: int) -> Any:
        # The generated class is not importable by name; pickle it as "ERA class of <importable base class>".
        _, _, *state = super().__reduce_ex__(protocol)
        return (_new_era_instance, (self._plain_class,), *state)


_ERA_CLASSES: dict[type, type] = {}


def era_class(plain_class: type[nn.Module]) -> type[nn.Module]:
    """The ERA subclass of a timm model class (created once per class, then cached).

    :param plain_class: a timm model class (``ResNet``, ``VisionTransformer``, ...).
    :return: its subclass ``<Class>ERA``, whose ``forward_head`` ends in the ERA head.
    """
    if issubclass(plain_class, ERAClassifierMixin):
        return plain_class
    if plain_class not in _ERA_CLASSES:
        forward_head = getattr(plain_class, "forward_head", None)
        if forward_head is None or "pre_logits" not in inspect.signature(forward_head).parameters:
            raise TypeError(
                f"{plain_class.__name__} has no timm classifier head (forward_head(x, pre_logits)); ERA needs one. "
                "Feature extractors (features_only=True) and encoders without a classifier cannot take ERA."
            )
        name = f"{plain_class.__name__}ERA"
        namespace = {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"{plain_class.__name__} whose ``forward_head`` ends in ERA (see :func:`timm_era.apply_era`).",
            "_plain_class": plain_class,
            "_plain_forward_head": _renamed(forward_head, "_plain_forward_head"),
        }
        _ERA_CLASSES[plain_class] = type(name, (ERAClassifierMixin, plain_class), namespace)
    return _ERA_CLASSES[plain_class]


def _renamed(fn: Any, name: str) -> Any:
    # TorchScript compiles a method called through ``self`` under the function's own __name__; the plain head
    # must not be compiled as a second "forward_head".
    renamed = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    renamed.__kwdefaults__ = fn.__kwdefaults__
    renamed.__annotations__ = dict(fn.__annotations__)
    renamed.__qualname__ = fn.__qualname__.rsplit(".", 1)[0] + "." + name
    return renamed


def _new_era_instance(plain_class: type[nn.Module]) -> nn.Module:
    cls = era_class(plain_class)
    return cls.__new__(cls)


def has_era(model: nn.Module) -> bool:
    """Whether ``model`` carries an ERA head (built as ``<arch>_era`` or through :func:`apply_era`).

    :param model: any ``nn.Module``.
    """
    return isinstance(model, ERAClassifierMixin)


def apply_era(
    model: nn.Module,
    min_entropy: float | None = None,
    tau: float = DEFAULT_ERA_TAU,
    inverse: Inverse = DEFAULT_ERA_INVERSE,
    construction: Construction = DEFAULT_ERA_CONSTRUCTION,
) -> nn.Module:
    """Give a timm classifier an ERA head, in place, and return it.

    The model keeps its parameters, state-dict keys and pretrained cfg; its ``pretrained_cfg["architecture"]``
    becomes ``<arch>_era`` and the ERA arguments join its recorded model args, so ``save_for_hf`` exports reload
    as ERA models. Calling it on an ERA model replaces the head's settings.

    :param model: a timm classification model (has ``forward_head(x, pre_logits)`` and ``reset_classifier``).
    :param min_entropy: entropy floor in nats; ``None`` uses :func:`default_min_entropy` for the class count.
    :param tau: ERA's share cap parameter (authors: 4).
    :param inverse: ``"approx"`` (the paper's closed form) or ``"newton"`` (exact inverse of the share map).
    :param construction: ``"paper"`` (default; the floor holds loosely: 10 classes, floor 0.6 -> smallest entropy
        0.98), ``"mixture"`` or ``"calibrated"`` (tight: the smallest output entropy equals the floor). See
        :class:`era_core.SoftmaxERA`.
    :raises TypeError: when the model has no timm classifier head.
    :raises ValueError: for an infeasible floor, a 1-class head, an unknown ``inverse`` or ``construction``.
    """
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None or not hasattr(model, "reset_classifier"):
        raise TypeError(
            f"apply_era needs a timm classifier (num_classes, forward_head, reset_classifier); got "
            f"{type(model).__name__}"
        )
    cls = era_class(type(model))
    head = build_era_head(num_classes, min_entropy, tau, inverse, construction)
    model.__class__ = cls
    model.era = head
    model.era_min_entropy = None if min_entropy is None else float(min_entropy)
    model.era_tau = float(tau)
    model.era_inverse = inverse
    model.era_construction = construction
    _set_architecture(model, era=True)
    _record_model_args(model)
    return model


def remove_era(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_era` in place and return the plain timm model (the logits are the classifier's again).

    :param model: a model with an ERA head (``<arch>_era`` or from :func:`apply_era`).
    """
    if not has_era(model):
        raise ValueError(f"{type(model).__name__} has no ERA head to remove")
    plain_class = model._plain_class
    del model.era
    for name in ("era_min_entropy", "era_tau", "era_inverse", "era_construction"):
        delattr(model, name)
    model.__class__ = plain_class
    _set_architecture(model, era=False)
    model._model_args = {k: v for k, v in getattr(model, "_model_args", {}).items() if k not in _ERA_ARGS}
    return model


def _set_architecture(model: nn.Module, era: bool) -> None:
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not cfg.get("architecture"):
        return
    arch = cfg["architecture"]
    plain = arch[: -len(ERA_SUFFIX)] if arch.endswith(ERA_SUFFIX) else arch
    # pretrained_cfg and default_cfg are one dict in timm; edit a copy so another model sharing it is untouched.
    cfg = copy.copy(cfg)
    cfg["architecture"] = plain + ERA_SUFFIX if era else plain
    model.pretrained_cfg = cfg
    model.default_cfg = cfg


def _record_model_args(model: nn.Module) -> None:
    # timm's save_for_hf exports model._model_args; record the ERA arguments that differ from the defaults.
    args = {k: v for k, v in getattr(model, "_model_args", {}).items() if k not in _ERA_ARGS}
    if model.era_min_entropy is not None:
        args["min_entropy"] = model.era_min_entropy
    if model.era_tau != DEFAULT_ERA_TAU:
        args["era_tau"] = model.era_tau
    if model.era_inverse != DEFAULT_ERA_INVERSE:
        args["era_inverse"] = model.era_inverse
    if model.era_construction != DEFAULT_ERA_CONSTRUCTION:
        args["era_construction"] = model.era_construction
    model._model_args = args
