"""RaPP's anomaly scores (Kim et al., "RaPP: Novelty Detection with Reconstruction along Projection
Pathway", ICLR 2020): feed a sample and its reconstruction through the same encoder and compare them at
every layer. ``d_i = h_i(x) - h_i(x_hat)`` comes from ``AutoEncoder.pathway_differences``.

- SAP (simple aggregation): ``sum_i ||d_i||^2``.
- NAP (normalised aggregation): the concatenated ``d``, centred by its mean over the training normals
  and whitened by their SVD: ``||(d - mean) V S^-1||^2``.
"""

from typing import NamedTuple

import torch

from src.models.components.autoencoder import AutoEncoder


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

    ``V`` and ``S`` come from the eigendecomposition of the centred matrix's smaller Gram matrix (``D x D``,
    or ``N x N`` with fewer normals than dimensions, then ``V = C^T U S^-1``), in float64: a few times
    faster than its SVD, and exact enough for every direction the guard keeps (the eigenvalues' errors
    are near ``eps64 * s_max^2``, far below the guard's square).

    The guard: a direction whose singular value is below ``s_max * max(N, D) * eps`` (float32's eps, the
    precision ``d`` was computed in; numpy's ``matrix_rank`` tolerance) is dropped. Such a direction holds
    rounding noise only: the normals do not vary along it (a constant pixel, fewer normals than
    dimensions), and dividing by its singular value would let that noise dominate every score.
    """
    d = d.double()
    mean = d.mean(dim=0)
    c = d - mean
    wide = len(c) < c.shape[1]
    eigenvalues, vectors = torch.linalg.eigh(c @ c.T if wide else c.T @ c)  # ascending
    s, vectors = eigenvalues.clamp(min=0).sqrt().flip(0), vectors.flip(1)
    keep = s > s[0] * max(d.shape) * torch.finfo(torch.float32).eps
    s = s[keep]
    v = c.T @ vectors[:, keep] / s if wide else vectors[:, keep]
    return NapStatistics(mean.float(), (v / s).float())


def nap(diffs: list[torch.Tensor], stats: NapStatistics) -> torch.Tensor:
    """Normalised aggregation along the pathway, shape ``(B,)``."""
    d = torch.cat([x.float() for x in diffs], dim=1)
    mean, projection = stats.mean.to(d.device), stats.projection.to(d.device)  # a checkpoint's, on the host
    return ((d - mean) @ projection).pow(2).sum(dim=1)


def scores(
    net: AutoEncoder, x: torch.Tensor, stats: NapStatistics | None, nap_from: int
) -> dict[str, torch.Tensor]:
    """Every score per sample, each ``(B,)``: ``recon`` (the squared reconstruction error), ``sap``,
    ``nap`` (with ``stats`` only, fitted on the layers from ``nap_from`` on) and ``layer_<i>``,
    ``||d_i||^2`` at pathway layer ``i`` alone (``layer_0`` is ``recon``)."""
    diffs = net.pathway_differences(x)
    per_layer = layer_errors(diffs)
    out = {"recon": per_layer[:, 0], "sap": per_layer.sum(dim=1)}
    if stats is not None:
        out["nap"] = nap(diffs[nap_from:], stats)
    return out | {f"layer_{i}": per_layer[:, i] for i in range(per_layer.shape[1])}
