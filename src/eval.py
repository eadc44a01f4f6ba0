"""Score a trained model again: ``python -m src.eval ckpt_path=logs/train/runs/<time>``.

The data is rebuilt from the checkpoint (the same split of the same source, by the same ``data.seed``),
so the test AUROC is the run's own; any ``data.*`` setting given on the command line replaces the run's.
Writes ``eval_metrics.json``, ``scores.csv``, ``scores.png``, ``scores_by_class.csv`` and
``scores_by_class.png`` into its output directory (what each holds: docs/training.md).
"""

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import roc_auc_score

from src.analysis import plots
from src.data.datamodule import OneClassDataModule
from src.data.sources import class_names
from src.errors import ConfigError, UsageError
from src.models import thresholds
from src.models.metrics import AnomalyMetrics
from src.models.module import NAP_FIT_SAMPLES, AnomalyAutoEncoder
from src.models.settings import SCORES
from src.runtime.checkpoints import find_checkpoint, load_model, read_checkpoint
from src.runtime.composition import check_command_line
from src.runtime.config import register_configs, torch_setting_problems
from src.runtime.instantiate import instantiate_trainer
from src.runtime.loggers import wandb_run_id
from src.runtime.process import quiet_dependency_notices, skip_unloadable_nvml_check, stop_on, torch_settings
from src.runtime.records import provenance, write_json_atomic
from src.runtime.wandb_access import log_to_wandb

log = logging.getLogger(__name__)

EVAL_FILE = "eval_metrics.json"
SCORES_FILE = "scores.csv"
BY_CLASS_FILE = "scores_by_class.csv"
STAGES = ("test", "val")


def model_label(hparams: Any) -> str:
    """``RVAE n_layers=4`` from the model's settings."""
    name = ("R" if hparams.residual else "") + ("VAE" if hparams.variational else "AE")
    return f"{name} n_layers={hparams.n_layers}"


