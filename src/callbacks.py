"""Lightning callbacks, and a Ctrl-C handler, that make runs resumable exactly and interruptible safely."""

import contextlib
import logging
import os
import random
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class RNGState(Callback):
    """Saves the python, numpy and torch random states in every checkpoint and restores them on
    resume, so the epochs after a resume shuffle and sample exactly as an uninterrupted run would."""

    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain tuples only, so checkpoints still load with torch's weights_only=True.
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
        state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def at_epoch_end(trainer: Trainer) -> bool:
    """Whether fitting is between the end of an epoch's last training step and the start of the next
    epoch, or inside a validation. Lightning resumes a checkpoint saved there as if that epoch had ended:
    without its validation (so without its ``val/auroc``, and without it in the choice of the best
    checkpoint) and without its epoch-end and the next epoch's start hooks."""
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return trainer.validating or trainer.sanity_checking or done >= trainer.num_training_batches


class CheckpointOnInterrupt(Callback):
    """On Ctrl-C (SIGINT) or SIGTERM (a cluster's preemption), leave in ``<dirpath>/last.ckpt`` the state
    that ``ckpt_path=last``, or re-running the job, resumes exactly from, before the process exits:

    - if ``LatestCheckpoint`` saved it at this very step (at the validation ``StopCleanlyOnSigterm``
      waited for, or every N steps), that save, as it is: saved again after a validation, the resumed
      run would log the following epoch-level rows one step late;
    - else, at an epoch's end (``at_epoch_end``: after a second Ctrl-C, or at an epoch without a
      validation), nothing new, since a resume from there would skip that epoch's validation: it keeps
      the previous save, and the resume repeats the steps since then, exactly as they ran;
    - else the state after the step under way (or, after a second Ctrl-C, inside it).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        if trainer.state.fn != TrainerFn.FITTING:
            return
        path = self.dirpath / "last.ckpt"
        if any(
            isinstance(cb, LatestCheckpoint)
            and cb.saved_this_step(trainer)
            and Path(cb.best_model_path) == path
            for cb in trainer.checkpoint_callbacks
        ):  # at the validation the stop waited for, or every N steps: what a resume continues exactly from
            if trainer.is_global_zero:
                log.warning(
                    "Interrupted at step %d: %s holds this step; resume with ckpt_path=last.",
                    trainer.global_step,
                    path,
                )
            return
        if at_epoch_end(trainer):
            if trainer.is_global_zero:
                step = trainer.global_step
                log.warning("Interrupted at step %d, at an epoch's end: %s", step, _kept(path, trainer))
            return
        if trainer.world_size > 1 and isinstance(exception, KeyboardInterrupt):
            _save_without_waiting(trainer, path)
        else:
            trainer.save_checkpoint(path)
        if trainer.is_global_zero:  # the rank that wrote it
            log.warning(
                "Interrupted at step %d: saved %s; resume with ckpt_path=last.", trainer.global_step, path
            )


def _kept(path: Path, trainer: Trainer) -> str:
    """What ``last.ckpt`` holds after a stop at an epoch's end, where none is saved."""
    step = _step_of(path) if path.is_file() else None
    kept = (
        f"{path} keeps step {step}, and resuming repeats the steps since then"
        if step is not None
        else "there is no checkpoint yet, and re-running starts over"
    )
    return f"a resumed run would skip this epoch's validation, so no checkpoint saved; {kept}."


