"""From a trained model to a detector: ``src.score`` (new samples, thresholds), ``src.export`` and the
safe loading of checkpoints, on the bundled breast-cancer table and the digits."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from src.data.datamodule import OneClassDataModule
from src.data.inputs import InputError
from src.errors import ConfigError, UsageError
from src.eval import evaluate
from src.export import export
from src.models import thresholds
from src.runtime.checkpoints import load_model
from src.runtime.config import check_config
from src.score import SCORES_FILE, score
from src.train import train
from tests.conftest import as_run, compose_train, eval_cfg
from tests.helpers.baseline import distance_to_mean_auroc
from tests.helpers.cli import run_main


def _compose(config_name: str, out: Path, *overrides: str) -> DictConfig:
    """``config_name`` (``score``, ``export``) composed as its command would run it, in ``out``."""
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out)
    HydraConfig().set_config(cfg)
    return cfg


def _train(out: Path, *overrides: str) -> dict:
    cfg = as_run(compose_train(list(overrides)), out)
    record, _ = train(cfg)
    return record


@pytest.fixture(scope="module")
def cancer_run(tmp_path_factory) -> Path:
    """An RVAE trained on the breast-cancer table (benign normal, malignant the anomaly)."""
    out = tmp_path_factory.mktemp("cancer")
    _train(out, "data=breast_cancer", "model=rvae", "model.hidden_dim=32", "trainer.max_epochs=15")
    return out


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The breast-cancer test split's rows, with their label, as a user would save them."""
    bunch = load_breast_cancer(as_frame=True)
    _, test = train_test_split(bunch.frame, test_size=0.3, stratify=bunch.target, random_state=0)
    path = tmp_path_factory.mktemp("rows") / "rows.csv"
    test.to_csv(path, index=False)
    return path, test


def run_score(out: Path, run: Path, input: Path, *overrides: str) -> dict:
    return score(_compose("score", out, f"ckpt_path={run}", f"input={input}", *overrides))


def test_a_table_model_standardises_on_the_training_normals_and_outputs_linearly(cancer_run) -> None:
    record = json.loads((cancer_run / "metrics.json").read_text())
    checkpoint = Path(record["best_checkpoint"])
    model = load_model(checkpoint)
    assert model.hparams.output == "linear" and record["model"]["output"] is None  # the data's choice
    datamodule = OneClassDataModule(
        **torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]
    )
    datamodule.setup("fit")
    normals = datamodule.data_train.x.numpy().astype(np.float64)
    assert (datamodule.data_train.y == 0).all() and len(normals) == record["split"]["train_normal"]
    np.testing.assert_allclose(model.input_mean.numpy(), normals.mean(0), rtol=1e-6)
    np.testing.assert_allclose(model.input_scale.numpy(), normals.std(0), rtol=1e-5)
    # and applied: the loaded model scores raw rows as its network scores them standardised by hand
    raw = datamodule.data_val.x[:8]
    by_hand = torch.from_numpy(((raw.numpy() - normals.mean(0)) / normals.std(0)).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(model(raw).numpy(), model.net.score(by_hand).numpy(), rtol=1e-4)
        assert not np.allclose(model(raw).numpy(), model.net.score(raw).numpy(), rtol=0.1)


def test_a_users_table_with_a_constant_column_trains_on_standardised_features(tmp_path: Path) -> None:
    """Anomalies stand out in a small-scale feature beside a large-scale one: the raw distance to the
    normals' mean misses them, a model on standardised features does not. The constant column divides
    nothing by zero."""
    rng = np.random.default_rng(0)
    n = 1200
    anomaly = rng.random(n) < 0.3
    table = pd.DataFrame({
        "small": rng.normal(size=n) + 4 * anomaly,
        "large": rng.normal(scale=1000, size=n),
        "other": rng.normal(size=n),
        "constant": np.full(n, 7.0),
        "state": np.where(anomaly, "fault", "ok"),
    })  # fmt: skip
    path = tmp_path / "plant.csv"
    table.to_csv(path, index=False)
    settings = ["data=tabular", f"data.path={path}", "data.label_column=state", "data.anomaly_class=fault"]
    record = _train(tmp_path / "run", *settings, "model=rae", "model.latent_dim=2", "trainer.max_epochs=10")
    model = load_model(Path(record["best_checkpoint"]))
    assert model.input_scale[3] == 1 and model.input_mean[3] == 7
    assert np.isfinite(record["train/loss"])
    datamodule = OneClassDataModule("tabular", path=str(path), label_column="state", anomaly_class="fault",
                                    anomaly_ratio=None)  # fmt: skip
    baseline = distance_to_mean_auroc(datamodule)
    assert record["test/auroc"] > baseline + 0.2, (record["test/auroc"], baseline)


def test_a_table_that_cannot_be_used_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="the columns \\['b'\\] are not numeric"):
        OneClassDataModule("tabular", path=str(path), label_column="label")
    with pytest.raises(
        ValueError, match="data.label_column='kind' is not one of its columns \\['a', 'b', 'label'\\]"
    ):
        OneClassDataModule("tabular", path=str(path), label_column="kind")
    with pytest.raises(ValueError, match="the columns \\['b'\\] are not numeric"):
        OneClassDataModule("tabular", path=str(path))  # without labels, every column is a feature
    with pytest.raises(ValueError, match="data.label_column='label' is set, but only data=tabular reads it"):
        OneClassDataModule("digits", label_column="label")


