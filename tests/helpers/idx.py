"""Writers for torchvision's raw IDX files, so the real dataset classes read fake data."""

import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format (LeCun's MNIST files): magic ``0 0 0x08 ndim``, big-endian int32 dims, uint8 data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def upright_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 28x28 images with a bright bar across the top rows, so orientation is checkable."""
    images = rng.integers(0, 128, size=(len(labels), 28, 28), dtype=np.uint8)
    images[:, :3, :] = 255
    return images


def write_fake_emnist(root: Path, split: str, n_classes: int, per_class: tuple[int, int], seed: int = 0):
    """EMNIST raw files with images stored transposed, as the real files are. Returns upright images."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, n in zip(("train", "test"), per_class, strict=True):
        labels = np.repeat(np.arange(n_classes), n).astype(np.uint8)
        rng.shuffle(labels)
        upright = upright_images(labels, rng)
        prefix = root / "EMNIST" / "raw" / f"emnist-{split}-{part}"
        write_idx(Path(f"{prefix}-images-idx3-ubyte"), upright.transpose(0, 2, 1))
        write_idx(Path(f"{prefix}-labels-idx1-ubyte"), labels)
        out[part] = (upright, labels)
    return out


def write_fake_mnist(root: Path, folder: str, per_class: tuple[int, int], seed: int = 0):
    """MNIST-family raw files (``train``/``t10k``), stored upright. Returns upright images."""
    rng = np.random.default_rng(seed)
    out = {}
    for part, stem, n in zip(("train", "test"), ("train", "t10k"), per_class, strict=True):
        labels = np.repeat(np.arange(10), n).astype(np.uint8)
        upright = upright_images(labels, rng)
        write_idx(root / folder / "raw" / f"{stem}-images-idx3-ubyte", upright)
        write_idx(root / folder / "raw" / f"{stem}-labels-idx1-ubyte", labels)
        out[part] = (upright, labels)
    return out
