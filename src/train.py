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
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from src.results import METRICS_FILE, write_json_atomic

log = logging.getLogger(__name__)


def wandb_credentials_found() -> bool:
    """True when W&B has an API key from the environment or ``~/.netrc`` (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Build the configured loggers; W&B goes offline when no credentials exist, so it never prompts."""
    cfgs = list((logger_cfg or {}).values())
    wants_wandb = any("Wandb" in c.get("_target_", "") for c in cfgs)
    if wants_wandb and "WANDB_MODE" not in os.environ and not wandb_credentials_found():
        log.warning("No W&B credentials: logging offline; upload later with `wandb sync`.")
        os.environ["WANDB_MODE"] = "offline"
    return [hydra.utils.instantiate(c) for c in cfgs]


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
    model = hydra.utils.instantiate(cfg.model, input_dim=datamodule.input_dim)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in trainer.loggers:
        lg.log_hyperparams(flat_config(cfg))

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_metrics = dict(trainer.callback_metrics)
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None else ""
    if not best:
        log.warning("No best checkpoint (no ModelCheckpoint or fast_dev_run): testing final weights.")
    trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False)
    test_metrics = dict(trainer.callback_metrics)

    best_val = ckpt.best_model_score if ckpt is not None and best else None
    record = {
        "status": "completed",
        "train/loss": _scalar(fit_metrics, "train/epoch_loss"),
        "val/auroc": float(best_val) if best_val is not None else _scalar(fit_metrics, "val/auroc"),
        "test/auroc": _scalar(test_metrics, "test/auroc"),
        "test/auprc": _scalar(test_metrics, "test/auprc"),
        "n_params": sum(p.numel() for p in model.parameters()),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "wall_time_s": time.perf_counter() - start,
        "best_checkpoint": best or None,
        "model_name": HydraConfig.get().runtime.choices.get("model"),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "seed": cfg.seed,
    }
    write_json_atomic(Path(cfg.paths.output_dir) / METRICS_FILE, record)
    return record, {"model": model, "datamodule": datamodule, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    finally:
        wandb.finish()  # each multirun job is its own W&B run
    print(f"test/auroc: {metrics['test/auroc']:.4f}   (val/auroc best: {metrics['val/auroc']:.4f})")
    print(f"outputs: {cfg.paths.output_dir}")
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
