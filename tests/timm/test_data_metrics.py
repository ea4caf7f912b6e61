"""In-memory datasets (digits, Fashion-MNIST idx files) and the evaluation metrics."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch

from timm_era.data import FASHION_MNIST_DIR, load_in_memory_dataset, read_idx
from timm_era.metrics import ClassificationMetrics


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path, name) -> None:
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    _write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(read_idx(tmp_path / name), array)


def test_read_idx_rejects_other_files(tmp_path) -> None:
    (tmp_path / "bad").write_bytes(b"\x89PNG....")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_a_directory_of_idx_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (count, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (count,)))
    splits = load_in_memory_dataset("fashion-mnist", img_size=32, in_chans=3, data_dir=tmp_path)
    assert splits.train_images.shape == (6, 3, 32, 32) and splits.test_images.shape == (4, 3, 32, 32)
    assert splits.train_labels.dtype == torch.int64 and splits.num_classes == 10
    assert abs(splits.train_images.mean().item()) < 1e-5  # normalised with the train split's statistics


def test_missing_fashion_mnist_names_the_debian_package(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_in_memory_dataset("fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_debian_fashion_mnist_has_the_full_splits() -> None:
    splits = load_in_memory_dataset("fashion-mnist")
    assert splits.train_images.shape == (60000, 1, 28, 28) and splits.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(splits.test_labels).tolist() == [1000] * 10


def test_digits_split_is_fixed_and_disjoint() -> None:
    a, b = load_in_memory_dataset("digits"), load_in_memory_dataset("digits", img_size=8)
    assert a.train_images.shape == (1438, 1, 32, 32) and a.test_images.shape == (359, 1, 32, 32)
    torch.testing.assert_close(a.test_labels, b.test_labels)


@pytest.mark.parametrize("kwargs, message", [({"name": "mnist"}, "unknown in-memory dataset"),
                                             ({"name": "digits", "in_chans": 2}, "in_chans must be 1 or 3")])  # fmt: skip
def test_bad_dataset_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_in_memory_dataset(**kwargs)


def test_metrics_on_a_hand_computed_batch() -> None:
    # Two samples, 2 classes: confident and right (p=0.9), unsure and wrong (p=0.6 on the wrong class).
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]], dtype=torch.float64)
    metrics = ClassificationMetrics()
    metrics.update(probs.log(), torch.tensor([0, 1]))
    out = metrics.compute()
    assert out["count"] == 2 and out["top1"] == pytest.approx(50.0) and out["top5"] == pytest.approx(100.0)
    assert out["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4)) / 2)
    # bins: 0.9 (conf 0.9, acc 1) and 0.6 (conf 0.6, acc 0): ECE = (0.1 + 0.6) / 2
    assert out["ece"] == pytest.approx(0.35)
    entropies = [-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in (0.9, 0.6)]
    assert out["entropy_mean"] == pytest.approx(sum(entropies) / 2)
    assert out["entropy_min"] == pytest.approx(min(entropies))


def test_metrics_accumulate_over_batches_like_one_batch() -> None:
    logits, target = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)), torch.arange(50) % 7
    whole, parts = ClassificationMetrics(), ClassificationMetrics()
    whole.update(logits, target)
    for chunk in range(0, 50, 16):
        parts.update(logits[chunk : chunk + 16], target[chunk : chunk + 16])
    for key, value in whole.compute().items():
        assert parts.compute()[key] == pytest.approx(value)


def test_metrics_without_samples_raise() -> None:
    with pytest.raises(ValueError, match="no samples"):
        ClassificationMetrics().compute()
