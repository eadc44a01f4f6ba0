"""``metrics.json``: the per-run record that sweep reports read. Written atomically."""

import json
import os
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


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())
