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
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable

# (deadline on time.monotonic(), token) for each active level, outermost first.
_stack: list[tuple[float, object]] = []
_saved_handler: Any = None
_MIN_DELAY = 1e-4  # setitimer(0) would disarm; an overdue deadline fires at once


class DeadlineExceeded(BaseException):
    """Raised inside the guarded call. A BaseException so that the guarded code's
    own `except Exception` cannot swallow it."""

    def __init__(self, token: object):
        super().__init__("reward deadline exceeded")
        self.token = token


def available() -> bool:
    return threading.current_thread() is threading.main_thread()


def _arm() -> None:
    if _stack:
        delay = min(d for d, _ in _stack) - time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, max(delay, _MIN_DELAY))
    else:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _on_alarm(signum, frame) -> None:
    now = time.monotonic()
    expired = [token for d, token in _stack if d <= now]
    if expired:
        raise DeadlineExceeded(expired[0])  # the outermost expired level catches it
    _arm()  # early or stale alarm: wait for the earliest live deadline


def call_with_deadline(seconds: float | None, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """(True, fn(*args)), or (False, None) when it ran past `seconds` of wall clock.

    `seconds` None or <= 0, or a call from another thread: no guard.
    """
    global _saved_handler
    if not seconds or seconds <= 0 or not available():
        return True, fn(*args)
    token = object()
    if not _stack:
        _saved_handler = signal.signal(signal.SIGALRM, _on_alarm)
    _stack.append((time.monotonic() + seconds, token))
    _arm()
    try:
        return True, fn(*args)
    except DeadlineExceeded as e:
        if e.token is not token:
            raise
        return False, None
    finally:
        # Block the alarm while unwinding: a signal that arrives now is handled
        # after the pop, against the outer levels only.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            _stack.remove(next(s for s in _stack if s[1] is token))
            _arm()
            if not _stack:
                signal.signal(signal.SIGALRM, _saved_handler)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
