"""Tiny timm models and inputs shared by the timm_era tests (the suite-wide conftest sets offline hubs, 1 thread)."""

from __future__ import annotations

import pytest
import torch

import timm_era  # noqa: F401  (registers the <arch>_era names)

IMG_SIZE = 32
# One small member of each family the ERA head must serve; ViT needs img_size for 32x32 inputs.
ARCHITECTURES = {
    "resnet10t": {},
    "vit_tiny_patch16_224": {"img_size": IMG_SIZE},
    "convnext_atto": {},
    "efficientnet_b0": {},
    "mobilenetv3_small_050": {},
}


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(0))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) along the last dim, computed in float64."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)
