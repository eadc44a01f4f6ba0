import json
import logging
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import wandb
from hydra.core.global_hydra import GlobalHydra
from PIL import Image
from sklearn.metrics import roc_auc_score
from torchvision.datasets import EMNIST

import src.eval
from src.data.sources import load_digits
from src.eval import BY_CLASS_FILE, EVAL_FILE, SCORES_FILE, evaluate, scores_by_class
from src.models.module import AnomalyAutoEncoder
from src.runtime.config import ConfigError
from src.runtime.loggers import wandb_run_id
from src.train import train
from tests.conftest import as_run, compose_train, eval_cfg
from tests.helpers.cli import run_main
from tests.helpers.wandb_file import offline_run_files, read_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A two-epoch RVAE on digits: its run directory, metrics.json and split sizes."""
    out = tmp_path_factory.mktemp("run")
    record, objects = train(as_run(compose_train(["trainer.max_epochs=2"]), out))
    GlobalHydra.instance().clear()
    return out, record, objects["datamodule"].split_sizes


def test_eval_scores_the_runs_own_test_split_again(trained, tmp_path: Path) -> None:
    run_dir, record, sizes = trained
    result = evaluate(eval_cfg(tmp_path, f"ckpt_path={run_dir}"))
    assert result["checkpoint"] == record["best_checkpoint"]
    assert result["test/auroc"] == pytest.approx(record["test/auroc"], abs=1e-6)
    assert result["test/auprc"] == pytest.approx(record["test/auprc"], abs=1e-6)
    assert (result["n_normal"], result["n_anomaly"]) == (sizes["test_normal"], sizes["test_anomaly"])
    assert result["data_changed"] == {} and result["data"]["dataset"] == "digits"
    assert json.loads((tmp_path / EVAL_FILE).read_text())["test/auroc"] == result["test/auroc"]

    scores = pd.read_csv(tmp_path / SCORES_FILE)
    assert len(scores) == sizes["test_normal"] + sizes["test_anomaly"]
    assert scores.source_index.is_unique
    assert (scores[scores.anomaly == 1]["class"] == 0).all()  # digit 0 is the anomaly
    assert (scores[scores.anomaly == 0]["class"] != 0).all()
    assert (scores.class_name.astype(str) == scores["class"].astype(str)).all()  # digits' names
    # every score beside the model's own (model.score=recon here); each column's AUROC in the record, and
    # NAP fitted again on the same training normals gives the training run's test figure
    assert (scores.score == scores.score_recon).all()
    layers = [f"layer_{i}" for i in range(record["model"]["n_layers"] + 3)]
    for name in ("recon", "sap", "nap", *layers):
        auroc = roc_auc_score(scores.anomaly, scores[f"score_{name}"])
        assert result[f"test/auroc_{name}"] == pytest.approx(auroc, abs=1e-6)
        assert result[f"test/auroc_{name}"] == pytest.approx(record[f"test/auroc_{name}"], abs=1e-6)
    with Image.open(tmp_path / "scores.png") as img:
        img.verify()

    # per class: the anomaly (digit 0) against all normals is the run's AUROC; each normal digit's row
    # is the AUROC of the anomalies against that digit alone
    by_class = pd.read_csv(tmp_path / BY_CLASS_FILE)
    assert by_class["class"].tolist()[0] == 0 and by_class.anomaly.tolist() == [1] + [0] * 9
    assert by_class.auroc[0] == pytest.approx(record["test/auroc"], abs=1e-6)
    assert by_class.n.sum() == len(scores) and by_class.auroc[1:].is_monotonic_increasing
    anomalies = scores[scores.anomaly == 1]
    for row in by_class[1:].itertuples():
        pair = pd.concat([anomalies, scores[scores["class"] == row[1]]])
        assert row.auroc == pytest.approx(roc_auc_score(pair.anomaly, pair.score), abs=1e-6)
        assert row.n == (scores["class"] == row[1]).sum()
    with Image.open(tmp_path / "scores_by_class.png") as img:
        img.verify()


def test_eval_logs_its_results_to_wandb_when_asked(trained, tmp_path: Path) -> None:
    run_dir, record, _ = trained
    try:
        result = evaluate(eval_cfg(tmp_path, f"ckpt_path={run_dir}", "wandb.enabled=true"))
    finally:
        wandb.teardown()  # the service has written the run's file once it returns
    [path] = offline_run_files(tmp_path)
    run = read_run(path)
    assert run.exit_code == 0 and run.run.job_type == "eval"
    assert run.run.display_name == f"eval-{run_dir.name}"
    assert run.summary["test/auroc"] == pytest.approx(result["test/auroc"])
    assert run.summary["n_anomaly"] == result["n_anomaly"]
    assert run.config["train_run_id"] == wandb_run_id(run_dir)  # the training run it scores
    assert run.config["data.dataset"] == "digits" and run.config["model.n_layers"] == 4
    [logged] = run.history  # one row: the per-class table (10 digits) and the two plots
    assert logged["scores_by_class._type"] == "table-file" and logged["scores_by_class.nrows"] == 10
    assert logged["scores._type"] == logged["scores_by_class_plot._type"] == "image-file"
    # without wandb.enabled, no W&B run
    evaluate(eval_cfg(tmp_path / "plain", f"ckpt_path={run_dir}"))
    assert not offline_run_files(tmp_path / "plain")


def test_scores_by_class_on_a_known_table() -> None:
    # A scores below the anomalies, B above, C tied with them; two anomaly classes X and Y
    table = pd.DataFrame({
        "class": [0, 0, 1, 1, 2, 2, 7, 8],
        "class_name": ["A", "A", "B", "B", "C", "C", "X", "Y"],
        "anomaly": [0, 0, 0, 0, 0, 0, 1, 1],
        "score": [1.0, 2.0, 50.0, 60.0, 3.0, 4.0, 3.0, 4.0],
    })  # fmt: skip
    by_class = scores_by_class(table).set_index("class_name")
    assert by_class.index.tolist() == ["X", "Y", "B", "C", "A"]  # anomalies, then hardest first
    # X (3.0) is above 2 of the 6 normals and tied with one: 2.5 / 6; C ties the anomalies: 0.5
    expected = {"A": 1.0, "B": 0.0, "C": 0.5, "X": 2.5 / 6, "Y": 3.5 / 6}
    assert by_class.auroc.to_dict() == pytest.approx(expected)
    assert by_class.n.to_dict() == {"A": 2, "B": 2, "C": 2, "X": 1, "Y": 1}
    assert by_class.loc["B", "median_score"] == 55.0
    assert by_class.loc["B", "median_percentile"] == pytest.approx(100 * 7.5 / 8)


def test_the_loaded_module_scores_samples_as_eval_does(trained, tmp_path: Path) -> None:
    run_dir, record, _ = trained
    evaluate(eval_cfg(tmp_path, f"ckpt_path={run_dir}"))
    scores = pd.read_csv(tmp_path / SCORES_FILE)
    # the README's recipe: load, eval(), call on float (B, 64) rows in [0, 1] of the source's test split
    model = AnomalyAutoEncoder.load_from_checkpoint(record["best_checkpoint"], map_location="cpu")
    model.eval()
    x = load_digits().x_test[torch.tensor(scores.source_index.to_numpy())].float() / 255
    with torch.no_grad():
        ours = model(x)
    assert torch.allclose(ours, torch.tensor(scores.score.to_numpy(), dtype=torch.float32), rtol=1e-5)


def test_eval_scores_the_val_split_at_the_checkpoints_val_auroc(trained, tmp_path: Path) -> None:
    run_dir, record, sizes = trained
    result = evaluate(eval_cfg(tmp_path, f"ckpt_path={record['best_checkpoint']}", "stage=val"))
    assert result["val/auroc"] == pytest.approx(record["val/auroc"], abs=1e-6)
    assert (result["n_normal"], result["n_anomaly"]) == (sizes["val_normal"], sizes["val_anomaly"])


def test_a_changed_data_setting_replaces_the_runs_and_is_recorded(trained, tmp_path: Path) -> None:
    run_dir, _, sizes = trained
    result = evaluate(eval_cfg(tmp_path, f"ckpt_path={run_dir}", "data.anomaly_ratio=null"))
    assert result["data_changed"] == {"anomaly_ratio": None} and result["data"]["anomaly_ratio"] is None
    # the natural proportion keeps the whole test split: more normals, the same anomalies
    assert result["n_anomaly"] == sizes["test_anomaly"] and result["n_normal"] > sizes["test_normal"]


def test_scoring_other_classes_as_anomalies_warns_that_the_auroc_is_not_the_runs(
    trained, tmp_path: Path, caplog
) -> None:
    run_dir, _, _ = trained
    with caplog.at_level(logging.WARNING, logger="src.eval"):
        evaluate(eval_cfg(tmp_path, f"ckpt_path={run_dir}", "data.anomaly_class='0'"))  # the same class
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="src.eval"):
        result = evaluate(eval_cfg(tmp_path, f"ckpt_path={run_dir}", "data.anomaly_class=[3]"))
    [warning] = [r.getMessage() for r in caplog.records]
    assert (
        "trained with anomaly classes [0] of digits" in warning and "anomaly classes [3] of digits" in warning
    )
    assert result["data_changed"] == {"anomaly_class": [3]}


def test_a_moved_run_directory_still_finds_its_best_checkpoint(trained, tmp_path: Path) -> None:
    run_dir, record, _ = trained
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    (moved / "metrics.json").write_text(
        json.dumps(record | {"best_checkpoint": "/gone/checkpoints/" + Path(record["best_checkpoint"]).name})
    )
    result = evaluate(eval_cfg(tmp_path, f"ckpt_path={moved}"))
    assert result["checkpoint"] == str(moved / "checkpoints" / Path(record["best_checkpoint"]).name)


def test_threads_and_matmul_precision_hold_while_scoring_only(trained, tmp_path: Path, monkeypatch) -> None:
    """``threads`` and ``float32_matmul_precision`` apply as in training, are recorded, and are put back
    afterwards (a --multirun's evaluations share one process)."""
    run_dir, _, _ = trained
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    seen = {}
    score = src.eval._score

    def probe(*args):
        seen.update(threads=torch.get_num_threads(), precision=torch.get_float32_matmul_precision())
        return score(*args)

    monkeypatch.setattr("src.eval._score", probe)
    cfg = eval_cfg(
        tmp_path, f"ckpt_path={run_dir}", f"threads={threads + 1}", "float32_matmul_precision=medium"
    )
    result = evaluate(cfg)
    assert seen == {"threads": threads + 1, "precision": "medium"}
    assert json.loads((tmp_path / EVAL_FILE).read_text())["torch_threads"] == threads + 1
    assert (result["torch_threads"], result["float32_matmul_precision"]) == (threads + 1, "medium")
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, precision)
    assert "OMP_NUM_THREADS" not in os.environ


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([], "ckpt_path is not set"),
        (["ckpt_path=/no/such/run"], "is neither a checkpoint file nor a run directory"),
        (["stage=train"], "stage=train is invalid"),
        (["data.dataset=mnist"], "data.dataset=mnist gives 784 inputs per sample"),
        (["data.anomaly_ratio=1.5"], "data.anomaly_ratio=1.5 is invalid"),
        (["trainer=ddp_sim"], "src.eval scores on one device"),
        (["threads=0"], "threads=0 is invalid"),
        (["float32_matmul_precision=fast"], "float32_matmul_precision='fast' is invalid"),
    ],
)
def test_bad_settings_are_named(trained, tmp_path: Path, overrides: list[str], message: str) -> None:
    run_dir, _, _ = trained
    if overrides and not overrides[0].startswith("ckpt_path"):
        overrides = [f"ckpt_path={run_dir}", *overrides]
    with pytest.raises(ConfigError, match=message):
        evaluate(eval_cfg(tmp_path / "eval", *overrides))
    assert not (tmp_path / "eval" / EVAL_FILE).exists()