def _save_without_waiting(trainer: Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` without its closing barrier, for a second Ctrl-C under DDP: it stops
    rank 0 wherever it is, and the other ranks, still training, would never meet it at a barrier (5 of 8
    runs hung there). Rank 0 writes its own state, as it always does."""
    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)  # no public way
    trainer.strategy.save_checkpoint(checkpoint, path)


class StopCleanlyOnSigterm(Callback):
    """SIGTERM (a cluster's preemption; the first Ctrl-C becomes one) stops the run where
    ``CheckpointOnInterrupt`` or the validation's own checkpoint leaves a state that resumes exactly, and
    under DDP stops every rank at the same place:

    - during a training step: after that step;
    - during a validation, or during the step before one (an epoch's last): after that validation, once
      ``last.ckpt`` holds it, so the resume repeats nothing (Lightning's own handling stops inside the
      validation, where no checkpoint resumes exactly, and the resume repeated the whole epoch);
    - during testing (after training): once the test is done; the run then ends as completed.

    The handler, put in place of Lightning's, only notes the signal and passes it on to the ranks this
    process launched, as Lightning's does. Under DDP the ranks agree in one all-reduce, at the end of every
    step and validation, whether any was signalled. Lightning 2.6's handler broadcasts from inside the signal
    handler instead, wherever each rank happens to be, and each rank then stops on its own flag, so the
    ranks' collectives fall out of step (Lightning-AI/pytorch-lightning#20806): on CPU, 8 of 10 DDP runs
    so stopped failed with "Connection reset by peer" and saved no checkpoint."""

    def __init__(self) -> None:
        self.signalled = False
        self._told = False
        self._trainer: Trainer | None = None

    def _take_over(self, trainer: Trainer) -> None:
        # Lightning puts its handler in place after ``on_fit_start``; these hooks all come later, and
        # Lightning puts back the handler from before its own when the stage ends.
        if threading.current_thread() is threading.main_thread():
            self._trainer = trainer
            signal.signal(signal.SIGTERM, self._note)
        self._absorb(trainer)

    def _absorb(self, trainer: Trainer) -> None:
        """Take a stop that Lightning's flag holds as this rank's own signal, and lower the flag: the ranks
        decide together where to stop (``_stop_here``). The flag was raised by Lightning's handler (a
        SIGTERM before this one took over, while the data was set up) or by ``_stop_here`` at a step's end."""
        if trainer.received_sigterm:
            self.signalled = True
            trainer._signal_connector.received_sigterm = False

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_over(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_over(trainer)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_over(trainer)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        # No logging here: a handler that writes to a stream the main thread is writing to fails with
        # "reentrant call" (seen in these tests). The stop is logged where the ranks agree on it.
        if not self.signalled:
            launcher = self._trainer.strategy.launcher
            if launcher is not None:
                launcher.kill(signum)  # the ranks this process started, if any
        self.signalled = True

    def _stop_here(self, trainer: Trainer, where: str) -> None:
        """Raise Lightning's own flag (it has no public setter) if any rank was signalled: Lightning then
        stops after this step, or, at an epoch's end, after the epoch's end hooks."""
        signalled = self.signalled
        if trainer.world_size > 1:
            signalled = trainer.strategy.reduce_boolean_decision(signalled, all=False)
        if signalled and not trainer.received_sigterm:
            if trainer.is_global_zero and not self._told:
                log.warning("SIGTERM: stopping after this %s.", where)
                self._told = True
            trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.signalled or trainer.world_size > 1:  # nothing to agree on otherwise
            self._stop_here(trainer, "step (or, if a validation follows it, after that)")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._absorb(trainer)  # a stop asked for at the step before: after this validation instead

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # before ``last.ckpt`` is saved for this validation: Lightning runs checkpoint callbacks last
        self._stop_here(trainer, "validation")


class LatestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that skips an ``every_n_train_steps`` save due at an epoch's last step
    (``at_epoch_end``): it would be saved before that epoch's validation, which a run resumed from it
    would never run. The next save comes ``every_n_train_steps`` later."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not at_epoch_end(trainer):
            super().on_train_batch_end(trainer, pl_module, *args)

    def saved_this_step(self, trainer: Trainer) -> bool:
        """Whether this callback saved at the current step (at a validation, or every N steps)."""
        return bool(self.best_model_path) and self._last_global_step_saved == trainer.global_step

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, under which checkpoints saved before this class hold its state: they
        # resume with it, and without Lightning's warning that the callback is missing
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)


def saved_step(path: str | Path) -> int:
    """The ``global_step`` of a Lightning checkpoint, read without reading its weights (``mmap``)."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"]


def _step_of(path: Path) -> int | str:
    try:
        return saved_step(path)
    except Exception:  # cut short, or not a checkpoint: the resume says so in its own words
        return "unknown"


class StopAfterStepOnCtrlC:
    """A context for ``trainer.fit`` in which the first Ctrl-C stops the run as SIGTERM does: after the
    step under way, so ``CheckpointOnInterrupt`` saves whole steps and a resume continues exactly where
    an uninterrupted run would be. A second Ctrl-C stops at once, inside a step, by Lightning's own
    ``KeyboardInterrupt`` handling. ``pressed`` tells which of the two signals stopped the run.

    It changes nothing where Ctrl-C would not raise ``KeyboardInterrupt`` (a background job that ignores
    SIGINT, a handler someone else set, a thread other than the main one). Under DDP each rank that gets
    the Ctrl-C turns it into SIGTERM, which ``StopCleanlyOnSigterm`` stops all ranks on together; the
    second stops rank 0 only, which saves and then ends the ranks it launched. Were each rank to stop on
    its own, rank 0 could be left inside a collective that a stopped rank never joins: it then failed
    with "Connection closed by peer" and saved nothing (3 of 50 runs on CPU), or, waiting at a barrier,
    hung (5 of 8). Ranks that rank 0 did not launch (torchrun, srun) end at their next collective.
    """

    def __init__(self, trainer: Trainer | None = None) -> None:
        self.pressed = False
        self._trainer = trainer
        self._pid: int | None = None

    def __enter__(self) -> "StopAfterStepOnCtrlC":
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._pid = os.getpid()
            signal.signal(signal.SIGINT, self._stop_after_step)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pid is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._pid = None

    def _stop_after_step(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker forked with this handler: its parent stops
            return
        trainer = self._trainer
        last_word = trainer is None or trainer.world_size == 1 or trainer.is_global_zero
        # the next Ctrl-C stops at once (under DDP: rank 0)
        signal.signal(signal.SIGINT, signal.default_int_handler if last_word else signal.SIG_IGN)
        self.pressed = True
        # straight to the file descriptor: logging from a signal handler fails with "reentrant call" when
        # the handler interrupts a write to the same stream
        with contextlib.suppress(OSError):  # no stderr: nothing to tell
            if last_word:
                os.write(2, b"Ctrl-C: stopping after this step or validation (Ctrl-C again: at once).\n")
        signal.raise_signal(signal.SIGTERM)
