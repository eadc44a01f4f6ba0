"""Building the configured Lightning loggers: W&B that never prompts and never costs a run, and a
CSV history that a resumed run continues instead of starting over."""

import csv
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from src.private_api import drop_wandb_anonymous
from src.runtime.wandb_access import sweep_group, wandb_mode

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("train/loss", "val/auroc", "test/auroc", "test/auprc", "train/g_norm_max")


def _whole(row: dict[str, str | None]) -> bool:
    """False for a line cut short by a kill during a write: it lacks fields (``None``) or a step."""
    return None not in row.values() and (row.get("step") or "").isdigit()


def _row_key(row: dict[str, Any]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in row.items() if v != ""))


class ResumableCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that a run resumed from a checkpoint at step ``start_step``
    continues the stopped run's ``metrics.csv`` instead of starting it over: the history then runs from
    step 0, as a run that never stopped would have written it.

    The stopped run's rows before ``start_step`` are written back as soon as the logger starts; a row the
    resumed run logs again exactly as the file has it (Lightning re-runs the epoch-end hooks of a
    checkpoint saved just before them) is written once.
    """

    def __init__(
        self,
        save_dir: str | Path,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
        start_step: int = 0,
    ) -> None:
        super().__init__(save_dir, name, version, prefix, flush_logs_every_n_steps)
        self.start_step = start_step
        self.earlier: set[tuple] = set()
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if start_step and path.is_file() and rank_zero_only.rank == 0:  # the rank that writes the file
            with path.open(newline="") as f:
                rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
            rows = [row for row in rows if _whole(row) and int(row["step"]) < start_step]
            writer = self.experiment  # Lightning's writer deletes the file: the kept rows go back at once
            for row in rows:
                writer.log_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))
            self.earlier = {_row_key(row) for row in writer.metrics}
            writer.save()

    def save(self) -> None:
        if self.earlier:
            writer = self.experiment
            writer.metrics = [m for m in writer.metrics if _row_key(m) not in self.earlier]
        super().save()


class ResilientWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger``, except that a failure to log (network gone, service error) is a
    warning, not the end of the run: the run goes on and its results still reach ``metrics.json``."""

    def guarded(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as err:
            if not getattr(self, "failure_warned", False):
                log.warning("W&B failed to %s (%s: %s); training goes on, results stay on disk.",
                            what, type(err).__name__, err)  # fmt: skip
                self.failure_warned = True

    def log_metrics(self, metrics, step=None) -> None:
        self.guarded("log metrics", super().log_metrics, metrics, step)

    def log_hyperparams(self, params) -> None:
        self.guarded("log the config", super().log_hyperparams, params)


def wandb_run_id(output_dir: str | Path) -> str:
    """The W&B run id of the training run in ``output_dir``: derived from the directory, so a resumed
    run continues the same W&B run and ``src.eval`` can name the run it scores."""
    return hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]


def wandb_identity(cfg: DictConfig) -> dict[str, Any]:
    """Name ``<model>-L<n_layers>-s<seed>``, the sweep as group, tags to filter by, and a run id
    derived from the output directory, so a resumed job continues the same W&B run."""
    hc = HydraConfig.get()
    model = hc.runtime.choices.get("model")
    group = None
    if hc.mode == RunMode.MULTIRUN:  # every job of one multirun shares its sweep directory
        group = sweep_group(cfg.task_name, hc.sweep.dir)
    tags = [
        f"model:{model}",
        f"n_layers:{cfg.model.n_layers}",
        f"data:{cfg.data.dataset}",
        f"anomaly:{cfg.data.anomaly_class}",
    ]
    run_id = wandb_run_id(cfg.paths.output_dir)
    return {
        "name": f"{model}-L{cfg.model.n_layers}-s{cfg.seed}",
        "group": group,
        "tags": tags,
        "id": run_id,
        "resume": "allow",
    }


def _start_wandb(lg_cfg: DictConfig, cfg: DictConfig, start_step: int) -> Logger:
    """A started W&B logger, or, when W&B cannot start, a CSV logger and a warning saying why."""
    if wandb_mode() == "offline":
        os.environ["WANDB_MODE"] = "offline"
    kwargs = {k: v for k, v in wandb_identity(cfg).items() if not lg_cfg.get(k)}
    try:
        logger = hydra.utils.instantiate(lg_cfg, **kwargs)
        drop_wandb_anonymous(logger)
        logger.experiment  # noqa: B018  (starts the run now, not in the middle of training)
        return logger
    except Exception as err:
        csv_dir = Path(cfg.paths.output_dir) / "csv"
        log.warning(
            "W&B could not start (%s: %s). Training goes on without it; the logged history goes "
            "to %s and the results to metrics.json.", type(err).__name__, err, csv_dir,
        )  # fmt: skip
        return ResumableCSVLogger(cfg.paths.output_dir, name="csv", version="", start_step=start_step)


def instantiate_loggers(cfg: DictConfig, start_step: int = 0) -> list[Logger]:
    """Build the configured loggers; W&B's fallback CSV logger replaces nothing that is configured.
    ``start_step``: the step of the checkpoint the run resumes from, for ``ResumableCSVLogger``."""
    loggers: list[Logger] = []
    for lg_cfg in (cfg.get("logger") or {}).values():
        target = lg_cfg.get("_target_", "")
        if "Wandb" in target:
            lg = _start_wandb(lg_cfg, cfg, start_step)
        elif target and issubclass(hydra.utils.get_class(target), ResumableCSVLogger):
            lg = hydra.utils.instantiate(lg_cfg, start_step=start_step)
        else:
            lg = hydra.utils.instantiate(lg_cfg)
        if isinstance(lg, CSVLogger) and any(
            isinstance(other, CSVLogger) and other.log_dir == lg.log_dir for other in loggers
        ):
            continue  # W&B fell back to CSV and a CSV logger writes there already
        loggers.append(lg)
    return loggers


def flat_config(cfg: DictConfig, input_dim: int) -> dict[str, Any]:
    """The run's settings as flat ``model.n_layers``-style keys, for loggers to plot against, with the
    input size the data gave the model as ``model.input_dim``, and ``seed``, ``threads`` and
    ``float32_matmul_precision``."""
    groups = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "trainer")}
    top = {k: cfg.get(k) for k in ("seed", "threads", "float32_matmul_precision")}
    return _flatten(groups) | {"model.input_dim": input_dim} | top


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _flatten(v, f"{key}.") if isinstance(v, dict) else {key: v}
    return out


def log_summaries(loggers: list[Logger], record: dict[str, Any]) -> None:
    """Final train loss, best val AUROC, test AUROC, max g_norm and the split's sizes (``split/val_anomaly``,
    ...) as W&B run summaries."""
    summary = {k: record[k] for k in SUMMARY_KEYS if record.get(k) is not None}
    summary |= {f"split/{k}": n for k, n in (record.get("split") or {}).items()}
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            try:
                lg.experiment.summary.update(summary)
            except Exception as err:  # results are on disk already; W&B trouble costs nothing
                log.warning("Could not write W&B summaries (%s); metrics.json has them.", err)
