"""Train one model: ``python -m src.train model=rvae model.n_layers=6 data=digits``."""

import logging
import netrc
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
import lightning as L
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from src.config import ConfigError, check_config, register_configs
from src.results import METRICS_FILE, write_json_atomic

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("train/loss", "val/auroc", "test/auroc", "test/auprc", "train/g_norm_max")


def wandb_credentials_found() -> bool:
    """True when W&B has an API key from the environment or ``~/.netrc`` (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_identity(cfg: DictConfig) -> dict[str, Any]:
    """Name ``<model>-L<n_layers>-s<seed>``, the sweep as group, and tags to filter by in W&B."""
    hc = HydraConfig.get()
    model = hc.runtime.choices.get("model")
    group = None
    if hc.mode == RunMode.MULTIRUN:  # every job of one multirun shares its sweep directory
        group = f"{cfg.task_name}-{Path(hc.sweep.dir).name}"
    tags = [
        f"model:{model}",
        f"n_layers:{cfg.model.n_layers}",
        f"data:{cfg.data.dataset}",
        f"anomaly:{cfg.data.anomaly_class}",
    ]
    return {"name": f"{model}-L{cfg.model.n_layers}-s{cfg.seed}", "group": group, "tags": tags}


def instantiate_loggers(cfg: DictConfig) -> list[Logger]:
    """Build the configured loggers; W&B goes offline when no credentials exist, so it never prompts.

    W&B's ``name``, ``group`` and ``tags`` come from the run when the config leaves them empty.
    """
    loggers = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        kwargs = {}
        if "Wandb" in lg_cfg.get("_target_", ""):
            if "WANDB_MODE" not in os.environ and not wandb_credentials_found():
                log.warning("No W&B credentials: logging offline; upload later with `wandb sync`.")
                os.environ["WANDB_MODE"] = "offline"
            kwargs = {k: v for k, v in wandb_identity(cfg).items() if not lg_cfg.get(k)}
        loggers.append(hydra.utils.instantiate(lg_cfg, **kwargs))
    return loggers


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as flat ``model.n_layers``-style keys, for loggers to plot against."""
    groups = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "trainer")}
    return _flatten(groups) | {"seed": cfg.seed}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _flatten(v, f"{key}.") if isinstance(v, dict) else {key: v}
    return out


def _scalar(metrics: dict[str, Any], key: str) -> float | None:
    return float(metrics[key]) if key in metrics else None


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, test the best-``val/auroc`` checkpoint, and write ``metrics.json`` in the output dir."""
    start = time.perf_counter()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.check_available()
    model = hydra.utils.instantiate(cfg.model, input_dim=datamodule.input_dim)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = instantiate_loggers(cfg)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in trainer.loggers:
        lg.log_hyperparams(flat_config(cfg))

    metrics_path = Path(cfg.paths.output_dir) / METRICS_FILE
    try:
        fit_metrics, test_metrics, best, best_val = _fit_and_test(cfg, trainer, model, datamodule)
    except Exception as err:  # a job that fails after it started leaves a record for the report
        if trainer.is_global_zero:
            record = run_settings(cfg) | {"status": "failed", "error": repr(err)}
            write_json_atomic(metrics_path, record)
        raise
    record = run_settings(cfg) | {
        "status": "completed",
        "train/loss": _scalar(fit_metrics, "train/epoch_loss"),
        "val/auroc": best_val if best_val is not None else _scalar(fit_metrics, "val/auroc"),
        "test/auroc": _scalar(test_metrics, "test/auroc"),
        "test/auprc": _scalar(test_metrics, "test/auprc"),
        "train/g_norm_max": float(model.g_norm_max),
        "n_params": sum(p.numel() for p in model.parameters()),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": time.perf_counter() - start,
        "best_checkpoint": best or None,
    }
    if trainer.is_global_zero:  # under DDP the other processes hold the same results
        write_json_atomic(metrics_path, record)
        for lg in trainer.loggers:  # summaries that make W&B's comparisons one click
            if isinstance(lg, WandbLogger):
                summary = {k: record[k] for k in SUMMARY_KEYS if record[k] is not None}
                lg.experiment.summary.update(summary)
    return record, {"model": model, "datamodule": datamodule, "trainer": trainer}


def _fit_and_test(cfg, trainer, model, datamodule):
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_metrics = dict(trainer.callback_metrics)
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None else ""
    if not best:
        log.warning("No best checkpoint (no ModelCheckpoint or fast_dev_run): testing final weights.")
    trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
    best_val = float(ckpt.best_model_score) if best else None
    return fit_metrics, dict(trainer.callback_metrics), best, best_val


def run_settings(cfg: DictConfig) -> dict[str, Any]:
    """What identifies a run in ``metrics.json``: model choice and resolved model/data/seed."""
    return {
        "model_name": HydraConfig.get().runtime.choices.get("model"),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "trainer": {"gradient_clip_val": cfg.trainer.get("gradient_clip_val")},
        "seed": cfg.seed,
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        check_config(cfg)
    except ConfigError as err:
        log.error(str(err))
        if HydraConfig.get().mode == RunMode.RUN:
            raise SystemExit(2) from None
        raise  # in a multirun, Hydra records the failure and the other jobs go on
    exit_code = 1
    try:
        metrics, _ = train(cfg)
        exit_code = 0
    finally:
        wandb.finish(exit_code=exit_code)  # each multirun job is its own W&B run, failed or not
    print(f"test/auroc: {metrics['test/auroc']:.4f}   (val/auroc best: {metrics['val/auroc']:.4f})")
    print(f"outputs: {cfg.paths.output_dir}")
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    register_configs()
    main()
