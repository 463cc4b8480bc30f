"""SIGTERM and SIGINT during training: finish the step, write a checkpoint, then stop with
one line, so an interrupted run (a preempted node, ^C) loses nothing and resumes."""

from __future__ import annotations

import signal
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

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._on) for s in SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
