"""The threshold rules of ``src.models.thresholds`` against independent computations: scikit-learn's
precision, recall and F1, and a search over every possible cut."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from src.errors import ConfigError
from src.models import thresholds


def _cases(seed: int = 0):
    """Random scores and labels, with ties (rounded scores), of several sizes and anomaly shares."""
    rng = np.random.default_rng(seed)
    for n in (2, 5, 13, 40, 200):
        for share, decimals in ((0.3, 1), (0.5, 0), (0.1, 2)):
            anomaly = (rng.random(n) < share).astype(int)
            anomaly[rng.integers(n)] = 1  # at least one anomaly
            yield np.round(rng.normal(size=n) + anomaly, decimals), anomaly


def _best_f1(scores: np.ndarray, anomaly: np.ndarray) -> float:
    """The highest F1 of any cut: flag every score above each candidate, or all of them."""
    cuts = [*np.unique(scores), scores.min() - 1]
    return max(f1_score(anomaly, (scores > t).astype(int), zero_division=0) for t in cuts)


def test_flag_metrics_are_sklearns_precision_recall_and_f1() -> None:
    for scores, anomaly in _cases():
        for t in (np.median(scores), scores.min() - 1, scores.max()):  # some, all and none flagged
            flagged = (scores > t).astype(int)
            expected = {
                "precision": precision_score(anomaly, flagged, zero_division=0),
                "recall": recall_score(anomaly, flagged, zero_division=0),
                "f1": f1_score(anomaly, flagged, zero_division=0),
                "flagged": int(flagged.sum()),
            }
            assert thresholds.flag_metrics(scores, anomaly, t) == pytest.approx(expected)
    no_anomaly = thresholds.flag_metrics(np.array([1.0, 2.0]), np.array([0, 0]), 1.5)
    assert no_anomaly == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "flagged": 1}


def test_f1_max_reaches_the_best_f1_of_any_cut() -> None:
    for scores, anomaly in _cases():
        t = thresholds.f1_max(scores, anomaly)
        got = f1_score(anomaly, (scores > t).astype(int), zero_division=0)
        assert got == pytest.approx(_best_f1(scores, anomaly)), (scores, anomaly, t)
        assert t in scores or t < scores.min()  # the highest score left unflagged, or below them all


def test_f1_max_flags_everything_when_that_is_best() -> None:
    scores = np.array([3.0, 1.0, 2.0])
    for anomaly in (np.array([1, 1, 1]), np.array([0, 1, 1])):  # every sample, or the lowest, anomalous
        t = thresholds.f1_max(scores, anomaly)
        assert t < 1.0 and t == np.nextafter(1.0, -np.inf)


def test_at_fpr_flags_at_most_the_share_and_no_lower_threshold_does() -> None:
    for scores, anomaly in _cases(seed=1):
        normals = scores[anomaly == 0]
        if not len(normals):
            continue
        for share in (0.0, 0.05, 0.2, 0.5, 1.0):
            t = thresholds.at_fpr(normals, share)
            assert (normals > t).mean() <= share + 1e-12
            lower = normals[normals < t]  # the next cut down flags too many
            if len(lower):
                assert (normals > lower.max()).mean() > share
    assert thresholds.at_fpr(np.array([1.0, 2.0, 3.0]), 1.0) == np.nextafter(1.0, -np.inf)
    assert thresholds.at_fpr(np.arange(100.0), 0.29) == 70.0  # 29 flagged, despite 0.29 * 100 < 29


@pytest.mark.parametrize(
    "rule,parsed",
    [("f1_max", ("f1_max", None)), ("fpr:0", ("fpr", 0.0)), ("fpr:0.05", ("fpr", 0.05)),
     ("quantile:1", ("quantile", 1.0)), ("quantile:.99", ("quantile", 0.99))],
)  # fmt: skip
def test_a_rule_is_parsed_with_its_share(rule: str, parsed: tuple) -> None:
    assert thresholds.parse_rule(rule) == parsed


@pytest.mark.parametrize("bad", ["f1", "fpr:2", "quantile:x", "fpr", "quantile:-0.1", "f1_max:1"])
def test_an_unknown_threshold_rule_is_named(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        thresholds.parse_rule(bad)
    assert str(err.value) == (
        f"threshold={bad!r} is invalid: give a number (the score above which a sample is an anomaly) or a "
        "rule: f1_max (highest F1 on the validation split), fpr:<share> (at most that share of the "
        "validation normals flagged, e.g. fpr:0.05) or quantile:<q> (the q-quantile of the training "
        "normals' scores, e.g. quantile:0.99); shares and quantiles lie in [0, 1]."
    )
