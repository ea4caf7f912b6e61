"""Tiny timm architectures and an entropy helper shared by the timm_era tests (a module with its own name, so that
``tests/timm`` and ``tests/trl`` collect together: both folders have a ``conftest``)."""

from __future__ import annotations

import torch

IMG_SIZE = 32
# One small member of each family the ERA head must serve; ViT needs img_size for 32x32 inputs.
ARCHITECTURES = {
    "resnet10t": {},
    "vit_tiny_patch16_224": {"img_size": IMG_SIZE},
    "convnext_atto": {},
    "efficientnet_b0": {},
    "mobilenetv3_small_050": {},
}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) along the last dim, computed in float64."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)
