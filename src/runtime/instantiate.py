"""Lightning's callbacks and ``Trainer`` from the composed config, with a setting they reject reported
as a ``ConfigError`` that names it."""

from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelSummary
from omegaconf import DictConfig

from src.runtime.config import ConfigError


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
