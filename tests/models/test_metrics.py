import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics.classification import BinaryAUROC

from src.models.metrics import AnomalyMetrics, rank_normalize


def pairwise_auroc(scores: torch.Tensor, target: torch.Tensor) -> float:
    """AUROC by definition: P(score of an anomaly > score of a normal), ties counting one half."""
    pos, neg = scores[target == 1], scores[target == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean()).item()


def test_rank_normalize_keeps_order_and_ties() -> None:
    s = torch.tensor([5000.0, 17.0, 5000.0, 1e6, -3.0])
    r = rank_normalize(s)
    assert r.min() == 0 and r.max() == 1
    assert r[0] == r[2]
    assert torch.equal(torch.argsort(r, stable=True), torch.argsort(s, stable=True))


@pytest.mark.parametrize("offset", [0.0, 20.0, 1000.0, 50000.0])
def test_auroc_is_exact_for_unbounded_scores(offset: float) -> None:
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(3000, generator=g) < 0.35).long()
    scores = offset + torch.randn(3000, generator=g) * 5 + 4 * target  # overlapping classes
    metric = AnomalyMetrics()
    for chunk in range(0, 3000, 256):  # many batches, computed once
        metric.update(scores[chunk : chunk + 256], target[chunk : chunk + 256])
    out = metric.compute()
    expected = pairwise_auroc(scores, target)
    assert 0.6 < expected < 0.9
    assert out["auroc"].item() == pytest.approx(expected, abs=1e-6)
    assert out["auroc"].item() == pytest.approx(roc_auc_score(target, scores), abs=1e-6)
    assert out["auprc"].item() == pytest.approx(average_precision_score(target, scores), abs=1e-6)


def test_plain_torchmetrics_auroc_is_wrong_on_large_scores() -> None:
    """The trap the metric avoids: sigmoid saturates scores above ~17 into ties."""
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(2000, generator=g) < 0.35).long()
    scores = 1000 + torch.randn(2000, generator=g) + 3 * target
    naive = BinaryAUROC()
    naive.update(scores, target)
    exact = AnomalyMetrics()
    exact.update(scores, target)
    assert naive.compute().item() == pytest.approx(0.5, abs=0.01)
    assert exact.compute()["auroc"].item() > 0.95


def test_known_auroc_on_hand_made_scores() -> None:
    scores = torch.tensor([1200.0, 3400.0, 2500.0, 9000.0, 100.0, 2500.0])
    target = torch.tensor([0, 1, 0, 1, 0, 1])
    # anomalies 3400, 9000, 2500 vs normals 1200, 2500, 100: 8 wins and 1 tie out of 9 pairs
    metric = AnomalyMetrics()
    metric.update(scores, target)
    assert metric.compute()["auroc"].item() == pytest.approx(8.5 / 9)
