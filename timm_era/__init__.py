"""ERA (Entropy Regularizing Activation) for timm classifiers: a model name, a head, a training script.

``import timm_era`` registers ``<arch>_era`` for every architecture in timm's registry (set the environment
variable ``TIMM_ERA_REGISTER=0`` before the import to skip it, and call :func:`register_era_models` when wanted)::

    import timm, timm_era
    model = timm.create_model("resnet50_era", num_classes=10, min_entropy=0.6)
    model = timm_era.apply_era(timm.create_model("convnext_atto"), min_entropy=1.2)

``timm.list_models(exclude_filters="*_era")`` lists the plain names only,
``timm.list_models(module="era_models")`` the ERA names only.
"""

import os

from timm_era.head import (
    DEFAULT_ERA_CONSTRUCTION,
    DEFAULT_ERA_INVERSE,
    DEFAULT_ERA_TAU,
    apply_era,
    build_era_head,
    default_min_entropy,
    era_class,
    has_era,
    remove_era,
    resolve_min_entropy,
)
from timm_era.registry import create_era_model, era_model_name, plain_model_name, register_era_models

__all__ = [
    "DEFAULT_ERA_CONSTRUCTION",
    "DEFAULT_ERA_INVERSE",
    "DEFAULT_ERA_TAU",
    "apply_era",
    "build_era_head",
    "create_era_model",
    "default_min_entropy",
    "era_class",
    "era_model_name",
    "has_era",
    "plain_model_name",
    "register_era_models",
    "remove_era",
    "resolve_min_entropy",
]

if os.environ.get("TIMM_ERA_REGISTER", "1") != "0":
    register_era_models()