def test_a_sigmoid_output_on_raw_features_is_refused(make_cfg) -> None:
    with pytest.raises(ConfigError, match="model.output=sigmoid bounds reconstructions to \\(0, 1\\), but "
                       "data.dataset=breast_cancer gives raw features"):  # fmt: skip
        check_config(make_cfg("data=breast_cancer", "model.output=sigmoid"))


def test_scores_of_new_rows_are_the_models_own_with_anomaly_flags_at_the_threshold(
    cancer_run, held_out, tmp_path
) -> None:
    path, rows = held_out
    summary = run_score(tmp_path, cancer_run, path, "threshold=f1_max")
    table = pd.read_csv(tmp_path / SCORES_FILE)
    assert list(table.columns) == ["row", "recon", "sap", "anomaly"]  # the run's model.score first
    model = load_model(Path(summary["checkpoint"]))
    features = torch.tensor(rows.drop(columns="target").to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(table.recon, model(features).numpy(), rtol=1e-5)
    entry = thresholds.stored(Path(summary["checkpoint"]))["f1_max"]
    assert summary["threshold"] == entry["threshold"]
    assert table.anomaly.tolist() == (table.recon > entry["threshold"]).astype(int).tolist()
    # on held-out rows the flags find the malignant ones better than chance
    malignant = (rows.target == 0).to_numpy()
    assert (
        thresholds.flag_metrics(table.recon.to_numpy(), malignant, entry["threshold"])["f1"]
        > malignant.mean()
    )


def test_quantile_and_fpr_thresholds_follow_their_definition_on_the_runs_data(
    cancer_run, held_out, tmp_path
) -> None:
    path, _ = held_out
    summary = run_score(tmp_path / "q", cancer_run, path, "threshold=quantile:0.9")
    checkpoint = Path(summary["checkpoint"])
    model = load_model(checkpoint)
    datamodule = OneClassDataModule(
        **torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]
    )
    datamodule.setup("fit")
    with torch.no_grad():
        train_scores = model(datamodule.data_train.x).numpy()
        val_x, val_y = datamodule.data_val.x, datamodule.data_val.y.numpy()
        val_scores = model(val_x).numpy()
    assert summary["threshold"] == pytest.approx(np.quantile(train_scores, 0.9), rel=1e-6)
    summary = run_score(tmp_path / "fpr", cancer_run, path, "threshold=fpr:0.1")
    assert (val_scores[val_y == 0] > summary["threshold"]).mean() <= 0.1
    assert set(thresholds.stored(checkpoint)) >= {"quantile:0.9", "fpr:0.1"}
    # src.eval reports precision, recall and F1 at each stored threshold
    record = evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={cancer_run}"))
    assert set(record["thresholds"]) >= {"quantile:0.9", "fpr:0.1"}
    table = pd.read_csv(tmp_path / "eval" / "scores.csv")
    expected = thresholds.flag_metrics(table.score.to_numpy(), table.anomaly.to_numpy(), summary["threshold"])
    assert record["thresholds"]["fpr:0.1"] == {"threshold": summary["threshold"]} | expected


