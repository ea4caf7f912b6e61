"""The truncated normal on a CUDA device: the torch path's values, gradients and hot path without host syncs.

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/core/test_truncated_normal_cuda.py``.
"""

import math

import pytest
import torch

from era_core import TruncatedNormal

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (loc, scale): interior, at and near the bounds, the smallest scale the SAC actor produces, wide.
LOCS = [0.0, 0.3, 0.9, -0.999, 1.0, -1.0, 1.0 - 1e-6, 0.0, 0.5]
SCALES = [1.0, 0.05, 0.3, 0.01, math.exp(-8.0), math.exp(-8.0), math.exp(-8.0), math.exp(-8.0), 20.0]
TOLERANCE = {torch.float32: {"rtol": 1e-4, "atol": 1e-4}, torch.float64: {"rtol": 1e-9, "atol": 1e-9}}


def _parameters(device: str, dtype: torch.dtype, repeat: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    loc = torch.tensor(LOCS, dtype=dtype, device=device).repeat(repeat)
    scale = torch.tensor(SCALES, dtype=dtype, device=device).repeat(repeat)
    return loc.requires_grad_(), scale.requires_grad_()


def _on_cpu_in_float64(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The same numbers (float32 ones rounded as on the GPU) as float64 CPU leaves."""
    return [t.detach().cpu().double().requires_grad_(t.requires_grad) for t in tensors]


def _reference_log_prob_and_entropy(
    loc: torch.Tensor, scale: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU float64 two-call path (no fused node) at the same parameters and points."""
    loc, scale, value = _on_cpu_in_float64(loc, scale, value)
    with torch.no_grad():
        dist = TruncatedNormal(loc, scale)
        return dist.log_prob(value), dist.entropy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_and_log_prob_on_cuda_match_the_cpu_float64_reference(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    loc, scale = _parameters("cuda", dtype)
    with torch.no_grad():
        x, log_prob = TruncatedNormal(loc, scale).sample_and_log_prob()
    assert x.device.type == "cuda" and x.dtype == dtype and log_prob.dtype == dtype
    assert torch.all(x >= -1.0) and torch.all(x <= 1.0)
    reference, _ = _reference_log_prob_and_entropy(loc, scale, x)
    torch.testing.assert_close(log_prob.cpu().double(), reference, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_log_prob_and_entropy_on_cuda_match_the_cpu_float64_reference(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    loc, scale = _parameters("cuda", dtype)
    value = TruncatedNormal(loc.detach(), scale.detach()).sample()
    log_prob, entropy = TruncatedNormal(loc, scale).log_prob_and_entropy(value)
    (log_prob.sum() + entropy.sum()).backward()
    reference_log_prob, reference_entropy = _reference_log_prob_and_entropy(loc, scale, value)
    torch.testing.assert_close(log_prob.detach().cpu().double(), reference_log_prob, **TOLERANCE[dtype])
    torch.testing.assert_close(entropy.detach().cpu().double(), reference_entropy, **TOLERANCE[dtype])
    # The gradients of the CPU float64 fused node (itself tested against autograd through the reference).
    cpu_loc, cpu_scale, cpu_value = _on_cpu_in_float64(loc, scale, value)
    cpu_log_prob, cpu_entropy = TruncatedNormal(cpu_loc, cpu_scale).log_prob_and_entropy(cpu_value)
    (cpu_log_prob.sum() + cpu_entropy.sum()).backward()
    for grad, cpu_grad in ((loc.grad, cpu_loc.grad), (scale.grad, cpu_scale.grad)):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad.cpu().double(), cpu_grad, **TOLERANCE[dtype])


def test_rsample_on_cuda_stays_in_support_with_finite_gradients() -> None:
    torch.manual_seed(2)
    loc, scale = _parameters("cuda", torch.float32)
    dist = TruncatedNormal(loc, scale)
    x = dist.rsample((16,))
    assert torch.all(x >= -1.0) and torch.all(x <= 1.0)
    log_prob = dist.log_prob(x)
    assert torch.isfinite(log_prob).all()
    (x.sum() + log_prob.sum() + dist.entropy().sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(scale.grad).all()


def test_training_step_on_cuda_makes_no_host_sync() -> None:
    """SAC's actor step (rsample, log-prob, entropy, backward) and a rollout's sample queue without waiting."""
    loc, scale = _parameters("cuda", torch.float32)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dist = TruncatedNormal(loc, scale, validate_args=False)
        x = dist.rsample()
        log_prob, entropy = dist.log_prob_and_entropy(x.detach())
        (x.sum() + dist.log_prob(x).sum() + log_prob.sum() + entropy.sum()).backward()
        with torch.no_grad():
            TruncatedNormal(loc, scale, validate_args=False).sample_and_log_prob()
    finally:
        torch.cuda.set_sync_debug_mode("default")
