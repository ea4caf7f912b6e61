"""Inputs shared by the timm_era tests (the suite-wide conftest sets offline hubs, 1 thread)."""

from __future__ import annotations

import pytest
import torch
from timm_era_cases import IMG_SIZE

import timm_era  # noqa: F401  (registers the <arch>_era names)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(0))
