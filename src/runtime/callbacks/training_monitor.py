"""Per-step training values for the loggers, and a stop at the first non-finite one."""

import math
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

STEP_KEYS = ("train/loss", "train/g_norm")  # the values that stop the run when not finite


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or gradient norm; the weights were not updated with it."""

    def __init__(self, step: int, reason: str, last_finite_g_norm: float | None) -> None:
        self.step, self.reason, self.last_finite_g_norm = step, reason, last_finite_g_norm
        super().__init__(
            f"Training diverged at step {step}: {reason} (last finite train/g_norm: {last_finite_g_norm}). "
            "That update never reached the weights, and no checkpoint was saved after it: the best and "
            "last checkpoints hold the weights from before. Try gradient clipping "
            "(trainer.gradient_clip_val), a lower model.lr, or fewer layers."
        )


class TrainingMonitor(Callback):
    """Sends ``train/loss`` (and ``train/recon``, ``train/kl``) and ``train/g_norm``, the gradient norm
    before clipping, to the loggers every ``trainer.log_every_n_steps``; logs ``train/g_norm_max`` every
    epoch; and stops the run with ``DivergedError`` at the first non-finite loss or norm, before the
    optimizer applies that step.

    The values are read to the host every step, in one copy, because the finiteness check needs them
    there (on a GPU this waits for the step's work). The loss terms come from the module's
    ``step_losses``.
    """

    def __init__(self) -> None:
        self.g_norm_max = 0.0
        self.last_finite_g_norm: float | None = None

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # Lightning calls this before it clips: the raw norm that clipping then bounds.
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        values = pl_module.step_losses | {"train/g_norm": torch.nn.utils.get_total_norm(grads)}
        values = dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))
        if self.log_due(trainer):
            for logger in trainer.loggers:
                logger.log_metrics(values | {"epoch": trainer.current_epoch}, step=trainer.global_step)
        bad = [k for k in STEP_KEYS if not math.isfinite(values[k])]
        if bad:
            raise DivergedError(trainer.global_step, f"{bad[0]} is {values[bad[0]]}", self.last_finite_g_norm)
        self.last_finite_g_norm = values["train/g_norm"]
        self.g_norm_max = max(self.g_norm_max, self.last_finite_g_norm)

    @staticmethod
    def log_due(trainer: Trainer) -> bool:
        """At ``trainer.log_every_n_steps``, with the step convention of ``self.log``, and on the last
        step of a stopping run."""
        every = trainer.log_every_n_steps
        if not trainer.loggers or not every:
            return False
        return not (trainer.global_step + 1) % every or trainer.should_stop

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the same on every rank (averaged gradients); ``sync_dist`` keeps Lightning from advising it
        pl_module.log("train/g_norm_max", self.g_norm_max, sync_dist=True)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # The loggers write out what they hold, so the history on disk reaches the checkpoint's step even
        # if the process is then killed: a resume logs from there on, it cannot log the steps before.
        for logger in trainer.loggers:
            logger.save()

    def state_dict(self) -> dict[str, Any]:
        return {"g_norm_max": self.g_norm_max, "last_finite_g_norm": self.last_finite_g_norm}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.g_norm_max = state_dict["g_norm_max"]
        self.last_finite_g_norm = state_dict["last_finite_g_norm"]