@pytest.mark.parametrize(
    "content,message",
    [
        ({"mean radius": ["a", "b"]}, "the columns \\['mean radius'\\] are not numeric"),
        (
            {"mean radius": [1.0, np.nan]},
            "missing or infinite values \\(NaN, inf\\) in the columns \\{'mean radius': 1\\}",
        ),
        ("drop", "it lacks the model's feature columns \\['worst area'\\]"),
    ],
)
def test_a_table_that_does_not_fit_is_refused_and_nothing_is_written(
    cancer_run, held_out, tmp_path, content, message
) -> None:
    _, rows = held_out
    rows = rows.head(2).copy()
    if content == "drop":
        rows = rows.drop(columns="worst area")
    else:
        for column, values in content.items():
            rows[column] = values
    path = tmp_path / "bad.csv"
    rows.to_csv(path, index=False)
    with pytest.raises(UsageError, match=message):
        run_score(tmp_path / "out", cancer_run, path)
    assert not (tmp_path / "out" / SCORES_FILE).exists()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    _train(out, "model.hidden_dim=32")
    return out


def test_images_arrays_and_their_errors(digits_run, tmp_path) -> None:
    images = np.rint(load_digits().images[:6] * 255 / 16).astype(np.uint8)  # (6, 8, 8)
    np.save(tmp_path / "u8.npy", images)
    np.save(tmp_path / "float.npy", images.reshape(6, 64) / 255.0)
    folder = tmp_path / "png"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    results = {}
    for name in ("u8.npy", "float.npy", "png"):
        run_score(tmp_path / "out" / name, digits_run, tmp_path / name)
        results[name] = pd.read_csv(tmp_path / "out" / name / SCORES_FILE)
    np.testing.assert_allclose(results["u8.npy"].recon, results["float.npy"].recon, rtol=1e-5)
    np.testing.assert_allclose(results["u8.npy"].recon, results["png"].recon, rtol=1e-5)
    assert results["png"].file.tolist() == [f"{i}.png" for i in range(6)]

    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.kron(images[0], np.ones((2, 2), np.uint8))).save(big / "a.png")
    np.save(tmp_path / "wide.npy", np.zeros((3, 65), np.float32))
    np.save(tmp_path / "range.npy", images.reshape(6, 64).astype(np.float32))
    nan = images.reshape(6, 64) / 255.0
    nan[2, 5] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    cases = [
        (big, "it is 16x16 pixels; the model takes 8x8 \\(width x height\\): resize the images, or pass"),
        (tmp_path / "wide.npy", "shape \\(3, 65\\); the model takes samples of shape \\(8, 8\\) \\(or flat"),
        (tmp_path / "range.npy", "its float pixels run from 0 to 255; the model was trained on pixels in"),
        (tmp_path / "nan.npy", "1 samples hold NaN or infinite values \\(the first at row 2\\)"),
    ]
    for path, message in cases:
        with pytest.raises(InputError, match=message):
            run_score(tmp_path / "bad", digits_run, path)
    assert not (tmp_path / "bad" / SCORES_FILE).exists()
    run_score(tmp_path / "resized", digits_run, big, "resize=true")
    assert len(pd.read_csv(tmp_path / "resized" / SCORES_FILE)) == 1


