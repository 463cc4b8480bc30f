"""SIGTERM and SIGINT during training: say so at once, finish the step, write the weights
(no self-check ranking: that waits for the next checkpoint or export), then stop with one
line, so an interrupted run (a preempted node, ^C) loses nothing and resumes within a
container's grace period."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from models.errors import NanoinspectError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(NanoinspectError):
    code = "interrupted"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 143 for SIGTERM, 130 for ^C


class StopSignals:
    """While entered, SIGTERM/SIGINT only set `received`; the training loop polls it. A
    second signal acts as usual (kills at once). Only the main thread installs handlers."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def _on(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
        print(
            f"{signal.Signals(signum).name}: saving the weights after this step, then stopping "
            "(the same signal again stops at once; checkpoints already written stay whole)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._on) for s in SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
