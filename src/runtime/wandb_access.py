"""W&B for every entry point (training, ``src.eval``, ``src.report``, ``src.claims``): never a login prompt,
never a lost result. Imports no torch, so the report tools stay light."""

import logging
import netrc
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "rvae-anomaly"


def wandb_credentials_found() -> bool:
    """True when W&B has an API key from the environment or ``~/.netrc`` (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str | None:
    """``"offline"``, with a warning, when neither ``WANDB_MODE`` nor credentials are set, where W&B would
    otherwise ask for a login (at a terminal) or fail; else None, leaving the mode to W&B."""
    if "WANDB_MODE" in os.environ or wandb_credentials_found():
        return None
    log.warning("No W&B credentials: logging offline; upload later with `wandb sync`.")
    return "offline"


def sweep_group(task_name: str, sweep_dir: str | Path) -> str:
    """The W&B group of every job of one multirun, and of its report: ``<task>-<sweep dir name>``."""
    return f"{task_name}-{Path(sweep_dir).name}"


def log_to_wandb(
    out: Path,
    *,
    project: str,
    name: str,
    job_type: str,
    group: str | None = None,
    config: dict[str, Any] | None = None,
    tables: dict[str, Any] | None = None,
    images: dict[str, Path] | None = None,
    charts: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
    files: tuple[Path, ...] = (),
) -> None:
    """One W&B run of ``job_type`` (``eval``, ``report``, ``claims``) written under ``out``: ``tables``
    (pandas DataFrames), ``images`` (PNG files) and ``charts`` (``wandb.plot`` objects) logged once,
    ``summary`` as its summary, ``files`` copied into its files. Offline without credentials; a failure is
    a warning, since the results are on disk already."""
    import wandb

    try:
        with wandb.init(project=project, name=name, job_type=job_type, group=group, config=config,
                        dir=str(out), mode=wandb_mode()) as run:  # fmt: skip
            logged = {k: wandb.Table(dataframe=df) for k, df in (tables or {}).items()}
            logged |= {k: wandb.Image(str(path)) for k, path in (images or {}).items()}
            logged |= charts or {}
            run.log(logged)
            run.summary.update(summary or {})
            for path in files:  # a copy in the run's files, uploaded with it (a save would link it)
                shutil.copy(path, run.dir)
    except Exception as err:
        log.warning("W&B logging failed (%s: %s); the results are in %s.", type(err).__name__, err, out)
