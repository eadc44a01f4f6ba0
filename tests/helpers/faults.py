"""Fault injection for sweep tests, attached through the CLI as an extra Lightning callback:
``+callbacks.fault._target_=tests.helpers.faults.RaiseAtStep +callbacks.fault.step=2``."""

import os
import signal

import torch
from lightning.pytorch import Callback


class RaiseAtStep(Callback):
    """Raise at training step ``step`` (a negative step never fires)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"injected failure at step {self.step}")


class NanAtStep(Callback):
    """Poison the weights at ``step`` so the loss becomes NaN: a forced divergence."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


class KillAtStep(Callback):
    """SIGKILL the process at ``step``: a crash that leaves no chance to clean up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillOnce(Callback):
    """SIGKILL at ``step`` the first time only (a marker file remembers), and only if ``when``:
    re-running the very same command then finds the job's checkpoints and resumes it."""

    def __init__(self, step: int, marker: str, when: bool = True) -> None:
        self.step, self.marker, self.when = step, marker, when

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.when and trainer.global_step == self.step and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


class KillOnceWhileTesting(Callback):
    """SIGKILL as the test of the trained model starts, the first time only (a marker file remembers)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


def _first_to_mark(marker: str) -> bool:
    """Create ``marker`` unless it exists; true for the one process, of all the ranks of a DDP run that
    try at once, that created it."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


class SignalAtStep(Callback):
    """Send ``signum`` (e.g. 15 = SIGTERM, 2 = SIGINT) as training step ``step`` starts, or with
    ``val_batch`` as that batch of the validation after ``step`` steps starts, or with ``test_batch`` as
    that batch of the test after training starts (``step`` unused); ``times`` times in a row, in the first
    run only (a marker file remembers); to this process, or with ``group`` to its whole process group,
    DataLoader workers included, as a terminal's Ctrl-C does. Under DDP, from whichever rank gets there
    first, or from rank ``rank`` only."""

    def __init__(
        self,
        step: int,
        signum: int,
        marker: str,
        times: int = 1,
        group: bool = False,
        val_batch: int = -1,
        test_batch: int = -1,
        rank: int = -1,
    ) -> None:
        self.step, self.signum, self.marker, self.times = step, signum, marker, times
        self.group, self.val_batch, self.test_batch, self.rank = group, val_batch, test_batch, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.val_batch < 0 and self.test_batch < 0:
            self._send(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.val_batch and not trainer.sanity_checking:
            self._send(trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.test_batch:
            self.step = trainer.global_step
            self._send(trainer)

    def _send(self, trainer) -> None:
        if self.rank >= 0 and trainer.global_rank != self.rank:
            return
        if trainer.global_step == self.step and _first_to_mark(self.marker):
            for _ in range(self.times):
                if self.group:
                    os.killpg(os.getpgid(0), self.signum)
                else:
                    os.kill(os.getpid(), self.signum)


class FaultsByJob(Callback):
    """In a multirun, poison job ``nan_job`` with NaN weights at ``step`` (every time) and SIGKILL the
    whole sweep in job ``kill_job`` at ``step`` (the first time only, remembered by ``marker``)."""

    def __init__(self, nan_job: int, kill_job: int, step: int, marker: str) -> None:
        self.nan_job, self.kill_job, self.step, self.marker = nan_job, kill_job, step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from hydra.core.hydra_config import HydraConfig

        job = HydraConfig.get().job.num
        if trainer.global_step != self.step:
            return
        if job == self.nan_job:
            NanAtStep(self.step).on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if job == self.kill_job:
            KillOnce(self.step, self.marker).on_train_batch_start(trainer, pl_module, batch, batch_idx)
