import csv
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import hydra
import pytest
import torch
import wandb
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from omegaconf import open_dict

import src.train
from src.data.datamodule import NoTrainingBatchError
from src.models.module import AnomalyAutoEncoder
from src.runtime.callbacks.progress import EpochLines, progress_bar
from src.runtime.config import ConfigError
from src.runtime.process import quiet_dependency_notices
from src.train import train
from tests.conftest import REPO, csv_metric, epoch_losses
from tests.helpers.baseline import distance_to_mean_auroc
from tests.helpers.cli import run_main
from tests.helpers.wandb_file import offline_run_files, read_run

METRIC_KEYS = {"train/loss", "val/auroc", "test/auroc", "test/auprc", "n_params", "wall_time_s"}


@pytest.mark.parametrize("model", ["ae", "vae", "rae", "rvae"])
def test_every_variant_trains_on_digits_and_detects_the_anomaly(make_cfg, model: str) -> None:
    cfg = make_cfg(f"model={model}", "trainer.max_epochs=8")
    metrics, objects = train(cfg)
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved.keys() >= METRIC_KEYS and saved["status"] == "completed"
    assert saved["model"]["n_layers"] == 4 and saved["data"]["dataset"] == "digits"
    assert saved["model_name"] == model
    assert saved["test/auroc"] == pytest.approx(metrics["test/auroc"])
    # better than a training-free detector on the same split: the distance to the mean training image
    baseline = distance_to_mean_auroc(objects["datamodule"])
    assert saved["test/auroc"] > baseline + 0.1, (saved["test/auroc"], baseline)
    assert saved["n_params"] == sum(p.numel() for p in objects["model"].parameters())


def test_the_best_val_checkpoint_is_tested_and_loads_alone(make_cfg) -> None:
    metrics, objects = train(make_cfg("trainer.max_epochs=3"))
    ckpt = objects["trainer"].checkpoint_callback
    assert metrics["best_checkpoint"] == ckpt.best_model_path
    assert metrics["val/auroc"] == pytest.approx(float(ckpt.best_model_score))
    model = AnomalyAutoEncoder.load_from_checkpoint(metrics["best_checkpoint"])
    assert model.hparams.input_dim == 64 and model.hparams.n_layers == 4


def test_g_norm_is_logged_every_step_before_clipping(make_cfg) -> None:
    cfg = make_cfg("trainer.gradient_clip_val=1e-3")
    metrics, objects = train(cfg)
    g_norm = csv_metric(cfg.paths.output_dir, "train/g_norm")
    assert len(g_norm) == objects["trainer"].global_step
    assert min(g_norm) > 1e-2  # the raw norm, far above the clip value
    assert len(csv_metric(cfg.paths.output_dir, "train/loss")) == len(g_norm)


def test_step_metrics_follow_log_every_n_steps_like_self_log(make_cfg) -> None:
    cfg = make_cfg("trainer.log_every_n_steps=3")
    _, objects = train(cfg)
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/g_norm")]
    # Lightning's convention for on-step values: step s is written when (s + 1) % n == 0
    assert [int(r["step"]) for r in rows] == [s for s in range(objects["trainer"].global_step) if s % 3 == 2]
    assert all(r["train/loss"] and r["epoch"] for r in rows)


def test_progress_is_one_line_per_epoch_off_a_terminal_and_can_be_turned_off(
    make_cfg, tmp_path: Path, caplog, monkeypatch
) -> None:
    _, objects = train(make_cfg())  # the tests' configs set trainer.enable_progress_bar=false
    assert objects["trainer"].progress_bar_callback is None
    cfg = make_cfg("trainer.max_epochs=3", "logger=csv")
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = True
        cfg.paths.output_dir = str(tmp_path / "lines")
    with caplog.at_level(logging.INFO, logger="src.runtime.callbacks.progress"):
        train(cfg)  # pytest's standard output is not a terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "src.runtime.callbacks.progress"]
    losses = csv_metric(cfg.paths.output_dir, "train/epoch_loss")
    aurocs = csv_metric(cfg.paths.output_dir, "val/auroc")
    assert len(lines) == len(losses) == len(aurocs) == 3
    for epoch, (line, loss, auroc) in enumerate(zip(lines, losses, aurocs, strict=True), start=1):
        assert line.startswith(f"epoch {epoch}/3  train/epoch_loss {loss:.4f}  val/auroc {auroc:.4f}  (")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    bar = hydra.utils.instantiate(cfg.callbacks.progress_bar)  # style=auto, on a terminal
    assert isinstance(bar, TQDMProgressBar) and bar.refresh_rate == 20  # redrawn every 20 steps
    assert isinstance(progress_bar(style="lines", refresh_rate=20), EpochLines)


