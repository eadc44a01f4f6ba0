"""``data=npz``: the user's own arrays run through the same split, training and scoring."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from src.data.datamodule import OneClassDataModule
from src.data.sources import DatasetNotFoundError, load_digits, npz_info
from src.runtime.config import ConfigError, check_config
from tests.helpers.cli import run_main

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits_arrays() -> dict[str, np.ndarray]:
    """scikit-learn's digits as a user would save them: (N, 8, 8) uint8 images and int labels."""
    src = load_digits()
    return {
        "x_train": src.x_train.numpy().reshape(-1, 8, 8),
        "y_train": src.y_train.numpy(),
        "x_test": src.x_test.numpy().reshape(-1, 8, 8),
        "y_test": src.y_test.numpy().astype(np.int32),  # any integer type
    }


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npz") / "digits.npz"
    np.savez_compressed(path, **digits_arrays(), classes=np.array(NAMES))
    return path


def test_an_npz_of_the_digits_gives_the_digits_own_split_and_batches(digits_npz: Path) -> None:
    ours = OneClassDataModule("npz", path=str(digits_npz), anomaly_class="three", batch_size=16)
    theirs = OneClassDataModule("digits", anomaly_class=3, batch_size=16)
    for dm in (ours, theirs):
        dm.setup("fit")
    assert ours.input_dim == theirs.input_dim == 64 and ours.anomaly_classes == [3]
    assert ours.split_sizes == theirs.split_sizes
    for part in ("data_train", "data_val", "data_test"):
        a, b = getattr(ours, part), getattr(theirs, part)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    for stage in ("val", "test"):
        assert all(
            torch.equal(a, b) for a, b in zip(ours.source_rows[stage], theirs.source_rows[stage], strict=True)
        )


def test_vectors_and_unnamed_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "vectors.npz"
    labels = np.repeat(np.arange(4), 30)
    np.savez(path, x_train=rng.integers(0, 256, (120, 5), dtype=np.uint8), y_train=labels,
             x_test=rng.integers(0, 256, (60, 5), dtype=np.uint8), y_test=labels[::2])  # fmt: skip
    assert npz_info(path) == ((5,), ["0", "1", "2", "3"], False)  # names are the labels; uint8: pixels
    dm = OneClassDataModule("npz", path=str(path), anomaly_class=[1, "2"], batch_size=8)
    dm.setup("fit")
    assert dm.input_dim == 5 and dm.anomaly_classes == [1, 2]
    x, y = next(iter(dm.test_dataloader()))
    assert x.dtype == torch.float32 and x.shape[1] == 5 and x.min() >= 0 and x.max() <= 1


def _save(path: Path, **changes) -> Path:
    arrays = digits_arrays() | changes
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"y_test": None}, "it holds no array 'y_test' \\(it holds \\['x_test', 'x_train', 'y_train'\\]\\)"),
        (
            {"x_train": np.zeros((1257, 8, 8), np.float32)},
            "x_train is float32 and x_test uint8: both must be uint8 \\(pixels\\) or both float",
        ),
        ({"x_train": np.zeros((1257, 8, 8), np.int64)}, "x_train is int64 and x_test uint8"),
        (
            {"x_test": np.zeros((540, 9, 9), np.uint8)},
            "x_train's samples are \\(8, 8\\), x_test's \\(9, 9\\)",
        ),
        ({"y_train": np.zeros(5, np.int64)}, "y_train is int64 of shape \\(5,\\): it needs 1257 integer"),
        ({"y_test": np.full(540, 2.0)}, "y_test is float64 of shape \\(540,\\)"),
        ({"classes": np.array(["a", "b"])}, "labels run from 0 to 9; they must be 0..1"),
        ({"y_train": np.full(1257, -1)}, "labels run from -1 to 9; they must be >= 0"),
        ({"classes": np.array([{}, {}], dtype=object)}, "its array 'classes' is unreadable"),
    ],
)
def test_a_file_that_cannot_be_used_is_named_with_what_is_wrong(tmp_path: Path, changes, message) -> None:
    path = _save(tmp_path / "bad.npz", **changes)
    with pytest.raises(ValueError, match=message) as err:  # CorruptDataError, within the data check
        OneClassDataModule("npz", path=str(path))
    assert f"data.path='{path}'" in str(err.value) and "y_train and y_test" in str(err.value)


