"""SIGTERM / SIGINT during training: finish the current step, save, stop.

Preemptible VMs announce the end with SIGTERM; Ctrl-C sends SIGINT. While
`StopRequests` is active the first such signal only sets a flag: the loop
finishes the step it is in, saves a checkpoint, and raises `Interrupted`
(exit status 128 + the signal number), so rerunning the same command
resumes exactly where the interrupted run stopped. A second SIGINT
abandons the step at once (KeyboardInterrupt), keeping the last checkpoint.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Context manager catching SIGTERM/SIGINT in the main thread; `signum` is the first one caught."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: give up on the current step
        if self.signum is None:
            self.signum = signum
            log.warning("%s: finishing the current step, then saving a checkpoint and stopping",
                        signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
