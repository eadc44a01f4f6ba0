"""Decode a dataset once into flat uint8 tensors: ``(N, H*W)`` images in upright row-major order.

Decoding EMNIST byclass through torchvision takes seconds and briefly needs twice its 550 MB; a sweep
repeats it in every job. So the first decode is written to ``<root>/<Dataset>/decoded/`` as ``.npy``
files, and every run, the first included, reads from there only the rows its split keeps
(``CachedImages``).
"""

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision import datasets


class CachedImages:
    """``(N, D)`` uint8 images in a ``.npy`` file, read only when indexed by rows.

    ``images[rows]`` streams the file in blocks and keeps the requested rows, in the requested order:
    memory holds the result and one block, never the whole array.
    """

    BLOCK_BYTES = 64 * 2**20

    def __init__(self, path: Path) -> None:
        try:
            header = np.load(path, mmap_mode="r")  # reads the header only
        except (ValueError, OSError) as err:
            raise _stale_cache(path, str(err)) from err
        self.path, self.shape, self.offset = path, header.shape, header.offset
        if header.dtype != np.uint8 or header.ndim != 2:
            raise _stale_cache(path, f"a {header.dtype} array of shape {header.shape}, not (N, D) uint8")
        del header

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        n, d = self.shape
        wanted, order = rows.sort(stable=True)
        in_order = torch.equal(order, torch.arange(len(rows)))  # splits are sorted: gather in place
        out = torch.empty((len(rows), d), dtype=torch.uint8)
        block = max(1, self.BLOCK_BYTES // d)
        buf = torch.empty((block, d), dtype=torch.uint8)
        with self.path.open("rb") as f:
            for start in range(0, n, block):
                lo, hi = torch.searchsorted(wanted, torch.tensor([start, start + block])).tolist()
                if lo == hi:
                    continue
                f.seek(self.offset + start * d)
                count = min(block, n - start)
                if f.readinto(buf[:count].numpy()) != count * d:
                    raise _stale_cache(self.path, "the file is shorter than its header says")
                if in_order:
                    torch.index_select(buf, 0, wanted[lo:hi] - start, out=out[lo:hi])
                else:
                    out.index_copy_(0, order[lo:hi], buf.index_select(0, wanted[lo:hi] - start))
        return out


def _stale_cache(path: Path, problem: str) -> "CorruptDataError":
    return CorruptDataError(
        f"The decoded-data cache {path} is unreadable: {problem}. Fix: delete it; the next run decodes "
        "the raw files again and rewrites it (or set data.cache=false). The raw files are untouched."
    )


class Source(NamedTuple):
    x_train: "torch.Tensor | CachedImages"  # (N, D) uint8
    y_train: torch.Tensor  # (N,) int64 class labels
    x_test: "torch.Tensor | CachedImages"  # (M, D) uint8
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
        del ds, images  # before the next decode: byclass's train images are 525 MiB
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


class CacheWriteError(OSError):
    """The decoded cache could not be written next to the raw files."""


def cache_paths(dataset: str, root: str | Path, split: str) -> dict[str, Path]:
    """Where the decode of these raw files is cached. The name carries a digest of the raw files'
    sizes and modification times, so replacing them invalidates the cache."""
    files = raw_files(dataset, root, split)
    stamp = "".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns};" for p in files)
    digest = hashlib.sha1(stamp.encode()).hexdigest()[:12]
    folder = Path(root) / TORCHVISION[dataset].__name__ / "decoded"
    return {k: folder / f"{split}-{digest}-{k}.npy" for k in Source._fields}


def _write_cache(src: Source, paths: dict[str, Path]) -> None:
    folder = next(iter(paths.values())).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for key, path in paths.items():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # parallel jobs: last replace wins
            with tmp.open("wb") as f:
                np.save(f, getattr(src, key).numpy())
            os.replace(tmp, path)
    except OSError as err:
        raise CacheWriteError(
            f"Could not write the decoded-data cache to {folder} ({err}). Fix: make that folder "
            "writable, or point data.root at a writable copy, or set data.cache=false to decode the raw "
            "files on every run instead. The raw files are untouched."
        ) from err
    split = paths["x_train"].name.split("-")[0]
    for old in folder.glob(f"{split}-*.npy"):  # decodes of raw files that have since been replaced
        if old not in paths.values():
            old.unlink(missing_ok=True)


def load_cached(dataset: str, root: str | Path, split: str) -> Source:
    """``load_torchvision``, read from the decoded cache when there is one, written to it when not."""
    check_raw_files(dataset, root, split)
    paths = cache_paths(dataset, root, split)
    if not all(p.is_file() for p in paths.values()):
        _write_cache(load_torchvision(dataset, root, split, download=False), paths)
        # Then read back like every later run: the split keeps only its rows (the file is still in the
        # page cache), never holding them beside the whole decode.
    labels = {k: torch.from_numpy(np.load(paths[k])).long() for k in ("y_train", "y_test")}
    return Source(
        CachedImages(paths["x_train"]), labels["y_train"], CachedImages(paths["x_test"]), labels["y_test"]
    )


def load_source(dataset: str, root: str | Path, split: str, download: bool, cache: bool = False) -> Source:
    """Decode ``dataset``; with ``cache``, through the decoded cache (see the module docstring)."""
    if dataset == "digits":
        return load_digits()
    if cache and all(p.is_file() for p in raw_files(dataset, root, split)):
        return load_cached(dataset, root, split)
    return load_torchvision(dataset, root, split, download)
