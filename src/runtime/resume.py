"""Which checkpoint a run resumes from, at which training step, and where in an epoch a stop leaves it."""

import logging
from pathlib import Path

import torch
from lightning.pytorch import Trainer
from omegaconf import DictConfig

from src.errors import ConfigError

log = logging.getLogger(__name__)


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


def saved_step(path: str | Path) -> int:
    """The ``global_step`` of a Lightning checkpoint, read without reading its weights (``mmap``)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]


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


def at_epoch_end(trainer: Trainer) -> bool:
    """Whether fitting is between the end of an epoch's last training step and the start of the next
    epoch, or inside a validation. Lightning resumes a checkpoint saved there as if that epoch had ended:
    without its validation (so without its ``val/auroc``, and without it in the choice of the best
    checkpoint) and without its epoch-end and the next epoch's start hooks."""
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return trainer.validating or trainer.sanity_checking or done >= trainer.num_training_batches
