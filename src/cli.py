"""What the two entry points, ``src.train`` and ``src.eval``, share: the notices they silence and how
they stop on an expected failure."""

import logging
import warnings

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode


class _DropLightningTips(logging.Filter):
    """Lightning 2.6 advertises its cloud logger ("💡 Tip: ... litlogger") at every ``Trainer``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_DROP_TIPS = _DropLightningTips()


def quiet_dependency_notices() -> None:
    """Silence messages a user can do nothing about: Lightning's advertisement and torch 2.14's
    deprecation of the ``LeafSpec`` that Lightning 2.6 still builds, in every run; and, with
    ``trainer.precision=bf16-mixed``, the model summary's warning that it sizes the weights at 32 bits,
    which is right (mixed precision keeps them in float32). Called by the entry points, not at import."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _DROP_TIPS not in rank_zero_log.filters:
        rank_zero_log.addFilter(_DROP_TIPS)
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
    warnings.filterwarnings(
        "ignore", r"Precision \S+-mixed is not supported by the model summary", UserWarning
    )


def stop_on(err: Exception, exit_code: int, logger: logging.Logger) -> None:
    """Report an expected failure in one paragraph: a single run exits with ``exit_code``; in a
    multirun the error goes back to Hydra, which records it and runs the other jobs."""
    logger.error(str(err))
    if HydraConfig.get().mode == RunMode.RUN:
        raise SystemExit(exit_code) from None
    raise err
