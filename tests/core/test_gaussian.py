"""Spec section 1: the Gaussian ERA floor, its bounds and its errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from era_core import (
    BatchGaussianERA,
    GaussianERA,
    gaussian_entropy,
    gaussian_era_log_std,
    max_feasible_target,
)

ADVERSARIAL_SCALES = [1e-3, 1.0, 30.0, 1e4]


def _pre_activations(batch: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=gen)
    scales = torch.tensor(ADVERSARIAL_SCALES).repeat_interleave(batch // len(ADVERSARIAL_SCALES) + 1)[:batch]
    z = z * scales[:, None]
    z[0] = 0.0
    z[1] = 1e4
    z[2, :] = -1e4
    z[2, 0] = 1e4  # one-hot extreme: all mass of the softmax on one dimension
    return z


@settings(max_examples=60, deadline=None)
@given(
    dim=st.integers(1, 24),
    per_dim=st.floats(-6.0, 1.4),
    lmin=st.floats(-20.0, -1.0),
    seed=st.integers(0, 2**16),
)
def test_gaussian_entropy_floor_holds_exactly(dim: int, per_dim: float, lmin: float, seed: int) -> None:
    era = GaussianERA(dim, target_entropy_per_dim=per_dim, log_std_min=lmin, log_std_max=0.0)
    log_std = era(_pre_activations(64, dim, seed))
    entropy = gaussian_entropy(log_std.double())
    tolerance = 1e-5 * (1.0 + abs(era.target_entropy) + dim * abs(lmin))
    assert torch.all(entropy >= era.target_entropy - tolerance)


@settings(max_examples=40, deadline=None)
@given(dim=st.integers(1, 16), per_dim=st.floats(-4.0, 1.4), seed=st.integers(0, 2**16))
def test_log_std_stays_within_bounds(dim: int, per_dim: float, seed: int) -> None:
    era = GaussianERA(dim, target_entropy_per_dim=per_dim, log_std_min=-8.0, log_std_max=0.0)
    log_std = era(_pre_activations(32, dim, seed))
    assert torch.all(log_std >= -8.0) and torch.all(log_std <= 0.0)


def test_default_target_is_minus_half_per_dimension() -> None:
    assert GaussianERA(6).target_entropy == -3.0
    assert GaussianERA(6, target_entropy=1.5).target_entropy == 1.5
    assert GaussianERA(4, target_entropy_per_dim=0.25).target_entropy == 1.0


def test_floor_binds_when_no_clamp_is_active() -> None:
    """With lmin far away the Gaussian entropy equals the target: the floor is tight, not just a bound."""
    era = GaussianERA(5, target_entropy=-2.0, log_std_min=-100.0)
    entropy = gaussian_entropy(era(torch.randn(128, 5)).double())
    torch.testing.assert_close(entropy, torch.full_like(entropy, -2.0), atol=1e-5, rtol=0)


def test_infeasible_target_raises_with_largest_feasible_value() -> None:
    largest = max_feasible_target(4, 0.0)
    with pytest.raises(ValueError, match=f"largest feasible target {largest:.4g}"):
        GaussianERA(4, target_entropy=largest + 0.1)
    with pytest.raises(ValueError, match="largest feasible target"):
        gaussian_era_log_std(torch.zeros(2, 4), largest + 0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(action_dim=0), "positive integer"),
        (dict(action_dim=2, log_std_min=0.0, log_std_max=0.0), "log_std_min < log_std_max"),
        (dict(action_dim=2, target_entropy=1.0, target_entropy_per_dim=0.5), "not both"),
        (dict(action_dim=2, target_entropy=math.nan), "finite"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GaussianERA(**kwargs)


def test_wrong_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        GaussianERA(3)(torch.zeros(2, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_and_gradients_finite(dtype: torch.dtype) -> None:
    era = GaussianERA(6, learn_delta=True)
    z = (_pre_activations(64, 6, 0)).to(dtype).requires_grad_(True)
    log_std = era(z)
    assert log_std.dtype == dtype and torch.isfinite(log_std).all()
    log_std.float().sum().backward()
    assert torch.isfinite(z.grad).all()


def test_learned_delta_gets_gradient_only_from_the_compensation_loss() -> None:
    era = GaussianERA(3, learn_delta=True)
    z = torch.randn(4, 3, requires_grad=True)
    era(z).sum().backward()
    assert era.delta.grad is None
    era.compensation_loss(torch.full((4,), 5.0)).backward()
    assert era.delta.grad.item() == pytest.approx(-5.0 - era.target_entropy)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 6, 17, 64])
def test_floor_holds_in_every_dtype(dtype: torch.dtype, dim: int) -> None:
    era = GaussianERA(dim, target_entropy_per_dim=-0.5, log_std_min=-8.0)
    log_std = era(_pre_activations(256, dim, dim).to(dtype))
    assert log_std.dtype == dtype
    entropy = gaussian_entropy(log_std.double())
    assert torch.all(entropy >= era.target_entropy - 1e-5 * dim)
    assert torch.all(log_std >= -8.0) and torch.all(log_std <= 0.0)


def test_float64_is_computed_in_float64() -> None:
    z = _pre_activations(64, 17, 1).double()
    k = -0.5 * 17 - 0.5 * 17 * math.log(2 * math.pi * math.e)
    expected = (k * torch.softmax(z, dim=-1)).clamp_min(-8.0)
    torch.testing.assert_close(gaussian_era_log_std(z, -0.5 * 17), expected, rtol=1e-13, atol=1e-13)


def test_learned_delta_grows_when_entropy_is_below_target() -> None:
    era = GaussianERA(3, target_entropy=-1.5, learn_delta=True)
    optimizer = torch.optim.SGD(era.parameters(), lr=0.1)
    low_entropy_log_prob = torch.full((32,), 5.0)  # measured entropy -5 < H0 = -1.5
    era.compensation_loss(low_entropy_log_prob).backward()
    optimizer.step()
    assert era.delta.item() > 0
    assert era.entropy_floor().item() > -1.5


def test_learned_delta_is_capped_at_feasibility() -> None:
    era = GaussianERA(2, target_entropy=-1.0, learn_delta=True)
    with torch.no_grad():
        era.delta.fill_(100.0)
    assert era.entropy_floor().item() == pytest.approx(max_feasible_target(2, 0.0))
    assert torch.all(era(torch.randn(8, 2)) <= 0.0)
    # At the cap a still-too-low entropy no longer pushes delta up (no wind-up).
    loss = era.compensation_loss(torch.full((8,), 10.0))
    loss.backward()
    assert era.delta.grad.item() == 0.0


def test_constant_delta_is_a_buffer_saved_in_state_dict() -> None:
    era = GaussianERA(2, delta=0.3)
    assert "delta" in era.state_dict() and not list(era.parameters())
    assert era.entropy_floor().item() == pytest.approx(-1.0 + 0.3)


def test_batch_variant_holds_batch_mean_entropy_and_tracks_shift() -> None:
    era = BatchGaussianERA(4, target_entropy=-2.0, log_std_min=-50.0, log_std_max=50.0, momentum=1.0)
    z = torch.randn(256, 4) * 3.0 + 1.0
    log_std = era.train()(z)
    assert gaussian_entropy(log_std.double()).mean().item() == pytest.approx(-2.0, abs=1e-4)
    torch.testing.assert_close(era.eval()(z), log_std)


def test_batch_variant_rejects_bad_momentum() -> None:
    with pytest.raises(ValueError, match="momentum"):
        BatchGaussianERA(2, momentum=0.0)


def test_routed_delta_stands_in_for_the_parameter() -> None:
    era = GaussianERA(3, target_entropy=-1.5, learn_delta=True)
    z = torch.randn(16, 3)
    routed = era.delta * 1.0 + 0.25
    entropy = gaussian_entropy(era(z, delta=routed).double())
    assert torch.all(entropy >= -1.25 - 1e-5)
    torch.testing.assert_close(era(z, delta=era.delta * 1.0), era(z))
