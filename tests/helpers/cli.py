"""``python -m src.train`` / ``src.eval`` run in the test's own process: the same Hydra entry point and
command-line parsing, without a new interpreter importing torch and Lightning (about 5 s each here)."""

import logging
import runpy
import sys
import warnings

from hydra.core.global_hydra import GlobalHydra


def run_main(module: str, *args: str) -> int:
    """Run ``python -m src.<module> args`` here (``runpy``: its ``__main__`` block, the modules it imports
    already loaded); return its exit status. What it prints is for the test's ``capfd`` to read."""
    argv, handlers = sys.argv, logging.root.handlers[:]
    sys.argv = [f"src/{module}.py", *args]
    GlobalHydra.instance().clear()
    try:
        with warnings.catch_warnings():  # that src.<module> is imported already: it is meant to be
            warnings.filterwarnings("ignore", "'src.", RuntimeWarning)
            runpy.run_module(f"src.{module}", run_name="__main__", alter_sys=True)
        return 0
    except SystemExit as stop:
        return stop.code or 0
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for handler in logging.root.handlers[:]:  # Hydra's job logging: the console and train.log
            if handler not in handlers:
                logging.root.removeHandler(handler)
                handler.close()
