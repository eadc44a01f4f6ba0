"""On Ctrl-C or SIGTERM, a ``last.ckpt`` that resumes exactly."""

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.private_api import save_checkpoint_without_barrier
from src.runtime.callbacks.latest_checkpoint import LatestCheckpoint
from src.runtime.resume import at_epoch_end, saved_step

log = logging.getLogger(__name__)


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
            save_checkpoint_without_barrier(trainer, path)
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


def _step_of(path: Path) -> int | str:
    try:
        return saved_step(path)
    except Exception:  # cut short, or not a checkpoint: the resume says so in its own words
        return "unknown"