def test_a_directory_without_a_best_checkpoint_or_a_file_that_is_none_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory without a best checkpoint"):
        evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={tmp_path}"))
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="is not a readable checkpoint"):
        evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={tmp_path / 'notes.ckpt'}"))
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ConfigError, match="holds no data settings"):
        evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={tmp_path / 'foreign.ckpt'}"))


def test_cli_prints_the_result_and_stops_on_bad_input_in_one_paragraph(
    trained, tmp_path: Path, capfd
) -> None:
    run_dir, record, _ = trained

    def cli(*overrides: str) -> SimpleNamespace:
        code = run_main("eval", *overrides, f"paths.root_dir={tmp_path}")
        out, err = capfd.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    job_dir = tmp_path / "model=rvae,seed=0"  # a sweep job's name, quoted as the README says
    shutil.copytree(run_dir, job_dir)
    ok = cli(f"ckpt_path='{job_dir}'", "trainer.enable_progress_bar=false")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert f"test/auroc: {record['test/auroc']:.4f}" in ok.stdout
    out_dir = Path(ok.stdout.split("outputs: ")[1].split()[0])
    assert out_dir.parent == tmp_path / "logs" / "eval" / "runs" and (out_dir / SCORES_FILE).is_file()

    sweep = cli("--multirun", f"ckpt_path='{job_dir}','{run_dir}'", "trainer.enable_progress_bar=false")
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    [sweep_dir] = (tmp_path / "logs" / "eval" / "multiruns").iterdir()
    # one directory per checkpoint, not the checkpoint's path nested
    assert sorted(p.name for p in sweep_dir.iterdir() if (p / EVAL_FILE).is_file()) == ["0", "1"]

    bad = cli(f"ckpt_path={run_dir}", "data.dataset=mnist")
    assert bad.returncode == 2
    assert "checkpoint's model takes 64" in bad.stderr + bad.stdout
    assert "Traceback" not in bad.stderr


def test_emnist_scores_name_each_sample_as_torchvision_indexes_it(fake_emnist, tmp_path: Path) -> None:
    root, _ = fake_emnist
    cfg = compose_train(["data=emnist", f"data.root={root}", "data.anomaly_class=[0,24]", "model.n_layers=1"])
    train(as_run(cfg, tmp_path / "run"))
    evaluate(eval_cfg(tmp_path / "eval", f"ckpt_path={tmp_path / 'run'}"))
    scores = pd.read_csv(tmp_path / "eval" / SCORES_FILE, keep_default_na=False)
    assert set(scores[scores.anomaly == 1].class_name) == {"0", "O"}
    emnist = EMNIST(str(root), split="byclass", train=False)
    for row in scores.sample(20, random_state=0).itertuples():
        assert emnist[row.source_index][1] == row._2  # the `class` column
        assert emnist.classes[row._2] == row.class_name
    by_class = pd.read_csv(tmp_path / "eval" / BY_CLASS_FILE, keep_default_na=False)
    assert set(by_class.class_name[:2]) == {"0", "O"} and by_class.anomaly[:2].tolist() == [1, 1]
    assert by_class.n.sum() == len(scores) and set(by_class.class_name) == set(scores.class_name)
