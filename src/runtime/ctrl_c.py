"""The first Ctrl-C stops a run after the step under way, as SIGTERM does; the second at once."""

import contextlib
import os
import signal
import threading
from types import FrameType

from lightning.pytorch import Trainer


class StopAfterStepOnCtrlC:
    """A context for ``trainer.fit`` in which the first Ctrl-C stops the run as SIGTERM does: after the
    step under way, so ``CheckpointOnInterrupt`` saves whole steps and a resume continues exactly where
    an uninterrupted run would be. A second Ctrl-C stops at once, inside a step, by Lightning's own
    ``KeyboardInterrupt`` handling. ``pressed`` tells which of the two signals stopped the run.

    It changes nothing where Ctrl-C would not raise ``KeyboardInterrupt`` (SIGINT ignored, another
    handler set, not the main thread). Under DDP the second Ctrl-C stops rank 0 only, which saves and then
    ends the ranks it launched (docs/reliability.md).
    """

    def __init__(self, trainer: Trainer | None = None) -> None:
        self.pressed = False
        self._trainer = trainer
        self._pid: int | None = None

    def __enter__(self) -> "StopAfterStepOnCtrlC":
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._pid = os.getpid()
            signal.signal(signal.SIGINT, self._stop_after_step)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pid is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._pid = None

    def _stop_after_step(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker forked with this handler: its parent stops
            return
        trainer = self._trainer
        last_word = trainer is None or trainer.world_size == 1 or trainer.is_global_zero
        # the next Ctrl-C stops at once (under DDP: rank 0)
        signal.signal(signal.SIGINT, signal.default_int_handler if last_word else signal.SIG_IGN)
        self.pressed = True
        # straight to the file descriptor: logging from a signal handler fails with "reentrant call" when
        # the handler interrupts a write to the same stream
        with contextlib.suppress(OSError):  # no stderr: nothing to tell
            if last_word:
                os.write(2, b"Ctrl-C: stopping after this step or validation (Ctrl-C again: at once).\n")
        signal.raise_signal(signal.SIGTERM)
