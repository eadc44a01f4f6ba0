"""Every use of another package's private API, in one place.

Each function below does one thing that Lightning or torch offers no public way to do, and
``tests/test_private_api.py`` checks each against the installed version, failing with the name
of the attribute that moved. ``tests/test_private_api.py`` also checks that no other module of
``src`` touches a private attribute of another package. ``pyproject.toml`` pins the versions tested.
"""

from pathlib import Path

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger


def raise_sigterm_flag(trainer: Trainer, value: bool = True) -> None:
    """Set Lightning's own "SIGTERM received" flag, which stops fitting after the step under way (or at
    an epoch's end, after its end hooks). ``trainer.received_sigterm`` is read-only."""
    trainer._signal_connector.received_sigterm = value


def save_checkpoint_without_barrier(trainer: Trainer, path: str | Path) -> None:
    """``trainer.save_checkpoint`` without its closing barrier: after a second Ctrl-C under DDP, rank 0
    stops wherever it is, and the other ranks, still training, would never meet it at a barrier."""
    checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
    trainer.strategy.save_checkpoint(checkpoint, path)


def drop_wandb_anonymous(logger: WandbLogger) -> None:
    """Take ``anonymous`` out of the arguments Lightning's ``WandbLogger`` passes to ``wandb.init``: it
    passes ``anonymous=None``, which wandb takes as set and warns about ("no effect") in every run."""
    if isinstance(logger, WandbLogger) and logger._wandb_init.get("anonymous", "unset") is None:
        del logger._wandb_init["anonymous"]