def test_the_model_summary_has_depth_2_and_can_be_turned_off(make_cfg, tmp_path: Path) -> None:
    _, objects = train(make_cfg())
    [summary] = [c for c in objects["trainer"].callbacks if isinstance(c, ModelSummary)]
    assert summary._max_depth == 2  # the callback's, not Lightning's default one
    cfg = make_cfg("trainer.enable_model_summary=false")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "without")
    _, objects = train(cfg)
    assert not [c for c in objects["trainer"].callbacks if isinstance(c, ModelSummary)]


def test_clipping_can_be_turned_off(make_cfg) -> None:
    _, objects = train(make_cfg("trainer.gradient_clip_val=null"))
    assert objects["trainer"].gradient_clip_val is None


def test_threads_and_matmul_precision_hold_for_the_run_only(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """A multirun's jobs share a process: a job's ``threads`` and ``float32_matmul_precision`` must not
    carry over to the next job, which leaves them unset."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            seen.update(threads=torch.get_num_threads(), omp=os.environ.get("OMP_NUM_THREADS"),
                        precision=torch.get_float32_matmul_precision())  # fmt: skip

    made = src.train.instantiate_callbacks
    monkeypatch.setattr("src.train.instantiate_callbacks", lambda cfg: [*made(cfg), Probe()])
    record, _ = train(make_cfg(f"threads={threads + 1}", "float32_matmul_precision=medium"))
    assert seen == {"threads": threads + 1, "omp": str(threads + 1), "precision": "medium"}
    assert (record["torch_threads"], record["float32_matmul_precision"]) == (threads + 1, "medium")
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, precision)
    assert "OMP_NUM_THREADS" not in os.environ

    cfg = make_cfg()
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "next")
    record, _ = train(cfg)
    # threads unset: one thread for a model this small (``default_threads``)
    assert seen == {"threads": 1, "omp": None, "precision": precision}
    assert (record["torch_threads"], record["float32_matmul_precision"]) == (1, precision)
    assert torch.get_num_threads() == threads


def test_wandb_offline_run_logs_the_study_keys(cfg_train, capfd) -> None:
    with open_dict(cfg_train):
        cfg_train.logger = {
            "wandb": {
                "_target_": "lightning.pytorch.loggers.wandb.WandbLogger",
                "project": "test",
                "save_dir": cfg_train.paths.output_dir,
            }
        }
    try:
        _, objects = train(cfg_train)
        live_keys = set(objects["trainer"].logger.experiment.summary.keys())
    finally:
        wandb.finish()
        wandb.teardown()  # finish() returns before the service writes the run's file; teardown waits
    study_keys = {"train/loss", "train/g_norm", "val/auroc", "test/auroc", "train/kl"}
    assert study_keys <= live_keys, live_keys

    [path] = offline_run_files(cfg_train.paths.output_dir)
    run = read_run(path)
    assert run.exit_code == 0
    assert run.config["model.n_layers"] == 4 and run.config["data.dataset"] == "digits"
    assert run.config["model.input_dim"] == 64  # from the data
    # each setting once, under its group: not also as Lightning's copy of the module's hparams
    assert {k for k in run.config if "." not in k} == {
        "seed",
        "threads",
        "float32_matmul_precision",
        "_wandb",
    }
    assert study_keys <= run.summary.keys()
    # how many normals and anomalies each split held, in the summary and in metrics.json
    sizes = objects["datamodule"].split_sizes
    assert {f"split/{k}": v for k, v in sizes.items()}.items() <= run.summary.items()
    record = json.loads((Path(cfg_train.paths.output_dir) / "metrics.json").read_text())
    assert record["split"] == sizes and sizes["test_anomaly"] > 0
    # every training step logged once, in order, with its loss, norm and KL
    steps = [row for row in run.history if "train/loss" in row]
    assert [row["trainer/global_step"] for row in steps] == list(range(objects["trainer"].global_step))
    assert all({"train/g_norm", "train/kl", "epoch"} <= row.keys() for row in steps)


def run_cli(capfd, *overrides: str, cwd: Path) -> SimpleNamespace:
    """``python -m src.train`` with ``overrides`` (in this process), its outputs under ``cwd``."""
    code = run_main("train", *overrides, f"paths.root_dir={cwd}", "trainer.enable_progress_bar=false")
    out, err = capfd.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_cli_trains_with_wandb_and_prints_where_outputs_are(tmp_path: Path) -> None:
    env_free = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            "data=digits",
            "trainer=cpu",
            "trainer.max_epochs=2",
            f"paths.root_dir={tmp_path}",
            "trainer.enable_progress_bar=false",
        ],
        cwd=REPO,
        env=env_free | {"HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/auroc: 0." in proc.stdout
    out_dir = Path(proc.stdout.split("outputs: ")[1].split()[0])
    assert (out_dir / "metrics.json").is_file()
    # the layer table, without the notices a user can do nothing about
    output = proc.stdout + proc.stderr
    assert "net.encoder" in output and "Total params" in output
    for notice in ("already configured with model summary", "litlogger", "LeafSpec"):
        assert notice not in output, notice
    assert list((out_dir / "wandb").glob("offline-run-*/*.wandb"))  # no credentials: offline


def test_cli_on_missing_emnist_stops_with_the_clear_error(tmp_path: Path, capfd) -> None:
    proc = run_cli(capfd, "model=rvae", "model.n_layers=6", "logger=csv", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    [error] = [line for line in output.splitlines() if "ERROR" in line]  # one paragraph, no traceback
    assert "was not found under data.root=" in error and "data=digits" in error and "Traceback" not in output
    assert not list(tmp_path.rglob("metrics.json"))


def test_a_run_stopped_before_any_validation_is_tested_on_its_final_weights(tmp_path: Path, capfd) -> None:
    proc = run_cli(capfd, "data=digits", "trainer=cpu", "trainer.max_steps=5", cwd=tmp_path)  # W&B offline
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/auroc best: none" in proc.stdout and "testing the final weights" in proc.stdout + proc.stderr
    [path] = tmp_path.rglob("metrics.json")
    saved = json.loads(path.read_text())
    assert saved["status"] == "completed" and saved["global_step"] == 5 and saved["val/auroc"] is None
    assert 0 <= saved["test/auroc"] <= 1 and saved["best_checkpoint"] is None


def test_cli_trains_on_emnist_files_in_data_root(tmp_path: Path, fake_emnist, capfd) -> None:
    root, _ = fake_emnist
    proc = run_cli(
        capfd,
        "model=rvae",
        "model.n_layers=6",
        "logger=csv",
        "trainer=cpu",
        "trainer.max_epochs=1",
        f"data.root={root}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [metrics] = tmp_path.rglob("metrics.json")
    saved = json.loads(metrics.read_text())
    assert saved["data"]["dataset"] == "emnist" and saved["model"]["n_layers"] == 6
    assert 0.0 <= saved["test/auroc"] <= 1.0


class _GradNormAfterClipping(Callback):
    """Grads seen just before they are zeroed: after Lightning's clipping and the optimizer step."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


def test_gradient_clip_val_bounds_the_applied_gradients(make_cfg) -> None:
    cfg = make_cfg("trainer.gradient_clip_val=0.05")
    with open_dict(cfg):
        cfg.callbacks.seen = {"_target_": "tests.test_train._GradNormAfterClipping"}
    _, objects = train(cfg)
    [seen] = [c for c in objects["trainer"].callbacks if isinstance(c, _GradNormAfterClipping)]
    g_norm = csv_metric(cfg.paths.output_dir, "train/g_norm")
    assert min(g_norm) > 0.05  # the raw norms exceed the clip value ...
    assert len(seen.norms) == len(g_norm) - 1
    assert max(seen.norms) <= 0.05 * 1.001  # ... and the applied ones do not


def test_logger_none_trains_with_no_logger(make_cfg) -> None:
    metrics, objects = train(make_cfg("logger=none"))
    assert objects["trainer"].loggers == [] and metrics["status"] == "completed"
    assert not (Path(objects["trainer"].default_root_dir) / "csv").exists()


def test_a_bf16_mixed_run_keeps_float32_weights_and_no_model_summary_notice(make_cfg, monkeypatch) -> None:
    """Lightning's model summary warns that it sizes bf16-mixed weights at 32 bits; mixed precision keeps
    them in float32, so the entry points silence it (``quiet_dependency_notices``)."""
    monkeypatch.setattr(logging.getLogger("lightning.pytorch.utilities.rank_zero"), "filters", [])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_dependency_notices()
        cfg = make_cfg("trainer.precision=bf16-mixed", "trainer.max_epochs=1", "logger=none")
        metrics, objects = train(cfg)
    assert metrics["status"] == "completed"
    assert any(isinstance(c, ModelSummary) for c in objects["trainer"].callbacks)  # the summary ran
    assert {p.dtype for p in objects["model"].parameters()} == {torch.float32}
    assert not [w for w in seen if "model summary" in str(w.message)]


@pytest.mark.slow
# the model summary's notice that src.train silences (see the test above)
@pytest.mark.filterwarnings("ignore:Precision bf16-mixed is not supported by the model summary")
@pytest.mark.parametrize("option", ["model.compile=true", "trainer.precision=bf16-mixed"])
def test_speed_options_keep_the_loss_curve(make_cfg, tmp_path: Path, option: str) -> None:
    eager = epoch_losses(make_cfg, tmp_path, "eager")
    other_seed = epoch_losses(make_cfg, tmp_path, "seed1", "seed=1")
    fast = epoch_losses(make_cfg, tmp_path, "fast", option)
    assert len(fast) == len(eager) == 4
    # the option moves the curve no further than changing the seed does (plus float rounding)
    noise = max(abs(a - b) for a, b in zip(eager, other_seed, strict=True))
    assert max(abs(a - b) for a, b in zip(eager, fast, strict=True)) <= noise + 1e-3 * eager[-1], (
        eager,
        fast,
        other_seed,
    )


def test_a_compiled_model_compiles_once_and_runs_the_smaller_last_batch_eagerly(
    make_cfg, monkeypatch
) -> None:
    # digits' normal training split is not a multiple of the batch size: each epoch ends on a smaller batch
    cfg = make_cfg("model.compile=true", "model.n_layers=1", "model.hidden_dim=8", "trainer.max_epochs=2",
                   "logger=none")  # fmt: skip
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch._dynamo.utils.counters.clear()
    metrics, objects = train(cfg)
    sizes = {len(batch[0]) for batch in objects["datamodule"].train_dataloader()}
    assert len(sizes) == 2, sizes  # a full batch size and a smaller last one
    assert metrics["status"] == "completed"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize(
    "override,message",
    [("trainer.precision=foo", "Precision 'foo' is invalid"), ("trainer.devices=0", "Trainer(devices=0)")],
)
def test_a_setting_the_trainer_rejects_stops_before_any_logger_starts(
    make_cfg, override: str, message: str
) -> None:
    cfg = make_cfg("logger=wandb", override)
    with pytest.raises(ConfigError, match="Invalid trainer settings, nothing was run") as err:
        train(cfg)
    assert message in str(err.value)
    assert not (Path(cfg.paths.output_dir) / "wandb").exists()  # no W&B run was started for it


def test_drop_last_with_too_large_a_batch_stops_before_training(make_cfg) -> None:
    cfg = make_cfg("data.drop_last=true", "data.batch_size=5000")
    with pytest.raises(
        NoTrainingBatchError, match=r"Fix: set data.batch_size to \d+ or less, or data.drop_last"
    ):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    saved = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert saved["status"] == "failed" and "NoTrainingBatchError" in saved["error"]
