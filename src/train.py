"""Train one model: ``python -m src.train model=rvae model.n_layers=6 data=digits``."""

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from src.errors import UsageError
from src.runtime.callbacks.training_monitor import DivergedError, TrainingMonitor
from src.runtime.composition import check_command_line
from src.runtime.config import check_config, register_configs
from src.runtime.ctrl_c import StopAfterStepOnCtrlC
from src.runtime.instantiate import instantiate_callbacks, instantiate_trainer
from src.runtime.loggers import flat_config, instantiate_loggers, log_summaries
from src.runtime.process import quiet_dependency_notices, skip_unloadable_nvml_check, stop_on, torch_settings
from src.runtime.records import METRICS_FILE, provenance, read_metrics, write_json_atomic
from src.runtime.resume import checkpoint_step, resume_path

log = logging.getLogger(__name__)


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a run in ``metrics.json``: the model choice, resolved settings and versions."""
    return {
        "model_name": HydraConfig.get().runtime.choices.get("model"),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "trainer": {"gradient_clip_val": cfg.trainer.get("gradient_clip_val")},
        "seed": cfg.seed,
        "torch_threads": torch.get_num_threads(),  # CPU numbers depend on it (float sums' order)
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "medium": bf16 matmuls
        "provenance": provenance(),
    }


def _fit_and_test(trainer, model, datamodule, ckpt_path: str | None) -> dict[str, Any]:
    with StopAfterStepOnCtrlC(trainer) as ctrl_c:
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SystemExit as err:
            _exit_130_after_ctrl_c(trainer, err, ctrl_c.pressed)
            raise
    fit_metrics = dict(trainer.callback_metrics)
    loss = model.train_loss
    if "train/epoch_loss" not in fit_metrics and loss.weight > 0:
        # resumed from its final checkpoint (stopped while testing): no epoch ran in this process, and the
        # last epoch's sums came with the checkpoint; reduced across ranks as ``self.log`` does
        fit_metrics["train/epoch_loss"] = trainer.strategy.reduce(
            loss.mean_value / loss.weight, reduce_op="mean"
        )
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None else ""
    monitor = next((c for c in trainer.callbacks if isinstance(c, TrainingMonitor)), None)
    if not best:
        log.warning(
            "No best checkpoint (training stopped before any validation, or no ModelCheckpoint, or "
            "fast_dev_run): testing the final weights; val/auroc is none."
        )
    try:
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True, verbose=False)
    except SystemExit as err:
        _exit_130_after_ctrl_c(trainer, err, pressed=False)
        raise
    test_metrics = dict(trainer.callback_metrics)
    value = lambda d, k: float(d[k]) if k in d else None  # noqa: E731
    return {
        "status": "completed",
        "train/loss": value(fit_metrics, "train/epoch_loss"),  # mean over the final epoch
        "val/auroc": float(ckpt.best_model_score)
        if best and ckpt.best_model_score is not None
        else value(fit_metrics, "val/auroc"),
        "test/auroc": value(test_metrics, "test/auroc"),
        "test/auprc": value(test_metrics, "test/auprc"),
        "train/g_norm_max": monitor.g_norm_max if monitor else None,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "best_checkpoint": best or None,
        # every score's test AUROC and AUPRC, and each pathway layer's AUROC (``AnomalyAutoEncoder``)
        **{k: float(v) for k, v in test_metrics.items() if k.startswith(("test/auroc_", "test/auprc_"))},
    }


def _exit_130_after_ctrl_c(trainer, err: SystemExit, pressed: bool) -> None:
    """A first Ctrl-C while fitting stops as SIGTERM does (``pressed``), any other by KeyboardInterrupt,
    after which Lightning exits with status 1. A shell expects 130 for either. (SIGTERM: see ``main``.)"""
    if pressed or (trainer.interrupted and not isinstance(err, SIGTERMException)):
        log.error("Stopped by Ctrl-C. Re-run the same command to resume.")
        raise SystemExit(128 + signal.SIGINT) from None


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, test the best-``val/auroc`` checkpoint, and write ``metrics.json`` in the output dir."""
    with torch_settings(cfg):
        return _train(cfg, start=time.perf_counter())