def data_settings(cfg: DictConfig, checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data settings saved in the checkpoint, and those ``cfg.data`` sets (which replace them)."""
    saved = read_checkpoint(checkpoint).get("datamodule_hyper_parameters")
    if not saved:
        raise ConfigError(
            f"ckpt_path={checkpoint} holds no data settings (datamodule_hyper_parameters): it was not "
            "written by `python -m src.train`, so the split it was trained on cannot be rebuilt."
        )
    given = OmegaConf.to_container(cfg.data, resolve=True)
    changed = {k: v for k, v in given.items() if not OmegaConf.is_missing(cfg.data, k)}
    return saved, changed


def _warn_if_the_normals_differ(
    saved: dict[str, Any], settings: dict[str, Any], datamodule: OneClassDataModule
) -> None:
    """Say so when the scored split's normal and anomalous classes are not the ones the model was
    trained for: its AUROC is then not the run's one-class-held-out test."""
    trained = OneClassDataModule(**saved)
    if (saved["dataset"], saved["split"], trained.anomaly_classes) != (
        settings["dataset"],
        settings["split"],
        datamodule.anomaly_classes,
    ):
        log.warning(
            "The model was trained with anomaly classes %s of %s (%s) held out; it now scores anomaly "
            "classes %s of %s (%s), so classes it trained on as normal may count as anomalies or the "
            "other way round, and this AUROC is not the run's. Leave data.dataset, data.split, "
            "data.protocol, data.anomaly_class and data.normal_class unset to score the run's own split.",
            trained.anomaly_classes, saved["dataset"], saved["split"],
            datamodule.anomaly_classes, settings["dataset"], settings["split"],
        )  # fmt: skip


def scores_by_class(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per class of ``scores`` (a ``scores.csv`` table), anomaly classes first, then the normal
    ones hardest first: its size, median score, median percentile among all scored samples, and
    ``auroc``: for a normal class, the AUROC of all the anomalies against that class's samples alone
    (near 0.5: the model cannot tell them apart); for an anomaly class, of that class against all the
    normals."""
    anomaly, classes = scores.anomaly.to_numpy(), scores["class"].to_numpy()
    percentile = scores.score.rank(pct=True) * 100
    rows = []
    for (label, name, is_anomaly), part in scores.groupby(["class", "class_name", "anomaly"], sort=True):
        own = classes == label
        pair = own | (anomaly == 0) if is_anomaly else own | (anomaly == 1)
        rows.append({
            "class": label,
            "class_name": name,
            "anomaly": is_anomaly,
            "n": len(part),
            "median_score": float(part.score.median()),
            "median_percentile": float(percentile[part.index].median()),
            "auroc": float(roc_auc_score(anomaly[pair], scores.score[pair])),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    return table.sort_values(["anomaly", "auroc", "class"], ascending=[False, True, True], ignore_index=True)


def _log_hardest(by_class: pd.DataFrame, n: int = 5) -> None:
    normals = by_class[by_class.anomaly == 0]
    if len(normals) > 1:
        log.info(
            "Normal classes hardest to tell from the anomalies (AUROC of the anomalies against each): %s; "
            "all %d in %s.",
            ", ".join(f"{r.class_name} {r.auroc:.3f}" for r in normals.head(n).itertuples()),
            len(by_class), BY_CLASS_FILE,
        )  # fmt: skip


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.stage``'s split with the checkpoint's model; write the record, scores and plots."""
    if problems := torch_setting_problems(cfg):
        raise ConfigError("Invalid configuration, nothing was run: " + " ".join(problems))
    with torch_settings(cfg):
        return _evaluate(cfg)


def _evaluate(cfg: DictConfig) -> dict[str, Any]:
    skip_unloadable_nvml_check()
    checkpoint = _checkpoint_to_score(cfg)
    saved, changed = data_settings(cfg, checkpoint)
    settings = saved | changed
    datamodule, model = _load(checkpoint, saved, settings)
    trainer = instantiate_trainer(cfg, callbacks=[], enable_checkpointing=False, enable_model_summary=False)
    if trainer.world_size > 1:  # predict would return only this process's share of the scores
        raise ConfigError(
            f"src.eval scores on one device, but the trainer settings ask for {trainer.world_size} "
            "processes: use trainer.devices=1 (and trainer.num_nodes=1), e.g. trainer=gpu or trainer=cpu."
        )
    all_scores, anomaly = _score(trainer, model, datamodule, cfg.stage)
    scores = all_scores["score"]
    values = {}
    for name, column in all_scores.items():
        metrics = AnomalyMetrics()
        metrics.update(column, anomaly)
        result = {k: float(v) for k, v in metrics.compute().items()}
        if name == "score":  # the model's own score (model.score): the eval's AUROC and AUPRC
            values |= {f"{cfg.stage}/{k}": v for k, v in result.items()}
        else:
            values[f"{cfg.stage}/auroc_{name}"] = result["auroc"]
            if name in SCORES:
                values[f"{cfg.stage}/auprc_{name}"] = result["auprc"]

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = _scores_table(datamodule, settings, cfg.stage, all_scores, anomaly)
    table.to_csv(out / SCORES_FILE, index=False)
    by_class = scores_by_class(table)
    by_class.to_csv(out / BY_CLASS_FILE, index=False)
    _log_hardest(by_class)
    title = f"{model_label(model.hparams)}, {cfg.stage} split"
    plots.score_histogram(
        scores.numpy(),
        anomaly.numpy(),
        f"{title}: AUROC {values[f'{cfg.stage}/auroc']:.3f}",
        out / "scores.png",
    )
    plots.scores_by_class(table, by_class, title, out / "scores_by_class.png")
    # precision, recall and F1 at each threshold stored for this checkpoint (``src.score threshold=...``)
    at_thresholds = {
        rule: {"threshold": entry["threshold"]}
        | thresholds.flag_metrics(scores.numpy(), anomaly.numpy(), entry["threshold"])
        for rule, entry in thresholds.stored(checkpoint).items()
    }
    for rule, result in at_thresholds.items():
        log.info("At threshold %s (%.6g): precision %.3f, recall %.3f, F1 %.3f",
                 rule, result["threshold"], result["precision"], result["recall"], result["f1"])  # fmt: skip
    record = values | {
        "stage": cfg.stage,
        "thresholds": at_thresholds,
        "checkpoint": str(checkpoint.resolve()),
        "n_normal": int((anomaly == 0).sum()),
        "n_anomaly": int(anomaly.sum()),
        "data": settings,
        "data_changed": changed,
        "model": dict(model.hparams),
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "provenance": provenance(),
    }
    write_json_atomic(out / EVAL_FILE, record)
    if cfg.wandb.enabled:  # after the files: W&B trouble costs no result
        upload(cfg, record, out, by_class)
    return record


def _score(trainer, model, datamodule, stage: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every sample's scores (``score``, the model's own, then every other: ``AnomalyAutoEncoder.scores``)
    and anomaly label (1 = anomaly) in ``stage``'s split, on the host."""
    datamodule.check_available()
    datamodule.setup(stage)
    if model.nap is None:  # the checkpoint of a run that did not score by NAP: fit it on its normals
        model.fit_nap(datamodule.normal_dataloader(NAP_FIT_SAMPLES))
    loader = datamodule.test_dataloader() if stage == "test" else datamodule.val_dataloader()
    batches = trainer.predict(model, dataloaders=loader)
    scores = {k: torch.cat([s[k] for s, _ in batches]).float().cpu() for k in batches[0][0]}
    return scores, torch.cat([y for _, y in batches]).cpu()


def _scores_table(datamodule, settings: dict[str, Any], stage: str, scores, anomaly) -> pd.DataFrame:
    """``scores.csv``: one row per scored sample, with its index and class in the source split."""
    index, classes = datamodule.source_rows[stage]
    names = class_names(settings["dataset"], settings["split"], settings.get("path"))
    return pd.DataFrame({
        "source_index": index.numpy(),
        "class": classes.numpy(),
        "class_name": [names[c] for c in classes.tolist()],
        "anomaly": anomaly.numpy(),
        "score": scores["score"].numpy(),
        **{f"score_{k}": v.numpy() for k, v in scores.items() if k != "score"},
    })  # fmt: skip


def _checkpoint_to_score(cfg: DictConfig) -> Path:
    """The checkpoint ``cfg.ckpt_path`` names, once ``ckpt_path`` and ``stage`` are known to be set right."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError(
            "ckpt_path is not set: give a run's output directory or a checkpoint, e.g. "
            "`python -m src.eval ckpt_path=logs/train/runs/<time>`."
        )
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage} is invalid: it must be one of {list(STAGES)}.")
    return find_checkpoint(str(cfg.ckpt_path))


def _load(
    checkpoint: Path, saved: dict[str, Any], settings: dict[str, Any]
) -> tuple[OneClassDataModule, AnomalyAutoEncoder]:
    """The DataModule of ``settings`` and the checkpoint's model, checked to fit each other."""
    try:
        datamodule = OneClassDataModule(**settings)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"Invalid data settings, nothing was run: {err}") from err
    if not datamodule.labelled:
        raise ConfigError(
            "src.eval measures how well the model tells anomalies from normals, but the run's table has no "
            "labels (data.label_column is null): give data.label_column=<column> of a labelled copy of "
            "the table, or score new rows with `python -m src.score`."
        )
    _warn_if_the_normals_differ(saved, settings, datamodule)
    model = load_model(checkpoint)
    if datamodule.input_dim != model.hparams.input_dim:
        raise ConfigError(
            f"data.dataset={settings['dataset']} gives {datamodule.input_dim} inputs per sample, but the "
            f"checkpoint's model takes {model.hparams.input_dim}: score a dataset of the same image size."
        )
    return datamodule, model


def upload(cfg: DictConfig, record: dict[str, Any], out: Path, by_class: pd.DataFrame) -> None:
    """A W&B run of job type ``eval``: the metrics as its summary, the per-class table, both plots, and
    the id of the training run it scores (``train_run_id``)."""
    stage, train_dir = record["stage"], Path(record["checkpoint"]).parent.parent
    config = {
        "checkpoint": record["checkpoint"],
        "stage": stage,
        "train_run_id": wandb_run_id(train_dir),
        "data_changed": sorted(record["data_changed"]),
    }
    config |= {f"data.{k}": v for k, v in record["data"].items()}
    config |= {f"model.{k}": v for k, v in record["model"].items()}
    keys = (f"{stage}/auroc", f"{stage}/auprc", "n_normal", "n_anomaly")
    log_to_wandb(
        out,
        project=cfg.wandb.project,
        name=f"eval-{train_dir.name}",
        job_type="eval",
        config=config,
        tables={"scores_by_class": by_class},
        images={"scores": out / "scores.png", "scores_by_class_plot": out / "scores_by_class.png"},
        summary={k: record[k] for k in keys},
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> float | None:
    quiet_dependency_notices()
    try:
        record = evaluate(cfg)
    except UsageError as err:  # a setting or a data file to fix: the message names it and the fix
        stop_on(err, exit_code=2, logger=log)
    stage = record["stage"]
    # logged, not printed: the run's log file (eval.log) ends with them too
    auroc, auprc = record[f"{stage}/auroc"], record[f"{stage}/auprc"]
    log.info("%s/auroc: %.4f   %s/auprc: %.4f   (%d normal, %d anomalous samples)",
             stage, auroc, stage, auprc, record["n_normal"], record["n_anomaly"])  # fmt: skip
    log.info("outputs: %s", cfg.paths.output_dir)
    return record[f"{stage}/auroc"]


if __name__ == "__main__":
    register_configs()
    check_command_line("eval", sys.argv[1:])
    main()
