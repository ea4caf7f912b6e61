"""Small real image datasets that need no download, held in memory as normalised tensors.

- ``digits``: scikit-learn's bundled ``load_digits`` (1797 8x8 gray digits, 10 classes), split 80/20 with a fixed
  permutation.
- ``fashion-mnist``: the idx files of Debian's ``dataset-fashion-mnist`` package (60000 train / 10000 test 28x28
  gray images, 10 classes; ``apt-get install dataset-fashion-mnist`` puts them in
  :data:`FASHION_MNIST_DIR`), read with numpy, ``.gz`` or not.

Images are resized (bilinear) to the requested size, repeated to the requested channel count and normalised with
the training split's mean and standard deviation.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["FASHION_MNIST_DIR", "IN_MEMORY_DATASETS", "InMemorySplits", "load_in_memory_dataset", "read_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
# name -> (default image side, class count); digits are 8x8 natively, upsampled so that timm's strided stems fit
IN_MEMORY_DATASETS: dict[str, tuple[int, int]] = {"digits": (32, 10), "fashion-mnist": (28, 10)}
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
}


@dataclass
class InMemorySplits:
    """Train and test tensors: images ``(N, C, H, W)`` float32 normalised, labels ``(N,)`` int64."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (the MNIST format), gzip-compressed when its name ends in ``.gz``."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"{stem}(.gz) not found in {directory}; install Debian's dataset-fashion-mnist package "
        "(apt-get install dataset-fashion-mnist) or pass the directory holding the idx files"
    )


def _load_fashion_mnist(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return tuple(  # type: ignore[return-value]
        read_idx(_find_idx(data_dir, stem))
        for stem in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    )


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(digits.target))
    num_test = round(DIGITS_TEST_FRACTION * len(order))
    test, train = order[:num_test], order[num_test:]
    return digits.images[train], digits.target[train], digits.images[test], digits.target[test]


def _to_tensor(images: np.ndarray, img_size: int, in_chans: int) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).unsqueeze(1)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    return x.expand(-1, in_chans, -1, -1).contiguous()


def load_in_memory_dataset(
    name: str, img_size: int | None = None, in_chans: int = 1, data_dir: str | os.PathLike | None = None
) -> InMemorySplits:
    """Load one of :data:`IN_MEMORY_DATASETS` as normalised tensors.

    :param name: ``"digits"`` or ``"fashion-mnist"``.
    :param img_size: side of the square images; ``None``: 32 for digits, 28 (native) for Fashion-MNIST.
    :param in_chans: 1, or 3 to repeat the gray channel.
    :param data_dir: directory of the Fashion-MNIST idx files (default :data:`FASHION_MNIST_DIR`).
    """
    if name not in IN_MEMORY_DATASETS:
        raise ValueError(f"unknown in-memory dataset {name!r}; available: {sorted(IN_MEMORY_DATASETS)}")
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 for the gray {name} images, got {in_chans}")
    default_size, num_classes = IN_MEMORY_DATASETS[name]
    img_size = default_size if img_size is None else int(img_size)
    if img_size < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    if name == "digits":
        arrays = _load_digits()
    else:
        arrays = _load_fashion_mnist(Path(data_dir) if data_dir else FASHION_MNIST_DIR)
    train_x, train_y, test_x, test_y = arrays
    train = _to_tensor(train_x, img_size, in_chans)
    test = _to_tensor(test_x, img_size, in_chans)
    mean, std = train.mean(), train.std()
    return InMemorySplits(
        train_images=(train - mean) / std,
        train_labels=torch.from_numpy(np.array(train_y, dtype=np.int64)),
        test_images=(test - mean) / std,
        test_labels=torch.from_numpy(np.array(test_y, dtype=np.int64)),
        num_classes=num_classes,
    )
