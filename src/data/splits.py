"""One-class-as-anomaly splits as pure functions on label tensors.

Train holds normal samples of the source's train split only; validation holds held-out train normals
plus train-split anomalies; test holds the source's test split. Validation and test are subsampled so
that anomalies make up ``anomaly_ratio`` of them (``None`` keeps the natural proportion).
"""

from typing import NamedTuple

import torch


class SplitIndices(NamedTuple):
    train: torch.Tensor  # indices into the source train split, normals only
    val: torch.Tensor  # indices into the source train split
    test: torch.Tensor  # indices into the source test split


def anomaly_mask(labels: torch.Tensor, anomaly_classes: list[int]) -> torch.Tensor:
    """Boolean mask, True where ``labels`` is one of ``anomaly_classes``."""
    return torch.isin(labels, torch.as_tensor(anomaly_classes, dtype=labels.dtype))


def _check_ratio(name: str, value: float | None) -> None:
    if value is not None and not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")


def mix(
    normal: torch.Tensor, anomalous: torch.Tensor, ratio: float | None, generator: torch.Generator
) -> torch.Tensor:
    """Subsample two index sets so anomalies are ``ratio`` of the union, keeping as many as possible.

    With ``ratio=None`` both sets are kept whole. The result is sorted, so it does not depend on the
    order of the inputs.
    """
    _check_ratio("anomaly_ratio", ratio)
    n_norm, n_anom = len(normal), len(anomalous)
    if ratio is not None and n_norm and n_anom:
        if n_anom / (n_norm + n_anom) > ratio:
            n_anom = max(1, round(n_norm * ratio / (1 - ratio)))
        else:
            n_norm = max(1, round(n_anom * (1 - ratio) / ratio))
    keep_n = normal[torch.randperm(len(normal), generator=generator)[:n_norm]]
    keep_a = anomalous[torch.randperm(len(anomalous), generator=generator)[:n_anom]]
    return torch.cat([keep_n, keep_a]).sort().values


def one_class_split(
    train_labels: torch.Tensor,
    test_labels: torch.Tensor,
    anomaly_classes: list[int],
    anomaly_ratio: float | None,
    val_fraction: float,
    seed: int,
) -> SplitIndices:
    """Build train/val/test indices for one-class anomaly detection; deterministic for ``seed``."""
    _check_ratio("anomaly_ratio", anomaly_ratio)
    _check_ratio("val_fraction", val_fraction)
    gen = torch.Generator().manual_seed(seed)
    is_anom = anomaly_mask(train_labels, anomaly_classes)
    normal = torch.nonzero(~is_anom).squeeze(1)
    normal = normal[torch.randperm(len(normal), generator=gen)]
    n_val = max(1, round(len(normal) * val_fraction))
    if len(normal) - n_val < 1:
        raise ValueError(f"too few normal samples ({len(normal)}) to hold out a validation part")
    val_ratio = anomaly_ratio
    if val_ratio is None:  # natural proportion of the train split
        val_ratio = is_anom.float().mean().item() or None
    val = mix(normal[:n_val], torch.nonzero(is_anom).squeeze(1), val_ratio, gen)
    test_anom = anomaly_mask(test_labels, anomaly_classes)
    test = mix(
        torch.nonzero(~test_anom).squeeze(1),
        torch.nonzero(test_anom).squeeze(1),
        anomaly_ratio,
        gen,
    )
    return SplitIndices(normal[n_val:].sort().values, val, test)
