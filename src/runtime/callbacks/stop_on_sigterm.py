"""SIGTERM (a cluster's preemption) stops every rank at a place that resumes exactly."""

import logging
import signal
import threading
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from src.private_api import raise_sigterm_flag

log = logging.getLogger(__name__)


class StopCleanlyOnSigterm(Callback):
    """SIGTERM (a cluster's preemption; the first Ctrl-C becomes one) stops the run where
    ``CheckpointOnInterrupt`` or the validation's own checkpoint leaves a state that resumes exactly, and
    under DDP stops every rank at the same place:

    - during a training step: after that step;
    - during a validation, or during the step before one (an epoch's last): after that validation, once
      ``last.ckpt`` holds it, so the resume repeats nothing (Lightning's own handling stops inside the
      validation, where no checkpoint resumes exactly, and the resume repeated the whole epoch);
    - during testing (after training): once the test is done; the run then ends as completed.

    Its handler only notes the signal (and passes it on to the ranks this process launched); the ranks
    agree in one all-reduce per step and validation. Why not Lightning's own: docs/reliability.md."""

    def __init__(self) -> None:
        self.signalled = False
        self.told = False
        self.watched_trainer: Trainer | None = None

    def take_over(self, trainer: Trainer) -> None:
        # Lightning puts its handler in place after ``on_fit_start``; these hooks all come later, and
        # Lightning puts back the handler from before its own when the stage ends.
        if threading.current_thread() is threading.main_thread():
            self.watched_trainer = trainer
            signal.signal(signal.SIGTERM, self.note_signal)
        self.absorb_flag(trainer)

    def absorb_flag(self, trainer: Trainer) -> None:
        """Take a stop that Lightning's flag holds as this rank's own signal, and lower the flag: the
        ranks decide together where to stop (``stop_if_signalled``). The flag was raised by Lightning's
        handler (a SIGTERM before this one took over, while the data was set up) or by
        ``stop_if_signalled`` at a step's end."""
        if trainer.received_sigterm:
            self.signalled = True
            raise_sigterm_flag(trainer, False)

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.take_over(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.take_over(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.take_over(trainer)

    def note_signal(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: a handler that writes to a stream the main thread is writing to fails with
        # "reentrant call" (seen in these tests). The stop is logged where the ranks agree on it.
        if not self.signalled:
            launcher = self.watched_trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signum)  # the ranks this process started, if any
        self.signalled = True

    def stop_if_signalled(self, trainer: Trainer, where: str) -> None:
        """Raise Lightning's own flag (it has no public setter) if any rank was signalled: Lightning then
        stops after this step, or, at an epoch's end, after the epoch's end hooks."""
        signalled = self.signalled
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if signalled and not trainer.received_sigterm:
            if trainer.is_global_zero and not self.told:
                log.warning("SIGTERM: stopping after this %s.", where)
                self.told = True
            raise_sigterm_flag(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.signalled or trainer.world_size > 1:  # nothing to agree on otherwise
            self.stop_if_signalled(trainer, "step (or, if a validation follows it, after that)")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.absorb_flag(trainer)  # a stop asked for at the step before: after this validation instead

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # before ``last.ckpt`` is saved for this validation: Lightning runs checkpoint callbacks last
        self.stop_if_signalled(trainer, "validation")
