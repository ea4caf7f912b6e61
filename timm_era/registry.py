"""``<arch>_era`` names in timm's model registry, one per registered architecture, pretrained tags mirrored.

``timm.create_model("resnet50_era.a1_in1k", pretrained=True, num_classes=10, min_entropy=0.6)`` builds the plain
``resnet50`` through its own entrypoint with the ``resnet50.a1_in1k`` weight source (hub id, url or a
``pretrained_cfg_overlay=dict(file=...)``), then :func:`timm_era.apply_era` adds the head. The mirrored pretrained
cfgs differ from the plain ones only in ``architecture``, so ``timm.list_pretrained("*_era")`` lists the same
weights and a model remembers it was built as ``<arch>_era`` (``save_for_hf`` / ``local-dir:`` round trips).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import timm
from timm.models import get_arch_pretrained_cfgs, is_model_in_modules, model_entrypoint, register_model
from timm.models._pretrained import DefaultCfg, PretrainedCfg
from timm.models._registry import get_pretrained_cfg, split_model_name_tag
from torch import nn

from timm_era import era_models
from timm_era.head import (
    DEFAULT_ERA_CONSTRUCTION,
    DEFAULT_ERA_INVERSE,
    DEFAULT_ERA_TAU,
    ERA_SUFFIX,
    apply_era,
    resolve_min_entropy,
)

__all__ = ["ERA_MODULE", "create_era_model", "era_model_name", "plain_model_name", "register_era_models"]

ERA_MODULE = era_models.__name__.rsplit(".", 1)[-1]  # timm's module name for the ERA entries: "era_models"


def era_model_name(model_name: str) -> str:
    """``"resnet50.a1_in1k"`` -> ``"resnet50_era.a1_in1k"`` (the tag, if any, is kept).

    :param model_name: a plain timm model name, with or without a pretrained tag.
    """
    arch, tag = split_model_name_tag(model_name)
    return f"{arch}{ERA_SUFFIX}.{tag}" if tag else f"{arch}{ERA_SUFFIX}"


def plain_model_name(model_name: str) -> str:
    """``"resnet50_era.a1_in1k"`` -> ``"resnet50.a1_in1k"``; a name without the suffix is returned unchanged.

    :param model_name: an ERA (or plain) timm model name, with or without a pretrained tag.
    """
    arch, tag = split_model_name_tag(model_name)
    if arch.endswith(ERA_SUFFIX):
        arch = arch[: -len(ERA_SUFFIX)]
    return f"{arch}.{tag}" if tag else arch


def register_era_models(filter: str | list[str] = "") -> list[str]:
    """Register ``<arch>_era`` for every (non-deprecated) architecture in timm's registry not yet mirrored.

    Runs on ``import timm_era`` (unless ``TIMM_ERA_REGISTER=0``); call it again after registering models of your
    own to give them ERA twins. Idempotent.

    :param filter: wildcard filter(s) on plain architecture names, as in ``timm.list_models`` (default: all).
    :return: the ERA names registered by this call.
    """
    registered = []
    for arch in timm.list_models(filter):
        era_name = arch + ERA_SUFFIX
        if is_model_in_modules(arch, ERA_MODULE) or timm.is_model(era_name):
            continue
        pretrained_cfgs = get_arch_pretrained_cfgs(arch)
        if pretrained_cfgs:
            era_models.default_cfgs[era_name] = _mirror_default_cfg(era_name, pretrained_cfgs)
        entrypoint = _era_entrypoint(arch)
        setattr(era_models, era_name, entrypoint)
        register_model(entrypoint)
        registered.append(era_name)
    return registered


def _mirror_default_cfg(era_name: str, pretrained_cfgs: dict[str, PretrainedCfg]) -> DefaultCfg:
    # get_arch_pretrained_cfgs lists the default tag first, as register_model expects in DefaultCfg.tags.
    default_cfg = DefaultCfg(tags=deque())
    for name, cfg in pretrained_cfgs.items():
        tag = split_model_name_tag(name)[1]
        default_cfg.tags.append(tag)
        default_cfg.cfgs[tag] = replace(cfg, architecture=era_name)
        default_cfg.is_pretrained |= bool(cfg.has_weights)
    return default_cfg


def _era_entrypoint(arch: str) -> Callable[..., nn.Module]:
    era_name = arch + ERA_SUFFIX

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return create_era_model(arch, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = era_name
    entrypoint.__module__ = era_models.__name__
    entrypoint.__doc__ = f"``{arch}`` with an ERA head; see :func:`timm_era.registry.create_era_model`."
    return entrypoint


def create_era_model(
    arch: str,
    pretrained: bool = False,
    min_entropy: float | None = None,
    era_tau: float = DEFAULT_ERA_TAU,
    era_inverse: str = DEFAULT_ERA_INVERSE,
    era_construction: str = DEFAULT_ERA_CONSTRUCTION,
    **kwargs: Any,
) -> nn.Module:
    """Build plain ``arch`` with its own entrypoint and the ERA name's pretrained cfg, then apply the ERA head.

    :param arch: plain timm architecture name (no tag, no suffix).
    :param pretrained: load the weights named by the (mirrored) pretrained cfg.
    :param min_entropy: entropy floor in nats; ``None``: :func:`timm_era.default_min_entropy` of the class count.
    :param era_tau: ERA's share cap parameter (authors: 4).
    :param era_inverse: ``"approx"`` (paper) or ``"newton"`` (exact inverse of the share map).
    :param era_construction: ``"paper"`` (default, loose floor), ``"mixture"`` or ``"calibrated"`` (tight floor: the
        smallest output entropy equals ``min_entropy``); see :class:`era_core.SoftmaxERA`.
    :param kwargs: everything else ``timm.create_model`` passes to an entrypoint (``num_classes``,
        ``pretrained_cfg`` as tag / dict / ``PretrainedCfg``, ``pretrained_cfg_overlay``, ``drop_rate``...).
        ``features_only=True`` returns timm's feature extractor: it has no classifier, so no ERA head.
    """
    if kwargs.get("features_only"):
        if min_entropy is not None:
            raise ValueError(
                f"min_entropy={min_entropy} has no effect with features_only=True (no classifier head)"
            )
        return model_entrypoint(arch)(pretrained=pretrained, **kwargs)
    if "num_classes" in kwargs:  # fail before building (and downloading) when the floor cannot hold
        resolve_min_entropy(kwargs["num_classes"], min_entropy, era_tau, era_construction)
    kwargs["pretrained_cfg"] = _era_pretrained_cfg(arch + ERA_SUFFIX, kwargs.get("pretrained_cfg"))
    model = model_entrypoint(arch)(pretrained=pretrained, **kwargs)
    return apply_era(model, min_entropy, tau=era_tau, inverse=era_inverse, construction=era_construction)


def _era_pretrained_cfg(
    era_name: str, pretrained_cfg: str | dict[str, Any] | PretrainedCfg | None
) -> str | dict[str, Any] | PretrainedCfg | None:
    # A tag (or none) selects the mirrored cfg, whose architecture is the ERA name; explicit cfgs pass through.
    if pretrained_cfg is None or isinstance(pretrained_cfg, str):
        name = f"{era_name}.{pretrained_cfg}" if pretrained_cfg else era_name
        return get_pretrained_cfg(name) or pretrained_cfg
    return pretrained_cfg
