"""Run as ``python tests/import_probe.py <repo>`` in an empty directory: imports every third-party module
that ``src`` imports, then every ``src`` module, and prints as JSON the ``src`` modules and what
importing them changed in the process: environment, files under the working directory, signal
handlers, warning filters, loggers' handlers, filters and
levels, matplotlib's settings and backend, and torch's global settings."""

import ast
import importlib
import json
import logging
import os
import pkgutil
import signal
import sys
import warnings
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD)
NEW_LOGGER = [repr([]), repr([]), logging.NOTSET, True]  # what ``logging.getLogger(__name__)`` makes


def third_party_imports(src: Path) -> set[str]:
    """Every module any file under ``src`` imports (at the top or inside a function), but ``src``'s own."""
    names = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    return {n for n in names if n != "src" and not n.startswith("src.")}


def process_state() -> dict:
    import matplotlib
    import torch

    loggers = {"": logging.getLogger()} | {
        name: lg for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)
    }
    return {
        "environ": dict(os.environ),
        "files": {str(p): p.stat().st_mtime_ns for p in Path(".").rglob("*")},
        "signals": {s.name: repr(signal.getsignal(s)) for s in SIGNALS},
        "warnings": {repr(f): True for f in warnings.filters},
        "matplotlib": {k: repr(v) for k, v in matplotlib.rcParams.items()} | {"": matplotlib.get_backend()},
        "loggers": {n: [repr(g.handlers), repr(g.filters), g.level, g.propagate] for n, g in loggers.items()},
        "torch": {
            "num_threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "default_dtype": repr(torch.get_default_dtype()),
            "rng_state": torch.random.get_rng_state().sum().item(),
        },
    }


def main(repo: Path) -> None:
    sys.path.insert(0, str(repo))
    for name in sorted(third_party_imports(repo / "src")):
        importlib.import_module(name)
    before = process_state()
    import src

    modules = [m.name for m in pkgutil.walk_packages(src.__path__, "src.")]
    for name in modules:
        importlib.import_module(name)
    after = process_state()
    changed = {}
    for part, was in before.items():
        now = after[part]
        default = NEW_LOGGER if part == "loggers" else None
        diff = {k: now.get(k) for k in was.keys() | now.keys() if was.get(k, default) != now.get(k)}
        if diff:
            changed[part] = diff
    print(json.dumps({"modules": modules, "changed": changed}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
