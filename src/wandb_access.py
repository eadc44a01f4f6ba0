"""Whether W&B may log online, decided once for every entry point (training, ``src.eval``,
``src.report``, ``src.claims``): W&B never asks for a login. Standard library only, so the report tools
do not import Lightning to ask."""

import logging
import netrc
import os
from urllib.parse import urlparse

log = logging.getLogger(__name__)


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