def test_a_checkpoint_holding_other_objects_is_refused_by_name(digits_run, tmp_path) -> None:
    record = json.loads((digits_run / "metrics.json").read_text())
    content = torch.load(record["best_checkpoint"], weights_only=True)
    content["extra"] = argparse.Namespace(payload="anything")  # unpickling it could run code
    bad = tmp_path / "bad.ckpt"
    torch.save(content, bad)
    with pytest.raises(
        ConfigError, match="holds Python objects other than tensors and plain values \\(argparse.Namespace\\)"
    ):
        run_score(tmp_path / "out", bad, tmp_path / "x.npy")
    assert not (tmp_path / "out" / SCORES_FILE).exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_exported_detector_gives_the_models_scores(cancer_run, held_out, tmp_path, fmt: str) -> None:
    _, rows = held_out
    record = export(_compose("export", tmp_path, f"ckpt_path={cancer_run}", f"format={fmt}"))
    model = load_model(Path(record["checkpoint"]))
    x = torch.tensor(rows.drop(columns="target").to_numpy()[:64], dtype=torch.float32)
    for batch in (x[:1], x):
        with torch.no_grad():
            expected = model(batch).numpy()
        if fmt == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(record["file"])
            got = session.run(["score"], {"x": batch.numpy()})[0]
        else:
            got = torch.jit.load(record["file"])(batch).detach().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    saved = json.loads((tmp_path / "detector.json").read_text())
    assert saved["input"]["names"][0] == "mean radius" and saved["output"]["score"] == "recon"


def test_the_commands_print_one_line_and_stop_on_bad_input_with_status_2(
    cancer_run, held_out, tmp_path, capfd
) -> None:
    path, _ = held_out
    status = run_main("score", f"ckpt_path={cancer_run}", f"input={path}", "threshold=fpr:0.05",
                      f"hydra.run.dir={tmp_path / 'score'}")  # fmt: skip
    out = capfd.readouterr().out
    assert status == 0 and "Scored 171 samples by recon: median" in out and "threshold fpr:0.05)" in out
    status = run_main("score", f"ckpt_path={cancer_run}", f"input={path}", "threshold=best",
                      f"hydra.run.dir={tmp_path / 'bad'}")  # fmt: skip
    captured = capfd.readouterr()
    assert status == 2 and "threshold='best' is invalid: give a number" in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err and not (tmp_path / "bad" / SCORES_FILE).exists()
    status = run_main(
        "export", f"ckpt_path={cancer_run}", "format=torchscript", f"hydra.run.dir={tmp_path / 'x'}"
    )
    assert status == 0 and f"to {tmp_path / 'x' / 'detector.pt'}" in capfd.readouterr().out


def test_a_table_without_labels_trains_keeps_the_last_checkpoint_and_takes_quantile_thresholds(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "unlabelled.parquet"
    pd.DataFrame(rng.normal(size=(300, 4)), columns=list("abcd")).to_parquet(path)
    record = _train(tmp_path / "run", "data=tabular", f"data.path={path}", "model=ae", "model.latent_dim=2",
                    "trainer.max_epochs=3")  # fmt: skip
    assert record["status"] == "completed" and record["split"]["val_anomaly"] == 0
    assert record["val/auroc"] is None and record["test/auroc"] is None  # nothing to measure it on
    assert Path(record["best_checkpoint"]).name == "epoch_002.ckpt"  # the last epoch's
    rows = tmp_path / "new.csv"
    pd.DataFrame(rng.normal(size=(5, 4)) * [1, 1, 1, 10], columns=list("abcd")).to_csv(rows, index=False)
    summary = run_score(tmp_path / "q", tmp_path / "run", rows, "threshold=quantile:0.95")
    assert summary["rule"] == "quantile:0.95" and summary["n"] == 5
    for rule in ("f1_max", "fpr:0.05"):
        with pytest.raises(
            ConfigError, match=f"threshold={rule} needs labelled anomalies .* use threshold=quantile"
        ):
            run_score(tmp_path / "bad", tmp_path / "run", rows, f"threshold={rule}")
    with pytest.raises(ConfigError, match="the run's table has no labels"):
        evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={tmp_path / 'run'}"))
