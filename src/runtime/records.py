"""``metrics.json``: the per-run record that sweep reports read. Written atomically."""

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


def write_json_atomic(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def provenance() -> dict[str, Any]:
    """Versions and the project's git commit, so a result can be traced to the code that made it."""
    import hydra
    import lightning
    import torch

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10).stdout.strip())  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "hydra": hydra.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
    }


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())
