"""Score new data with a trained model: ``python -m src.score ckpt_path=<run or .ckpt> input=<file>``.

Reads ``.npy``, ``.npz``, ``.csv``, ``.parquet`` or a folder of images (``src.data.inputs``), checked
against what the model was trained on. Writes ``scores.csv`` into its output directory: the sample
(``row``, or ``file`` for a folder), one column per score the model has (its ``model.score`` first:
``recon``, ``sap``, and ``nap`` when the checkpoint holds NAP's statistics), and ``anomaly`` (1 when
the score is above the threshold) when a threshold is given. A threshold is a number or a rule chosen on
the run's own data and stored beside the checkpoint (``src.models.thresholds``).
"""

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from src.data.datamodule import OneClassDataModule
from src.data.inputs import read_samples
from src.data.sources import IMAGE_SHAPES
from src.errors import ConfigError, UsageError
from src.models import thresholds
from src.models.module import AnomalyAutoEncoder
from src.models.settings import SCORES
from src.runtime.checkpoints import find_checkpoint, load_model, read_checkpoint
from src.runtime.composition import check_command_line
from src.runtime.process import quiet_dependency_notices, stop_on

log = logging.getLogger(__name__)

SCORES_FILE = "scores.csv"


def input_description(content: dict[str, Any]) -> dict[str, Any]:
    """What one sample of the checkpoint's model is (saved by ``src.train``; for a checkpoint from
    before it was, the image size of its dataset)."""
    if content.get("inputs"):
        return content["inputs"]
    dataset = content["datamodule_hyper_parameters"]["dataset"]
    if dataset not in IMAGE_SHAPES:
        raise ConfigError(
            "The checkpoint does not say what its samples are (it predates src.score): train it again "
            "with `python -m src.train` to score new data with it."
        )
    return {"kind": "pixels", "shape": list(IMAGE_SHAPES[dataset]), "names": None}


@torch.no_grad()
def all_scores(model: AnomalyAutoEncoder, x: torch.Tensor, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Every score the model has for ``x``, its own (``model.score``) first."""
    names = [model.hparams.score, *(s for s in SCORES if s != model.hparams.score)]
    names = [n for n in names if n != "nap" or model.nap is not None]
    parts = [model.scores(chunk) for chunk in x.split(batch_size)]
    return {n: torch.cat([p[n] for p in parts]).float().numpy() for n in names}


@torch.no_grad()
def _model_scores(model: AnomalyAutoEncoder, loader) -> tuple[np.ndarray, np.ndarray]:
    batches = [(model(x), y) for x, y in loader]
    return torch.cat([s for s, _ in batches]).numpy(), torch.cat([y for _, y in batches]).numpy()


def choose_threshold(model: AnomalyAutoEncoder, checkpoint: Path, content: dict, threshold: Any) -> dict:
    """``{"rule", "threshold", "score"}`` for ``threshold``: a number as it is; a rule as stored beside the
    checkpoint, or chosen now on the run's data (rebuilt from the checkpoint) and stored."""
    score = model.hparams.score
    if isinstance(threshold, int | float) and not isinstance(threshold, bool):
        return {"rule": "value", "threshold": float(threshold), "score": score}
    name, share = thresholds.parse_rule(threshold)
    rule = name if share is None else f"{name}:{share:g}"
    if rule in (saved := thresholds.stored(checkpoint)):
        return {"rule": rule} | saved[rule]
    datamodule = OneClassDataModule(**content["datamodule_hyper_parameters"])
    if name != "quantile" and not datamodule.labelled:
        raise ConfigError(
            f"threshold={threshold} needs labelled anomalies in the run's validation split, but the run "
            "trained on a table without data.label_column (every row normal): use threshold=quantile:<q> "
            "(the q-quantile of the training normals' scores, e.g. quantile:0.99) or a number."
        )
    datamodule.check_available()
    datamodule.setup("fit")
    if name == "quantile":
        train_scores, _ = _model_scores(model, datamodule.normal_dataloader(len(datamodule.data_train)))
        value, basis = float(np.quantile(train_scores, share)), f"{len(train_scores)} training normals"
    else:
        val_scores, anomaly = _model_scores(model, datamodule.val_dataloader())
        if name == "f1_max":
            value = thresholds.f1_max(val_scores, anomaly)
        else:
            value = thresholds.at_fpr(val_scores[anomaly == 0], share)
        basis = f"{int((anomaly == 0).sum())} normal and {int(anomaly.sum())} anomalous validation samples"
    entry = {"threshold": value, "score": score, "chosen_on": basis}
    thresholds.store(checkpoint, rule, entry)
    log.info(
        "Threshold %s on %s: %.6g (stored in %s)", rule, basis, value, thresholds.thresholds_file(checkpoint)
    )
    return {"rule": rule} | entry


def score(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.input`` with ``cfg.ckpt_path``'s model; write ``scores.csv``; return a summary."""
    for key in ("ckpt_path", "input"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(
                f"{key} is not set: `python -m src.score ckpt_path=<run directory or .ckpt> "
                "input=<.npy, .npz, .csv, .parquet or a folder of images>`."
            )
    checkpoint = find_checkpoint(str(cfg.ckpt_path))
    content = read_checkpoint(checkpoint)
    model = load_model(checkpoint)
    names, x = read_samples(cfg.input, input_description(content), resize=cfg.resize)
    chosen = None if cfg.threshold is None else choose_threshold(model, checkpoint, content, cfg.threshold)
    scores = all_scores(model, x)
    key = "file" if Path(cfg.input).expanduser().is_dir() else "row"
    table = pd.DataFrame({key: names, **scores})
    own = scores[model.hparams.score]
    if chosen is not None:
        table["anomaly"] = (own > chosen["threshold"]).astype(int)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SCORES_FILE}.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / SCORES_FILE)  # whole or not at all
    summary = {
        "checkpoint": str(checkpoint),
        "n": len(table),
        "score": model.hparams.score,
        "median": float(np.median(own)),
        "max": float(own.max()),
        "scores_csv": str(out / SCORES_FILE),
    }
    if chosen is not None:
        summary |= {
            "threshold": chosen["threshold"],
            "rule": chosen["rule"],
            "flagged": int(table.anomaly.sum()),
        }
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    line = (
        f"Scored {summary['n']} samples by {summary['score']}: median {summary['median']:.4g}, "
        f"max {summary['max']:.4g}"
    )
    if "threshold" in summary:
        line += (
            f"; {summary['flagged']} flagged as anomalies (score > {summary['threshold']:.6g}, "
            f"threshold {summary['rule']})"
        )
    return f"{line}. Scores: {summary['scores_csv']}"


@hydra.main(version_base="1.3", config_path="../conf", config_name="score")
def main(cfg: DictConfig) -> None:
    quiet_dependency_notices()
    try:
        summary = score(cfg)
    except UsageError as err:  # a setting or an input file to fix: the message names it and the fix
        stop_on(err, exit_code=2, logger=log)
    print(summary_line(summary))


if __name__ == "__main__":
    check_command_line("score", sys.argv[1:])
    main()
