"""Decode a dataset once into flat uint8 tensors: ``(N, H*W)`` images in upright row-major order."""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision import datasets


class Source(NamedTuple):
    x_train: torch.Tensor  # (N, D) uint8
    y_train: torch.Tensor  # (N,) int64 class labels
    x_test: torch.Tensor  # (M, D) uint8
    y_test: torch.Tensor  # (M,) int64


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not under ``data.root`` and could not be downloaded."""


TORCHVISION = {
    "emnist": datasets.EMNIST,
    "mnist": datasets.MNIST,
    "fashion_mnist": datasets.FashionMNIST,
    "kmnist": datasets.KMNIST,
}
IMAGE_SHAPES = {name: (28, 28) for name in TORCHVISION} | {"digits": (8, 8)}
DATASETS = tuple(IMAGE_SHAPES)
EMNIST_SPLITS = datasets.EMNIST.splits


def class_names(dataset: str, split: str = "byclass") -> list[str]:
    """Label names in label order, known without reading any data (MNIST's ``'0 - zero'`` -> ``'0'``)."""
    if dataset == "digits":
        return [str(d) for d in range(10)]
    if dataset == "emnist":
        return list(datasets.EMNIST.classes_split_dict[split])
    return [c.split(" - ")[0] for c in TORCHVISION[dataset].classes]


def raw_files(dataset: str, root: str | Path, split: str = "byclass") -> list[Path]:
    """The uncompressed IDX files torchvision reads for ``dataset`` under ``root``."""
    folder = Path(root) / TORCHVISION[dataset].__name__ / "raw"
    if dataset == "emnist":
        stems = [f"emnist-{split}-{part}" for part in ("train", "test")]
    else:
        stems = ["train", "t10k"]
    return [folder / f"{s}-{kind}-ubyte" for s in stems for kind in ("images-idx3", "labels-idx1")]


def not_found(dataset: str, root: str | Path, split: str, download: bool) -> DatasetNotFoundError:
    missing = [str(p) for p in raw_files(dataset, root, split) if not p.is_file()]
    how = "the download failed (no network?)" if download else "data.download=false"
    return DatasetNotFoundError(
        f"{dataset} (split {split!r}) was not found under data.root={str(root)!r} and {how}. "
        f"Missing files: {', '.join(missing) or 'none (they exist but could not be read)'}. "
        "Fix: put the uncompressed IDX files there (torchvision's raw layout), or run with "
        "data.download=true on a machine with network access, or point data.root at a copy; "
        "for an offline run use data=digits (scikit-learn's bundled digits). "
        "No other dataset is substituted."
    )


class CorruptDataError(ValueError):
    """A dataset file is there but cannot be what torchvision expects."""


def idx_shape(path: Path) -> tuple[int, ...]:
    """Validate an uncompressed uint8 IDX file (header and length) and return its shape."""
    size = path.stat().st_size
    with path.open("rb") as f:
        header = f.read(4)
        if len(header) < 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 3:
            raise _corrupt(path, f"bad IDX header {header.hex() or '(empty)'}, expected 000008 + ndim")
        dims_raw = f.read(4 * header[3])
    if len(dims_raw) < 4 * header[3]:
        raise _corrupt(path, "the header is cut short")
    shape = tuple(int.from_bytes(dims_raw[i : i + 4], "big") for i in range(0, len(dims_raw), 4))
    expected = 4 + 4 * len(shape) + int(np.prod(shape))
    if size != expected:
        raise _corrupt(path, f"{size} bytes where the header {shape} implies {expected} (truncated?)")
    return shape


def _corrupt(path: Path, problem: str) -> CorruptDataError:
    return CorruptDataError(
        f"{path} is corrupt: {problem}. Fix: delete it and download again (data.download=true on a "
        "machine with network access), or copy an intact, uncompressed copy there. Nothing was cached."
    )


def check_raw_files(dataset: str, root: str | Path, split: str) -> None:
    """Validate every raw file of ``dataset`` and that image and label counts agree."""
    files = raw_files(dataset, root, split)
    for images, labels in (files[0:2], files[2:4]):
        n_images, n_labels = idx_shape(images)[0], idx_shape(labels)[0]
        if n_images != n_labels:
            raise _corrupt(labels, f"{n_labels} labels for {n_images} images in {images.name}")


def _flatten(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), -1).contiguous()


def load_torchvision(dataset: str, root: str | Path, split: str, download: bool) -> Source:
    """Decode train and test splits through the real torchvision dataset classes."""
    cls = TORCHVISION[dataset]
    kwargs = {"split": split} if dataset == "emnist" else {}
    if all(p.is_file() for p in raw_files(dataset, root, split)):
        check_raw_files(dataset, root, split)
    parts = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=download, **kwargs)
        except (RuntimeError, OSError) as err:
            raise not_found(dataset, root, split, download) from err
        images = ds.data
        if dataset == "emnist":  # EMNIST stores images transposed
            images = images.transpose(1, 2)
        parts += [_flatten(images), ds.targets.long()]
    return Source(*parts)


def load_digits() -> Source:
    """scikit-learn's bundled 8x8 digits, intensities 0..16 rescaled to uint8 0..255.

    The data has no official test split, so a fixed stratified 30% plays that role; it does not move
    with ``data.seed``.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=0.3, stratify=bunch.target, random_state=0
    )
    return Source(
        _flatten(torch.from_numpy(x_tr)),
        torch.from_numpy(y_tr).long(),
        _flatten(torch.from_numpy(x_te)),
        torch.from_numpy(y_te).long(),
    )


def load_source(dataset: str, root: str | Path, split: str, download: bool) -> Source:
    if dataset == "digits":
        return load_digits()
    return load_torchvision(dataset, root, split, download)
