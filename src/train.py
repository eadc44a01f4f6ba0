"""Train one model: ``python -m src.train model=rvae model.n_layers=6 data=digits``."""

import logging
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from src.callbacks import StopAfterStepOnCtrlC, saved_step
from src.config import ConfigError, check_config, register_configs
from src.cuda_check import skip_unloadable_nvml_check
from src.data.datamodule import NoTrainingBatchError
from src.data.sources import CacheWriteError, CorruptDataError, DatasetNotFoundError
from src.loggers import flat_config, instantiate_loggers, log_summaries
from src.models.module import DivergedError
from src.results import METRICS_FILE, provenance, read_metrics, write_json_atomic

log = logging.getLogger(__name__)


class _DropLightningTips(logging.Filter):
    """Lightning 2.6 advertises its cloud logger ("💡 Tip: ... litlogger") at every ``Trainer``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_DROP_TIPS = _DropLightningTips()


def quiet_dependency_notices() -> None:
    """Silence two messages a user can do nothing about, printed by every run: Lightning's
    advertisement, and torch 2.14's deprecation of the ``LeafSpec`` that Lightning 2.6 still builds.
    Called by the entry points, not at import."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _DROP_TIPS not in rank_zero_log.filters:
        rank_zero_log.addFilter(_DROP_TIPS)
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a run in ``metrics.json``: the model choice, resolved settings and versions."""
    return {
        "model_name": HydraConfig.get().runtime.choices.get("model"),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "trainer": {"gradient_clip_val": cfg.trainer.get("gradient_clip_val")},
        "seed": cfg.seed,
        "provenance": provenance(),
    }


def resume_path(cfg: DictConfig) -> str | None:
    """``ckpt_path`` as given; ``last`` means this output directory's ``checkpoints/last.ckpt``, which
    is also used when ``resume`` is on and the directory holds one (a killed or requeued job)."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last" and not last.is_file():
        raise ConfigError(f"ckpt_path=last but {last} does not exist: pass the run's hydra.run.dir.")
    # None, and the names and URLs Lightning resolves itself, are not local files
    named = ckpt in (None, "last", "hpc") or str(ckpt).startswith("registry") or "://" in str(ckpt)
    if not named and not Path(ckpt).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt} is not a file: give a checkpoint's path (a run's checkpoints/last.ckpt, or "
            "the best_checkpoint its metrics.json names), or ckpt_path=last with the run's hydra.run.dir."
        )
    if ckpt == "last" or (ckpt is None and cfg.get("resume") and last.is_file()):
        log.info("Resuming from %s", last)
        return str(last)
    return ckpt


def checkpoint_step(ckpt_path: str | None) -> int:
    """The training step of the checkpoint a run resumes from; 0 for a fresh run (or a checkpoint that
    Lightning resolves itself, such as ``hpc``)."""
    if ckpt_path is None or not Path(ckpt_path).is_file():
        return 0
    try:
        return saved_step(ckpt_path)
    except Exception as err:  # cut short by a kill during its write, or not a Lightning checkpoint
        raise ConfigError(
            f"Cannot resume from {ckpt_path}: it is not a readable Lightning checkpoint "
            f"({type(err).__name__}: {err}). Nothing was run. Pass ckpt_path=<an earlier checkpoint> (the "
            "run's checkpoints/ folder keeps the best one too), or move the file away to start over."
        ) from err


def _fit_and_test(trainer, model, datamodule, ckpt_path: str | None) -> dict[str, Any]:
    with StopAfterStepOnCtrlC(enabled=trainer.world_size == 1) as ctrl_c:
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=False)
        except SystemExit as err:
            _exit_130_after_ctrl_c(trainer, err, ctrl_c.pressed)
            raise
    fit_metrics = dict(trainer.callback_metrics)
    if "train/epoch_loss" not in fit_metrics and model.epoch_loss_n:
        # resumed from its final checkpoint (stopped while testing): no epoch ran in this process, and the
        # last epoch's loss sum came with the checkpoint; reduced across ranks as ``self.log`` does
        mean = model.epoch_loss_sum / model.epoch_loss_n
        fit_metrics["train/epoch_loss"] = trainer.strategy.reduce(mean, reduce_op="mean")
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None else ""
    if not best:
        log.warning(
            "No best checkpoint (training stopped before any validation, or no ModelCheckpoint, or "
            "fast_dev_run): testing the final weights; val/auroc is none."
        )
    try:
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
    except SystemExit as err:
        _exit_130_after_ctrl_c(trainer, err, pressed=False)
        raise
    test_metrics = dict(trainer.callback_metrics)
    value = lambda d, k: float(d[k]) if k in d else None  # noqa: E731
    return {
        "status": "completed",
        "train/loss": value(fit_metrics, "train/epoch_loss"),  # mean over the final epoch
        "val/auroc": float(ckpt.best_model_score) if best else value(fit_metrics, "val/auroc"),
        "test/auroc": value(test_metrics, "test/auroc"),
        "test/auprc": value(test_metrics, "test/auprc"),
        "train/g_norm_max": float(model.g_norm_max),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "best_checkpoint": best or None,
    }


