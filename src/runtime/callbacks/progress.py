"""Progress: Lightning's bar on a terminal, one log line per epoch anywhere else (a file, a pipe, a
cluster's job log), where every redraw of a bar would stay in the output as one more line."""

import logging
import sys
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

log = logging.getLogger(__name__)

STYLES = ("auto", "bar", "lines")


def progress_bar(style: str, refresh_rate: int) -> ProgressBar:
    """The progress callback of ``style``: ``bar`` (tqdm, redrawn every ``refresh_rate`` steps),
    ``lines`` (``EpochLines``) or ``auto``: the bar where standard output is a terminal, else lines."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not one of {list(STYLES)}")
    if style == "bar" or (style == "auto" and sys.stdout.isatty()):
        return TQDMProgressBar(refresh_rate=refresh_rate)
    return EpochLines()


class EpochLines(ProgressBar):
    """One line per training epoch, logged (so it reaches ``train.log`` too) by the first process:
    the epoch, its mean training loss, the validation AUROC if it validated, and its wall time.

    An epoch's line is written when the next epoch starts, or when training ends: the module logs
    ``train/epoch_loss`` in its ``on_train_epoch_end``, which Lightning calls after the callbacks' own.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writing = True
        self.epoch_started: tuple[int, float] | None = None  # (the epoch under way, when it started)
        self.val_auroc: float | None = None

    def disable(self) -> None:
        self.writing = False

    def enable(self) -> None:
        self.writing = True

    def on_train_epoch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.write_finished_epoch(trainer)
        self.epoch_started, self.val_auroc = (trainer.current_epoch, time.perf_counter()), None

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not trainer.sanity_checking and "val/auroc" in trainer.callback_metrics:
            self.val_auroc = float(trainer.callback_metrics["val/auroc"])

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.write_finished_epoch(trainer)

    def write_finished_epoch(self, trainer: "pl.Trainer") -> None:
        if self.epoch_started is None or not (self.writing and trainer.is_global_zero):
            return
        epoch, start = self.epoch_started
        self.epoch_started = None
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {epoch + 1}{of}"]
        if "train/epoch_loss" in trainer.callback_metrics:
            parts.append(f"train/epoch_loss {float(trainer.callback_metrics['train/epoch_loss']):.4f}")
        if self.val_auroc is not None:
            parts.append(f"val/auroc {self.val_auroc:.4f}")
        log.info("%s  (%.1f s)", "  ".join(parts), time.perf_counter() - start)
