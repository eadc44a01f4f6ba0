"""Fault injection for sweep tests, attached through the CLI as an extra Lightning callback:
``+callbacks.fault._target_=tests.faults.RaiseAtStep +callbacks.fault.step=2``."""

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
