"""Thresholds that turn anomaly scores into flags: a sample is an anomaly when its score is above the
threshold (``score > threshold``).

Rules (``threshold=`` of ``src.score``):

- ``f1_max``: the threshold of highest F1 on the run's validation split (normals and anomalies);
- ``fpr:<a>``: the lowest threshold that flags at most a share ``a`` of the validation normals;
- ``quantile:<q>``: the ``q``-quantile of the training normals' scores, for when no labelled anomalies
  exist.

Each is stored beside the checkpoint (``<checkpoint>.thresholds.json``), so that ``src.score`` and
``src.eval`` use the same value.
"""

import json
from pathlib import Path

import numpy as np

from src.errors import ConfigError
from src.runtime.records import write_json_atomic


def parse_rule(threshold: object) -> tuple[str, float | None]:
    """``(name, parameter)`` of a threshold rule: ``("f1_max", None)``, ``("fpr", 0.05)``,
    ``("quantile", 0.99)``; a ``ConfigError`` naming the rules for anything else."""
    name, _, value = str(threshold).partition(":")
    if name == "f1_max" and not value:
        return name, None
    if name in ("fpr", "quantile"):
        try:
            share = float(value)
        except ValueError:
            share = -1.0
        if 0 <= share <= 1:
            return name, share
    raise ConfigError(
        f"threshold={threshold!r} is invalid: give a number (the score above which a sample is an anomaly) "
        "or a rule: f1_max (highest F1 on the validation split), fpr:<share> (at most that share of the "
        "validation normals flagged, e.g. fpr:0.05) or quantile:<q> (the q-quantile of the training "
        "normals' scores, e.g. quantile:0.99); shares and quantiles lie in [0, 1]."
    )


def f1_max(scores: np.ndarray, anomaly: np.ndarray) -> float:
    """The threshold of highest F1 (anomalies the positives): the highest score it leaves unflagged,
    or just below the lowest score when flagging every sample is best."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], anomaly[order].astype(np.int64)
    tp, fp = np.cumsum(y), np.cumsum(1 - y)
    f1 = 2 * tp / (tp + fp + y.sum())  # 2TP / (2TP + FP + FN), flagging s[0..i]
    cut = np.r_[s[:-1] > s[1:], True]  # a threshold can fall only between distinct scores
    i = int(np.argmax(np.where(cut, f1, -1.0)))
    return float(s[i + 1]) if i + 1 < len(s) else float(np.nextafter(s[-1], -np.inf))


def at_fpr(normal_scores: np.ndarray, share: float) -> float:
    """The lowest threshold that flags at most ``share`` of ``normal_scores``: the (k+1)-th highest,
    ``k = floor(share * n)`` (fewer are flagged when it ties with higher ones)."""
    k = int(np.floor(share * len(normal_scores) + 1e-9))
    if k >= len(normal_scores):
        return float(np.nextafter(normal_scores.min(), -np.inf))
    return float(np.sort(normal_scores)[::-1][k])


def flag_metrics(scores: np.ndarray, anomaly: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of flagging ``scores > threshold``, and how many were flagged."""
    flagged = scores > threshold
    tp = int((flagged & (anomaly == 1)).sum())
    precision = tp / flagged.sum() if flagged.any() else 0.0
    recall = tp / (anomaly == 1).sum() if (anomaly == 1).any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "flagged": int(flagged.sum()),
    }


def thresholds_file(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".thresholds.json")


def stored(checkpoint: Path) -> dict[str, dict]:
    """The thresholds chosen for ``checkpoint`` so far: ``{rule: {"threshold": t, "score": name, ...}}``."""
    path = thresholds_file(checkpoint)
    return json.loads(path.read_text()) if path.is_file() else {}


def store(checkpoint: Path, rule: str, entry: dict) -> None:
    write_json_atomic(thresholds_file(checkpoint), stored(checkpoint) | {rule: entry})
