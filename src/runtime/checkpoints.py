"""Finding and loading a trained run's checkpoint, safely: ``src.eval``, ``src.score`` and ``src.export``.

A checkpoint is a pickle, and unpickling can run code. The project's checkpoints hold only tensors and
plain values, so every one loads with ``torch.load(weights_only=True)``, which refuses anything else: a
checkpoint that needs more is refused, never loaded the unsafe way behind the user's back.
"""

import pickle
from pathlib import Path
from typing import Any

import torch

from src.errors import ConfigError
from src.models.module import AnomalyAutoEncoder
from src.runtime.records import METRICS_FILE, read_metrics


def find_checkpoint(ckpt_path: str) -> Path:
    """``ckpt_path`` itself if it is a file; for a run directory, the best checkpoint its
    ``metrics.json`` names (looked up under the directory's ``checkpoints/`` if the run was moved)."""
    path = Path(ckpt_path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(
            f"ckpt_path={ckpt_path} is neither a checkpoint file nor a run directory: give a run's "
            "output directory (logs/train/runs/<time>) or one of its checkpoints/*.ckpt files."
        )
    best = read_metrics(path).get("best_checkpoint") if (path / METRICS_FILE).is_file() else None
    for candidate in (best, best and path / "checkpoints" / Path(best).name):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError(
        f"ckpt_path={ckpt_path} is a directory without a best checkpoint (no {METRICS_FILE} naming one "
        "that exists, e.g. an unfinished run or one stopped before its first validation): give a "
        f"checkpoint file, e.g. ckpt_path={path / 'checkpoints' / 'last.ckpt'}."
    )


def read_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's content, loaded with ``weights_only=True``; a ``ConfigError`` that says why if it
    is not a checkpoint, or holds objects other than tensors and plain values."""
    try:
        content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, or a pickle of other objects
        objects = _objects_refused(checkpoint) if isinstance(err, pickle.UnpicklingError) else []
        if objects:
            raise ConfigError(
                f"ckpt_path={checkpoint} holds Python objects other than tensors and plain values "
                f"({', '.join(objects)}), and loading them could run code, so it is refused. Checkpoints "
                "written by `python -m src.train` hold none. If you trust where this file came from, load "
                "it yourself with torch.load(path, weights_only=False) and save what it holds as tensors "
                "and plain values."
            ) from err
        raise ConfigError(
            f"ckpt_path={checkpoint} is not a readable checkpoint ({type(err).__name__}: {err}): give a "
            "checkpoints/*.ckpt file a run wrote, or the run's directory."
        ) from err
    if not isinstance(content, dict) or "state_dict" not in content:
        raise ConfigError(f"ckpt_path={checkpoint} is not a Lightning checkpoint (no state_dict in it).")
    return content


def _objects_refused(checkpoint: Path) -> list[str]:
    """The classes and functions a checkpoint's pickle names beyond what ``weights_only`` allows
    (read without unpickling them); none for a file that is not a checkpoint."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(checkpoint)
    except (ValueError, RuntimeError, OSError):
        return []


def load_model(checkpoint: Path) -> AnomalyAutoEncoder:
    """The checkpoint's model, on the CPU, in eval mode."""
    read_checkpoint(checkpoint)  # the clear error, before Lightning's own
    model = AnomalyAutoEncoder.load_from_checkpoint(
        checkpoint, map_location="cpu", weights_only=True, compile=False
    )
    return model.eval()
