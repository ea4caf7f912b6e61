"""Namespace of the generated ``<arch>_era`` entrypoints, as ``timm.models.resnet`` is for ``resnet*``.

:func:`timm_era.register_era_models` fills ``default_cfgs``, ``__all__`` and the module attributes; timm's registry
records this module's name, so ``timm.list_models(module="era_models")`` lists exactly the ERA names.
"""

from __future__ import annotations

from typing import Any

__all__: list[str] = []
default_cfgs: dict[str, Any] = {}
