"""Exact AUROC and AUPRC for unbounded anomaly scores, computed once per epoch."""

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.utilities import dim_zero_cat


def rank_normalize(scores: torch.Tensor) -> torch.Tensor:
    """Map scores to dense ranks in [0, 1], keeping order and ties exactly.

    torchmetrics treats binary predictions outside [0, 1] as logits and applies a sigmoid, which
    saturates large reconstruction errors into ties. AUROC and average precision depend only on the
    order of the scores, so ranks give the exact values.
    """
    _, ranks = torch.unique(scores, sorted=True, return_inverse=True)
    return ranks.double() / max(int(ranks.max()), 1) if len(ranks) else ranks.double()


class AnomalyMetrics(Metric):
    """Collects every score and label of an epoch; ``compute`` returns ``{"auroc", "auprc"}``.

    States are concatenated across processes, so the result is the same under DDP.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        self.scores.append(scores.detach().flatten())
        self.target.append(target.detach().flatten().long())

    def compute(self) -> dict[str, torch.Tensor]:
        preds = rank_normalize(dim_zero_cat(self.scores).double())
        target = dim_zero_cat(self.target)
        return {
            "auroc": binary_auroc(preds, target),
            "auprc": binary_average_precision(preds, target),
        }