def _train(cfg: DictConfig, start: float) -> tuple[dict[str, Any], dict[str, Any]]:
    skip_unloadable_nvml_check()  # 0.3-0.5 ms a step on a machine without an NVIDIA driver
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the config and metrics.json
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check_available()
    ckpt_path = resume_path(cfg)
    # model.output=null: the data's choice (a linear output for features, a sigmoid for pixels)
    output = cfg.model.get("output") or datamodule.output
    model = hydra.utils.instantiate(cfg.model, input_dim=datamodule.input_dim, output=output)
    if not datamodule.labelled and cfg.callbacks.get("model_checkpoint"):
        with open_dict(cfg):  # no labels, no val/auroc to choose by: the last epoch's checkpoint is kept
            cfg.callbacks.model_checkpoint.monitor = None
    callbacks = instantiate_callbacks(cfg)
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning rejects a bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not cfg.trainer.get("enable_model_summary", True):  # turns off the summary callback too
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    trainer = instantiate_trainer(cfg, callbacks)
    # after the Trainer: a rejected setting starts no W&B run
    trainer.loggers = instantiate_loggers(cfg, start_step=checkpoint_step(ckpt_path))
    for lg in trainer.loggers:
        lg.log_hyperparams(flat_config(cfg, datamodule.input_dim))

    def save(results: dict[str, Any]) -> dict[str, Any]:
        return _save_record(cfg, trainer, model, datamodule, time.perf_counter() - start, results)

    try:
        record = save(_fit_and_test(trainer, model, datamodule, ckpt_path))
    except DivergedError as err:
        ckpt = trainer.checkpoint_callback
        save({
            "status": "diverged",
            "diverged_at_step": err.step,
            "reason": err.reason,
            "last_finite_g_norm": err.last_finite_g_norm,
            "best_checkpoint": (ckpt.best_model_path or None) if ckpt else None,
        })  # fmt: skip
        raise
    except Exception as err:  # a job that fails after it started leaves a record for the report
        save({"status": "failed", "error": repr(err)})
        raise
    if trainer.is_global_zero:
        log_summaries(trainer.loggers, record)
    return record, {"model": model, "datamodule": datamodule, "trainer": trainer}


def _save_record(
    cfg, trainer, model, datamodule, wall_time_s: float, results: dict[str, Any]
) -> dict[str, Any]:
    """Write ``metrics.json`` atomically (on rank 0 only under DDP) and return its content."""
    record = run_settings(cfg) | results
    record |= {
        "n_params": sum(p.numel() for p in model.parameters()),
        "split": datamodule.split_sizes,  # normals and anomalies per split; None if never set up
        "wall_time_s": wall_time_s,
    }
    if trainer.is_global_zero:
        write_json_atomic(Path(cfg.paths.output_dir) / METRICS_FILE, record)
    return record


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet_dependency_notices()
    output_dir = Path(cfg.paths.output_dir)
    if cfg.get("resume") and (output_dir / METRICS_FILE).is_file():
        done = read_metrics(output_dir)
        if done.get("status") == "completed":  # a re-run sweep skips what it has
            log.info("Already completed, skipping: %s", output_dir)
            return done.get(cfg.get("optimized_metric"))
    exit_code = 1
    try:
        check_config(cfg)
        metrics, _ = train(cfg)
        exit_code = 0
    except UsageError as err:  # a setting or a data file to fix: the message names it and the fix
        stop_on(err, exit_code=2, logger=log)
    except DivergedError as err:
        stop_on(err, exit_code=3, logger=log)
    except SIGTERMException:  # Lightning exits with status 0 on SIGTERM; a scheduler must see 143
        log.error("Stopped by SIGTERM. Re-run the same command to resume.")
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        # Each multirun job is its own W&B run, failed or not. wandb is imported only by runs that log
        # to it (0.7 s a process otherwise): if it never was, there is no run to finish.
        wandb = sys.modules.get("wandb")
        if wandb is not None:
            wandb.finish(exit_code=exit_code)
    keys = ("test/auroc", "test/auprc", "val/auroc")
    shown = {k: "none" if metrics.get(k) is None else f"{metrics[k]:.4f}" for k in keys}
    # logged, not printed: the run's log file (train.log) ends with them too
    log.info("test/auroc: %s   test/auprc: %s   (val/auroc best: %s)", *shown.values())
    log.info("outputs: %s", output_dir)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    register_configs()
    check_command_line("train", sys.argv[1:])
    main()
