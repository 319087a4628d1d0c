"""Nestable wall-clock deadlines for the main thread (SIGALRM).

Why signals and not a watchdog thread: sympy on model output such as
`\\boxed{10^{10^{10}}}` spends minutes inside one C call (big-integer power)
that holds the GIL. A thread waiting with `join(timeout)` cannot even wake up
until that call returns, so a thread-based timeout never fires. A kernel timer
does: CPython's long arithmetic checks for pending signals in its loops, so a
Python SIGALRM handler raising an exception interrupts it.

math-verify has SIGALRM timeouts of its own, but they are not nestable (they
cancel any outer alarm), so callers here pass it `None` and use this module.
Deadlines nest: the timer is armed for the earliest one and re-armed for the
next when a level exits. Off the main thread signals are unavailable and
`call_with_deadline` runs the function unguarded.

Limits: C code that never checks for signals, and code that catches
BaseException, cannot be interrupted. Nothing else in the process may use
SIGALRM / ITIMER_REAL while a deadline is active (math-verify with its
timeouts on, pytest-timeout's signal method).
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable

_stack: list["_Level"] = []  # active levels, outermost first
_saved_handler: Any = None
_MIN_DELAY = 1e-4  # setitimer(0) would disarm; an overdue deadline fires at once


class _Level:
    __slots__ = ("deadline", "done", "fired")

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.done = False   # its call returned: never raise for it again
        self.fired = False  # it was raised once: never raise again


class DeadlineExceeded(BaseException):
    """Raised inside the guarded call. A BaseException so that the guarded code's
    own `except Exception` cannot swallow it."""

    def __init__(self, level: _Level):
        super().__init__("reward deadline exceeded")
        self.level = level


def available() -> bool:
    return threading.current_thread() is threading.main_thread()


def _arm() -> None:
    live = [lv.deadline for lv in _stack if not (lv.done or lv.fired)]
    delay = max(min(live) - time.monotonic(), _MIN_DELAY) if live else 0.0
    signal.setitimer(signal.ITIMER_REAL, delay)


def _on_alarm(signum, frame) -> None:
    # Python runs this in the main thread between bytecodes, so it sees the
    # flags below either before or after each (single-bytecode) update.
    now = time.monotonic()
    for level in _stack:
        if not (level.done or level.fired) and level.deadline <= now:
            level.fired = True  # each level raises at most once
            raise DeadlineExceeded(level)  # the outermost expired level catches it
    if _stack:
        _arm()  # early or stale alarm: wait for the earliest live deadline


def _push(level: _Level) -> None:
    global _saved_handler
    if not _stack:
        _saved_handler = signal.signal(signal.SIGALRM, _on_alarm)
    _stack.append(level)
    _arm()


def _pop(level: _Level) -> None:
    # Levels above this one belong to calls that already unwound (their own
    # cleanup may have been cut short by an outer deadline): drop them too.
    for i, lv in enumerate(_stack):
        if lv is level:
            del _stack[i:]
            break
    _arm()
    # Keep our handler (idle on an empty stack) rather than restore SIG_DFL,
    # which would kill the process on a last alarm already in flight.
    if not _stack and callable(_saved_handler):
        signal.signal(signal.SIGALRM, _saved_handler)


def call_with_deadline(seconds: float | None, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """(True, fn(*args)), or (False, None) when it ran past `seconds` of wall clock.

    `seconds` None or <= 0, or a call from another thread: no guard.
    """
    if not seconds or seconds <= 0 or not available():
        return True, fn(*args)
    level = _Level(seconds)
    _push(level)
    try:
        try:
            try:
                result = fn(*args)
            finally:
                level.done = True
        except DeadlineExceeded as e:
            if e.level is not level:
                raise
            return False, None
        return True, result
    finally:
        _pop(level)
