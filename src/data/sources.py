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


def _flatten(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), -1).contiguous()


def load_torchvision(dataset: str, root: str | Path, split: str, download: bool) -> Source:
    """Decode train and test splits through the real torchvision dataset classes."""
    cls = TORCHVISION[dataset]
    kwargs = {"split": split} if dataset == "emnist" else {}
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