def _exit_130_after_ctrl_c(trainer, err: SystemExit, pressed: bool) -> None:
    """A first Ctrl-C while fitting stops as SIGTERM does (``pressed``), any other by KeyboardInterrupt,
    after which Lightning exits with status 1. A shell expects 130 for either. (SIGTERM: see ``main``.)"""
    if pressed or (trainer.interrupted and not isinstance(err, SIGTERMException)):
        log.error("Stopped by Ctrl-C. Re-run the same command to resume.")
        raise SystemExit(128 + signal.SIGINT) from None


def instantiate_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks of ``cfg.callbacks``; one whose class rejects its settings is a ``ConfigError``."""
    callbacks = []
    for name, c in (cfg.get("callbacks") or {}).items():
        try:
            callbacks.append(hydra.utils.instantiate(c))
        except InstantiationException as err:
            cause = err.__cause__ or err
            raise ConfigError(
                f"Invalid settings for callbacks.{name}, nothing was run: {type(cause).__name__}: "
                f"{str(cause).rstrip('.')}. "
                f"Fix the callbacks.{name}.* override; `python -m src.train --cfg job` prints them all."
            ) from err
    return callbacks


def instantiate_trainer(cfg: DictConfig, callbacks: list, **kwargs: Any) -> L.Trainer:
    """Lightning's ``Trainer`` from ``cfg.trainer`` (and ``kwargs``); a setting it rejects is a
    ``ConfigError``. A ``ModelSummary`` among ``callbacks`` replaces Lightning's default one."""
    if any(isinstance(c, ModelSummary) for c in callbacks):
        kwargs.setdefault("enable_model_summary", False)  # else Lightning says it skips its own
    try:
        return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=False, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(
            f"Invalid trainer settings, nothing was run: Lightning's Trainer rejected them "
            f"({type(cause).__name__}: {cause}). Fix the trainer.* override it names; "
            "`python -m src.train --cfg job` prints the composed trainer group."
        ) from err


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, test the best-``val/auroc`` checkpoint, and write ``metrics.json`` in the output dir."""
    start = time.perf_counter()
    skip_unloadable_nvml_check()  # 0.3-0.5 ms a step on a machine without an NVIDIA driver
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):  # "high" allows TF32 on Ampere+ GPUs
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check_available()
    ckpt_path = resume_path(cfg)
    model = hydra.utils.instantiate(cfg.model, input_dim=datamodule.input_dim)
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


def stop_on(err: Exception, exit_code: int, logger: logging.Logger = log) -> None:
    """Report an expected failure in one paragraph: a single run exits with ``exit_code``; in a
    multirun the error goes back to Hydra, which records it and runs the other jobs."""
    logger.error(str(err))
    if HydraConfig.get().mode == RunMode.RUN:
        raise SystemExit(exit_code) from None
    raise err


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
    except (
        ConfigError,
        DatasetNotFoundError,
        CorruptDataError,
        CacheWriteError,
        NoTrainingBatchError,
    ) as err:
        stop_on(err, exit_code=2)  # a setting or a data file to fix: the message names it and the fix
    except DivergedError as err:
        stop_on(err, exit_code=3)
    except SIGTERMException:  # Lightning exits with status 0 on SIGTERM; a scheduler must see 143
        log.error("Stopped by SIGTERM. Re-run the same command to resume.")
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        # Each multirun job is its own W&B run, failed or not. wandb is imported only by runs that log
        # to it (0.7 s a process otherwise): if it never was, there is no run to finish.
        wandb = sys.modules.get("wandb")
        if wandb is not None:
            wandb.finish(exit_code=exit_code)
    shown = {k: "none" if metrics[k] is None else f"{metrics[k]:.4f}" for k in ("test/auroc", "val/auroc")}
    print(f"test/auroc: {shown['test/auroc']}   (val/auroc best: {shown['val/auroc']})")
    print(f"outputs: {output_dir}")
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    register_configs()
    main()
