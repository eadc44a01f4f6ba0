"""New samples to score (``src.score input=...``), read and checked against what the model was
trained on: ``.npy``, ``.npz``, ``.csv``, ``.parquet``, or a folder of images.

Pixels come out in [0, 1], as the model trained on them: image files and uint8 arrays are divided by 255,
float arrays must already lie in [0, 1]. A table's features come out raw: the model standardises them.
Every problem is one ``InputError`` that names the file, what was expected and what was found.
"""

import math
from pathlib import Path

import numpy as np
import torch

from src.data.tables import TABLE_SUFFIXES, check_features, read_frame
from src.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARRAY_SUFFIXES = (".npy", ".npz")


class InputError(UsageError, ValueError):
    """New samples that do not fit the model."""


def _problem(path: Path, what: str) -> InputError:
    return InputError(f"input={str(path)!r} cannot be scored: {what}")


def read_samples(path: str | Path, inputs: dict, resize: bool = False) -> tuple[list[str], torch.Tensor]:
    """Sample names (row numbers, or file names for a folder) and the samples as float32 ``(N, D)``.

    ``inputs`` says what the model takes (``OneClassDataModule.input_description``): ``kind``
    (``pixels`` or ``features``), ``shape`` and, for a table, the feature ``names``.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_images(path, inputs, resize)
    if not path.is_file():
        raise InputError(f"input={str(path)!r} is neither a file nor a folder.")
    if path.suffix in ARRAY_SUFFIXES:
        x = _check_array(path, _load_array(path), inputs)
    elif path.suffix in TABLE_SUFFIXES:
        x = _read_table(path, inputs)
    else:
        raise _problem(
            path,
            f"its suffix {path.suffix!r} is not one of {[*ARRAY_SUFFIXES, *TABLE_SUFFIXES]}, nor is it a "
            "folder of images.",
        )
    return [str(i) for i in range(len(x))], torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _load_array(path: Path) -> np.ndarray:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise _problem(path, f"it is unreadable ({err}).") from err
    if path.suffix == ".npy":
        return loaded
    with loaded:
        keys = list(loaded.keys())
        if len(keys) != 1 and "x" not in keys:
            raise _problem(path, f"it holds the arrays {keys}: save one array, or name the samples x.")
        return loaded["x" if "x" in keys else keys[0]]


def _check_array(path: Path, x: np.ndarray, inputs: dict) -> np.ndarray:
    """``x`` as ``(N, D)`` floats on the model's scale, or the error that says what does not fit."""
    shape, dim = tuple(inputs["shape"]), math.prod(inputs["shape"])
    if x.ndim < 2 or x.shape[1:] not in (shape, (dim,)) or len(x) == 0:
        raise _problem(
            path,
            f"it holds an array of shape {x.shape}; the model takes samples of shape {shape} (or flat, "
            f"({dim},)), stacked along the first axis: (N, {', '.join(map(str, shape))}) or (N, {dim}).",
        )
    if x.dtype.kind not in "uif" or (
        inputs["kind"] == "pixels" and x.dtype.kind in "ui" and x.dtype != np.uint8
    ):
        allowed = "uint8 (0..255) or float in [0, 1]" if inputs["kind"] == "pixels" else "numbers"
        raise _problem(path, f"its array is {x.dtype}; the model takes {allowed}.")
    x = x.reshape(len(x), dim)
    if x.dtype == np.uint8 and inputs["kind"] == "pixels":
        return x.astype(np.float32) / 255
    x = x.astype(np.float64)
    _check_finite(path, x)
    if inputs["kind"] == "pixels" and (x.min() < 0 or x.max() > 1):
        raise _problem(
            path,
            f"its float pixels run from {x.min():g} to {x.max():g}; the model was trained on pixels in "
            "[0, 1]: divide 0..255 values by 255 (or save them as uint8).",
        )
    return x


def _check_finite(path: Path, x: np.ndarray) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise _problem(
            path,
            f"{len(rows)} samples hold NaN or infinite values (the first at row {rows[0]}); remove them.",
        )


def _read_table(path: Path, inputs: dict) -> np.ndarray:
    frame = read_frame(path, setting="input")
    names = inputs.get("names")
    if names is not None:  # a table model: its feature columns by name; others (labels, ids) are left out
        missing = [n for n in names if n not in frame.columns]
        if missing:
            raise _problem(path, f"it lacks the model's feature columns {missing} (the model takes {names}).")
        frame = frame[names]
    x = check_features(frame, f"input={str(path)!r}").astype(np.float64)
    return _check_array(path, x, inputs) if names is None else x


def _read_images(folder: Path, inputs: dict, resize: bool) -> tuple[list[str], torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    if inputs["kind"] != "pixels" or len(inputs["shape"]) != 2:
        raise _problem(folder, f"it is a folder of images, but the model takes {inputs['shape']} features.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise _problem(folder, f"it holds no image file ({', '.join(IMAGE_SUFFIXES)}).")
    height, width = inputs["shape"]
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                gray = image.convert("L")  # grayscale, as the model was trained
        except (UnidentifiedImageError, OSError) as err:
            raise _problem(file, f"it is not a readable image ({err}).") from err
        if gray.size != (width, height):
            if not resize:
                raise _problem(
                    file,
                    f"it is {gray.size[0]}x{gray.size[1]} pixels; the model takes {width}x{height} (width x "
                    "height): resize the images, or pass resize=true to resize them here.",
                )
            gray = gray.resize((width, height), Image.Resampling.BILINEAR)
        images.append(np.asarray(gray, dtype=np.uint8).reshape(-1))
    x = np.stack(images).astype(np.float32) / 255
    return [f.name for f in files], torch.from_numpy(x)
