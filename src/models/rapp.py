"""RaPP's anomaly scores (Kim et al., "RaPP: Novelty Detection with Reconstruction along Projection
Pathway", ICLR 2020): feed a sample and its reconstruction through the same encoder and compare them at
every layer. ``d_i = h_i(x) - h_i(x_hat)`` comes from ``AutoEncoder.pathway_differences``.

- SAP (simple aggregation): ``sum_i ||d_i||^2``.
- NAP (normalised aggregation): the concatenated ``d``, centred by its mean over the training normals
  and whitened by their SVD: ``||(d - mean) V S^-1||^2``.
"""

from typing import NamedTuple

import torch


class NapStatistics(NamedTuple):
    """What NAP is fitted to: the mean ``d`` of the training normals and ``V S^-1`` over the directions
    kept (``fit_nap``)."""

    mean: torch.Tensor  # (D,)
    projection: torch.Tensor  # (D, r), r <= D


def layer_errors(diffs: list[torch.Tensor]) -> torch.Tensor:
    """``||d_i||^2`` per sample and layer, shape ``(B, L)``: column 0 is the input space."""
    return torch.stack([d.float().pow(2).sum(dim=1) for d in diffs], dim=1)


def sap(diffs: list[torch.Tensor]) -> torch.Tensor:
    """Simple aggregation along the pathway, shape ``(B,)``."""
    return layer_errors(diffs).sum(dim=1)


def fit_nap(d: torch.Tensor) -> NapStatistics:
    """NAP's statistics from the concatenated differences ``d`` of the training normals, ``(N, D)``.

    The guard: a direction whose singular value is below ``s_max * max(N, D) * eps`` (float32's eps, the
    precision ``d`` was computed in; numpy's ``matrix_rank`` tolerance) is dropped. Such a direction holds
    rounding noise only: the normals do not vary along it (a constant pixel, fewer normals than
    dimensions), and dividing by its singular value would let that noise dominate every score.
    """
    d = d.double()
    mean = d.mean(dim=0)
    _, s, vh = torch.linalg.svd(d - mean, full_matrices=False)
    keep = s > s[0] * max(d.shape) * torch.finfo(torch.float32).eps
    return NapStatistics(mean.float(), (vh[keep].T / s[keep]).float())


def nap(diffs: list[torch.Tensor], stats: NapStatistics) -> torch.Tensor:
    """Normalised aggregation along the pathway, shape ``(B,)``."""
    d = torch.cat([x.float() for x in diffs], dim=1)
    mean, projection = stats.mean.to(d.device), stats.projection.to(d.device)  # a checkpoint's, on the host
    return ((d - mean) @ projection).pow(2).sum(dim=1)
