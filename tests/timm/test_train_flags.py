"""The training CLI's flags take effect: --era-tau, --era-inverse, --amp, --layer-decay, --cutmix.

Each run is stopped at its first optimizer step by torch's global module and optimizer hooks, which record
the model, its first training batch, the dtype of its output and the optimizer's parameter groups.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from era_core import SoftmaxERA
from timm_era import train

FAST = ["--dataset", "digits", "--img-size", "16", "--batch-size", "32", "--no-progress", "--epochs", "1",
        "--model", "resnet10t_era"]  # fmt: skip


class _FirstStep(Exception):
    """Raised at the first optimizer step, once everything is recorded."""


def first_training_step(tmp_path, *flags: str) -> dict:
    seen: dict = {}

    def before_forward(module: nn.Module, args: tuple) -> None:
        if module.training and "model" not in seen:  # the outermost module is called first
            seen["model"], seen["batch"] = module, args[0].detach().clone()

    def after_forward(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if module is seen.get("model") and "output_dtype" not in seen:
            seen["output_dtype"] = output.dtype

    def before_step(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        seen["param_groups"] = [dict(group) for group in optimizer.param_groups]
        raise _FirstStep

    handles = [
        nn.modules.module.register_module_forward_pre_hook(before_forward),
        nn.modules.module.register_module_forward_hook(after_forward),
        register_optimizer_step_pre_hook(before_step),
    ]
    try:
        with pytest.raises(_FirstStep):
            train.main([*FAST, "--output", str(tmp_path), *flags])
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _era_heads(model: nn.Module) -> list[SoftmaxERA]:
    return [module for module in model.modules() if isinstance(module, SoftmaxERA)]


def test_era_tau_and_inverse_reach_the_model(tmp_path) -> None:
    default = _era_heads(first_training_step(tmp_path, "--min-entropy", "0.8")["model"])
    assert [(head.tau, head.inverse) for head in default] == [(4.0, "approx")]
    flagged = first_training_step(
        tmp_path, "--min-entropy", "-0.2", "--era-tau", "8", "--era-inverse", "newton"
    )
    assert [(head.tau, head.inverse, head.min_entropy) for head in _era_heads(flagged["model"])] == [
        (8.0, "newton", -0.2)
    ]


def test_era_tau_changes_the_feasible_interval(tmp_path) -> None:
    """-0.2 nats is below tau=4's interval for 10 classes but inside tau=8's (and the other way for 2.1)."""
    with pytest.raises(ValueError, match="feasible interval"):
        train.main([*FAST, "--output", str(tmp_path), "--min-entropy", "-0.2"])
    with pytest.raises(ValueError, match=r"tau=8\.0"):
        train.main([*FAST, "--output", str(tmp_path), "--min-entropy", "2.1", "--era-tau", "8"])


def test_amp_runs_the_forward_pass_in_bfloat16(tmp_path) -> None:
    assert first_training_step(tmp_path)["output_dtype"] == torch.float32
    assert first_training_step(tmp_path, "--amp")["output_dtype"] == torch.bfloat16


def test_layer_decay_scales_the_learning_rate_per_layer(tmp_path) -> None:
    plain = {group["lr"] for group in first_training_step(tmp_path)["param_groups"]}
    decayed = first_training_step(tmp_path, "--layer-decay", "0.5")["param_groups"]
    scales = sorted({group["lr_scale"] for group in decayed})
    assert len(plain) == 1 and len(scales) > 2
    assert scales[-1] == 1.0 and scales[0] < 0.5**2  # the head at full rate, the stem several halvings below
    (base_lr,) = plain
    for group in decayed:
        assert group["lr"] == pytest.approx(base_lr * group["lr_scale"])


def test_cutmix_pastes_one_box_from_the_reversed_batch(tmp_path) -> None:
    plain = first_training_step(tmp_path, "--smoothing", "0")["batch"]
    mixed = first_training_step(tmp_path, "--cutmix", "1.0")["batch"]
    changed = (mixed != plain).any(dim=0).any(dim=0)  # (H, W) pixels changed in some image
    assert changed.any() and not changed.all()
    rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
    box = (slice(None), slice(None), slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    torch.testing.assert_close(mixed[box], plain.flip(0)[box], rtol=0, atol=0)
    outside = torch.ones_like(mixed, dtype=torch.bool)
    outside[box] = False
    torch.testing.assert_close(mixed[outside], plain[outside], rtol=0, atol=0)
