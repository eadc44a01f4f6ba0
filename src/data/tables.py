"""Tabular data: the user's CSV or Parquet table (``data=tabular``) and scikit-learn's bundled
breast-cancer table (``data=breast_cancer``), as float32 features and integer class labels.

Features are given raw: the model standardises them with statistics of the training normals
(``AnomalyAutoEncoder.input_mean``/``input_scale``), so a table needs no preparation beyond being numeric
and complete. Like ``digits``, a table has no official test split: a fixed stratified 30% plays that
role; it does not move with ``data.seed``.
"""

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from src.errors import DatasetNotFoundError, UsageError

TABLE_SUFFIXES = (".csv", ".parquet")
TABLE_FORMAT = (
    "data=tabular reads one table (.csv or .parquet) with one row per sample: numeric feature columns, "
    "given raw (the model standardises them with the training normals' mean and deviation), and "
    "data.label_column, the column of class labels (numbers or names; data.anomaly_class picks the "
    "anomalous ones), or null when every row is normal"
)


class TableError(UsageError, ValueError):
    """A table that cannot be used as it is."""


class Table(NamedTuple):
    x: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64, an index into classes
    features: list[str]  # the feature columns, in order
    classes: list[str]  # label names, in label order


def table_problem(path: str | Path, problem: str) -> TableError:
    return TableError(f"data.path={str(path)!r} cannot be used: {problem}. {TABLE_FORMAT}.")


def check_features(frame: pd.DataFrame, where: str) -> np.ndarray:
    """``frame``'s values as float32, or a ``TableError`` naming the non-numeric columns, or those with
    missing values (NaN), and how many."""
    text = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise TableError(
            f"{where}: the columns {text} are not numeric. Every feature must be a number: drop or encode "
            "those columns (e.g. one-hot) first."
        )
    values = frame.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        counts = {str(c): int(n) for c, n in zip(frame.columns, bad.sum(axis=0), strict=True) if n}
        raise TableError(
            f"{where}: missing or infinite values (NaN, inf) in the columns {counts} (column: rows). Fill "
            "or drop them first: the model cannot score an incomplete sample."
        )
    return values.astype(np.float32)


def read_frame(path: Path, setting: str = "data.path") -> pd.DataFrame:
    """A CSV or Parquet file (the kind from its suffix) as a DataFrame; ``setting`` names where the
    path came from, for the error."""
    try:
        return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise TableError(
            f"{setting}={str(path)!r} is not a readable table ({type(err).__name__}: {err}): give a CSV with "
            "a header row, or a Parquet file."
        ) from err


@functools.lru_cache(maxsize=4)
def _read_table(path: Path, label_column: str | None, size: int, mtime_ns: int) -> Table:
    frame = read_frame(path)
    if label_column is None:  # unlabelled: every row is normal
        x = check_features(frame, f"data.path={str(path)!r}")
        return Table(x, np.zeros(len(x), dtype=np.int64), [str(c) for c in frame.columns], ["normal"])
    if label_column not in frame.columns:
        raise table_problem(
            path,
            f"data.label_column={label_column!r} is not one of its columns {list(map(str, frame.columns))}",
        )
    labels = frame.pop(label_column)
    if labels.isna().any():
        raise table_problem(
            path, f"its label column {label_column!r} has {int(labels.isna().sum())} empty rows"
        )
    if frame.shape[1] == 0:
        raise table_problem(path, "it holds no feature column beside the labels")
    x = check_features(frame, f"data.path={str(path)!r}")
    values = sorted(labels.unique().tolist())  # numbers in numeric order, names alphabetically
    index = {v: i for i, v in enumerate(values)}
    y = np.array([index[v] for v in labels.tolist()], dtype=np.int64)
    return Table(x, y, [str(c) for c in frame.columns], [str(v) for v in values])


def read_table(path: str | Path | None, label_column: str | None) -> Table:
    """The user's table at ``path``, checked; read once per file version (cached). Without a
    ``label_column`` every row is normal (one class, ``normal``)."""
    if path is None:
        raise ValueError(
            f"data.path is not set: data=tabular needs data.path=<your .csv or .parquet>. {TABLE_FORMAT}."
        )
    resolved = Path(path).expanduser().resolve()
    if resolved.suffix not in TABLE_SUFFIXES:
        raise table_problem(path, f"its suffix is {resolved.suffix!r}, not one of {list(TABLE_SUFFIXES)}")
    if not resolved.is_file():
        raise DatasetNotFoundError(
            f"data.path={str(path)!r} is not a file ({resolved} does not exist). Fix: point data.path at "
            f"your table. {TABLE_FORMAT}. No other dataset is substituted."
        )
    stat = resolved.stat()  # a replaced file is read again
    return _read_table(resolved, label_column, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def breast_cancer() -> Table:
    """scikit-learn's bundled Wisconsin breast-cancer table: 569 samples, 30 features; classes
    ``malignant`` (212) and ``benign`` (357)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Table(
        bunch.data.astype(np.float32),
        bunch.target.astype(np.int64),
        [str(n) for n in bunch.feature_names],  # plain str, not numpy's: checkpoints hold plain values
        [str(n) for n in bunch.target_names],
    )
