"""``checkpoints/last.ckpt``: the latest state, never one that a resume would run differently from."""

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from src.runtime.resume import at_epoch_end, saved_step


class LatestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that skips an ``every_n_train_steps`` save due at an epoch's last step
    (``at_epoch_end``): it would be saved before that epoch's validation, which a run resumed from it
    would never run. The next save comes ``every_n_train_steps`` later."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if not at_epoch_end(trainer):
            super().on_train_batch_end(trainer, pl_module, *args)

    def saved_this_step(self, trainer: Trainer) -> bool:
        """Whether this callback saved at the current step (at a validation, or every N steps)."""
        path = self.best_model_path
        return bool(path) and Path(path).is_file() and saved_step(path) == trainer.global_step

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key, under which checkpoints saved before this class hold its state: they
        # resume with it, and without Lightning's warning that the callback is missing
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)
