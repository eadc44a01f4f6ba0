"""``one_class_split`` on labels whose counts are known, so that every size follows by hand."""

import pytest
import torch

from src.data.splits import mix, one_class_split

# 10 classes: 100 training and 50 test samples each, in a shuffled order
TRAIN = torch.arange(1000) % 10
TEST = torch.arange(500) % 10


def kept(n_normal: int, n_anomalous: int, ratio: float) -> tuple[int, int]:
    """As many samples as the ratio allows: all of the scarcer kind, of the other what the ratio asks."""
    if n_anomalous / (n_normal + n_anomalous) > ratio:
        return n_normal, round(n_normal * ratio / (1 - ratio))
    return round(n_anomalous * (1 - ratio) / ratio), n_anomalous


def counts(labels: torch.Tensor, anomalies: list[int]) -> tuple[int, int]:
    anomalous = torch.isin(labels, torch.tensor(anomalies))
    return int((~anomalous).sum()), int(anomalous.sum())


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
@pytest.mark.parametrize("ratio", [0.35, 0.2])
def test_split_sizes_follow_val_fraction_and_the_anomaly_ratio(val_fraction: float, ratio: float) -> None:
    split = one_class_split(TRAIN, TEST, [0, 3], anomaly_ratio=ratio, val_fraction=val_fraction, seed=1)
    normals = 800  # 8 normal classes of 100; 200 anomalies of the two held-out classes
    n_val_normal = round(normals * val_fraction)
    assert len(split.train) == normals - n_val_normal
    assert counts(TRAIN[split.val], [0, 3]) == kept(n_val_normal, 200, ratio)
    assert counts(TEST[split.test], [0, 3]) == kept(400, 100, ratio)
    for part in (TRAIN[split.val], TEST[split.test]):
        n_normal, n_anomalous = counts(part, [0, 3])
        assert abs(n_anomalous / (n_normal + n_anomalous) - ratio) < 2 / (n_normal + n_anomalous)


def test_train_val_and_test_hold_disjoint_samples_and_train_holds_no_anomaly() -> None:
    split = one_class_split(TRAIN, TEST, [2], anomaly_ratio=0.35, val_fraction=0.1, seed=0)
    train, val = set(split.train.tolist()), set(split.val.tolist())
    assert not train & val  # both index the training split
    assert (
        len(train) == len(split.train)
        and len(val) == len(split.val)
        and len(set(split.test.tolist())) == len(split.test)
    )
    assert not (TRAIN[split.train] == 2).any()
    assert (TRAIN[split.val] == 2).any() and (TEST[split.test] == 2).any()


def test_the_natural_proportion_keeps_every_test_sample_and_the_train_split_ratio_in_val() -> None:
    split = one_class_split(TRAIN, TEST, [5], anomaly_ratio=None, val_fraction=0.1, seed=0)
    assert len(split.test) == 500
    val_anomalous = (TRAIN[split.val] == 5).float().mean().item()
    assert val_anomalous == pytest.approx(0.1, abs=0.01)  # class 5 is a tenth of the training split


@pytest.mark.parametrize(
    ("setting", "value"), [("anomaly_ratio", 1.0), ("anomaly_ratio", 0.0), ("val_fraction", 1.0)]
)
def test_a_ratio_outside_0_1_is_refused_by_name(setting: str, value: float) -> None:
    kwargs = {"anomaly_ratio": 0.35, "val_fraction": 0.1, "seed": 0} | {setting: value}
    with pytest.raises(ValueError, match=rf"^{setting} must lie strictly between 0 and 1, got {value}$"):
        one_class_split(TRAIN, TEST, [0], **kwargs)
    if setting == "anomaly_ratio":  # mix checks its own
        with pytest.raises(
            ValueError, match=rf"^anomaly_ratio must lie strictly between 0 and 1, got {value}$"
        ):
            mix(torch.arange(5), torch.arange(5, 9), value, torch.Generator())


def test_at_least_one_sample_of_each_kind_is_kept_however_small_the_ratio_asks() -> None:
    gen = torch.Generator().manual_seed(0)
    # 100 normals at ratio 0.001 ask for 0.1 anomalies: one is kept
    assert len(mix(torch.arange(100), torch.arange(100, 150), 0.001, gen)) == 101
    # 5 anomalies at ratio 0.999 ask for 0.005 normals: one is kept
    assert len(mix(torch.arange(100), torch.arange(100, 105), 0.999, gen)) == 6


def test_a_validation_part_of_at_least_one_sample_and_a_training_part_of_at_least_one() -> None:
    labels = torch.tensor([0] * 5 + [1] * 20)  # 5 normals (class 0), class 1 the anomaly
    split = one_class_split(labels, labels, [1], anomaly_ratio=0.35, val_fraction=0.05, seed=0)
    assert (len(split.train), int((labels[split.val] == 0).sum())) == (4, 1)  # 5 x 0.05 rounds to 0: 1
    two = torch.tensor([0, 0] + [1] * 5)
    split = one_class_split(two, two, [1], anomaly_ratio=0.35, val_fraction=0.5, seed=0)
    assert len(split.train) == 1  # the last normal left for training
    one = torch.tensor([0] + [1] * 5)
    with pytest.raises(ValueError, match=r"^too few normal samples \(1\) to hold out a validation part$"):
        one_class_split(one, one, [1], anomaly_ratio=0.35, val_fraction=0.5, seed=0)