def test_a_missing_or_unset_path_and_a_path_other_data_ignores_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="data.path='nope.npz' is not a file"):
        OneClassDataModule("npz", path="nope.npz")
    with pytest.raises(ValueError, match="data.path is not set: data=npz needs data.path="):
        OneClassDataModule("npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="it is not an .npz archive"):
        OneClassDataModule("npz", path=str(tmp_path / "text.npz"))
    with pytest.raises(ValueError, match="data.dataset=digits does not read it"):
        OneClassDataModule("digits", path=str(tmp_path / "text.npz"))


def test_the_config_check_reads_the_input_size_from_the_file(make_cfg, digits_npz: Path) -> None:
    with pytest.raises(ConfigError, match="data.path is not set"):  # exit code 2, before any data
        check_config(make_cfg("data=npz"))
    check_config(make_cfg("data=npz", f"data.path={digits_npz}", "model.latent_dim=64"))
    with pytest.raises(ConfigError, match="model.latent_dim=65"):
        check_config(make_cfg("data=npz", f"data.path={digits_npz}", "model.latent_dim=65"))


def test_train_and_eval_on_an_npz_from_the_command_line(digits_npz: Path, tmp_path: Path, capfd) -> None:
    def cli(module: str, *overrides: str) -> SimpleNamespace:
        code = run_main(module.removeprefix("src."), *overrides, f"paths.root_dir={tmp_path}",
                        "trainer.enable_progress_bar=false")  # fmt: skip
        out, err = capfd.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    proc = cli("src.train", "data=npz", f"data.path={digits_npz}", "data.anomaly_class=eight",
               "trainer=cpu", "trainer.max_epochs=2", "logger=csv")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(proc.stdout.split("outputs: ")[1].split()[0])
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["data"]["path"] == str(digits_npz) and record["data"]["dataset"] == "npz"

    proc = cli("src.eval", f"ckpt_path={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = Path(proc.stdout.split("outputs: ")[1].split()[0])
    assert json.loads((out / "eval_metrics.json").read_text())["test/auroc"] == pytest.approx(
        record["test/auroc"], abs=1e-6
    )
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores[scores.anomaly == 1].class_name) == {"eight"}
    assert set(scores.class_name) == set(NAMES)


def test_float_arrays_are_raw_features_for_a_linear_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 60)
    x_train, x_test = rng.normal(scale=50, size=(120, 3)), rng.normal(scale=50, size=(60, 3))
    path = tmp_path / "features.npz"
    np.savez(path, x_train=x_train, y_train=labels, x_test=x_test, y_test=labels[::2])
    datamodule = OneClassDataModule("npz", path=str(path), anomaly_class=1, anomaly_ratio=None)
    assert datamodule.output == "linear" and datamodule.input_description()["kind"] == "features"
    datamodule.setup("fit")
    normals = {tuple(row) for row in x_train[labels == 0].astype(np.float32)}
    assert {tuple(row) for row in datamodule.data_train.x.numpy()} <= normals  # raw values, not / 255
    mean, scale = datamodule.feature_statistics
    np.testing.assert_allclose(mean.numpy(), datamodule.data_train.x.double().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        scale.numpy(), datamodule.data_train.x.double().std(0, correction=0), rtol=1e-6
    )
    x_train[3, 1] = np.nan
    np.savez(path, x_train=x_train, y_train=labels, x_test=x_test, y_test=labels[::2])
    with pytest.raises(ValueError, match="x_train holds 1 NaN or infinite values"):
        OneClassDataModule("npz", path=str(path), anomaly_class=1).setup("fit")
