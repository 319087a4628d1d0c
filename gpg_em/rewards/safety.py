"""Run reward functions so that no failure of theirs stops training.

`safe_rewards` turns every failure into 0.0 rewards and a count:
  raises               -> retried one sample at a time, so only the samples
                          that raise get 0.0 (counted in n_errors)
  wrong length / type  -> handled like a raise
  NaN / inf            -> that sample 0.0 (n_errors)
  runs past timeout_s  -> the whole call 0.0 (n_timeouts counts samples)

The time limit, from the main thread (the trainer's case), is a SIGALRM
deadline (`deadline.py`): it interrupts the function where it is, even inside
sympy's big-integer arithmetic, and leaves nothing running. From any other
thread signals are unavailable, so the function runs in a daemon thread that
is abandoned on timeout. That fallback is weaker: Python cannot kill a thread,
and a thread stuck in one long C call holds the GIL, so even the wait for it
overruns until the call returns. `n_stuck` counts abandoned threads still alive.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gpg_em.rewards import deadline

log = logging.getLogger(__name__)

_stuck: list[threading.Thread] = []
_logged: dict[str, int] = {}
_MAX_LOGS_PER_FN = 3


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _log_once(fn: Callable, msg: str, exc_info: bool = False) -> None:
    key = _name(fn)
    _logged[key] = _logged.get(key, 0) + 1
    if _logged[key] <= _MAX_LOGS_PER_FN:
        log.warning("reward %s: %s", key, msg, exc_info=exc_info)


def _checked(fn, prompts, completions, entries) -> tuple[np.ndarray, int]:
    """fn's rewards as float64 [n]; non-finite values zeroed and counted."""
    out = fn(prompts, completions, entries)
    n = len(completions)
    values = np.asarray(list(out), dtype=np.float64)  # TypeError/ValueError on junk
    if values.shape != (n,):
        raise ValueError(f"returned {values.shape[0] if values.ndim else 'a scalar'} "
                         f"values for {n} completions")
    bad = ~np.isfinite(values)
    values[bad] = 0.0
    return values, int(bad.sum())


def _isolated(fn, prompts, completions, entries) -> tuple[np.ndarray, int]:
    """One batch call; if it fails, one call per sample to find the culprits."""
    try:
        return _checked(fn, prompts, completions, entries)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any user failure becomes a count
        _log_once(fn, f"batch call failed ({type(e).__name__}: {e}); retrying per sample",
                  exc_info=True)
    values, n_err = np.zeros(len(completions)), 0
    for i in range(len(completions)):
        try:
            v, bad = _checked(fn, prompts[i:i + 1], completions[i:i + 1], entries[i:i + 1])
            values[i], n_err = v[0], n_err + bad
        except (Exception, SystemExit):  # noqa: BLE001
            n_err += 1
    return values, n_err


def n_stuck() -> int:
    """Reward threads abandoned after a timeout that are still running."""
    _stuck[:] = [t for t in _stuck if t.is_alive()]
    return len(_stuck)


def safe_rewards(fn: Callable, prompts: Sequence[Any], completions: Sequence[str],
                 entries: Sequence[Mapping[str, Any]], timeout_s: float | None
                 ) -> tuple[np.ndarray, dict[str, int]]:
    """Calls `fn(prompts, completions, entries)`; never raises because of `fn`.

    Returns (rewards float32 [B], counts) with counts
    {"n_errors", "n_timeouts", "n_stuck"} for metrics. `timeout_s` None or <= 0
    means no time limit.
    """
    n = len(completions)
    if not (len(prompts) == len(entries) == n):
        raise ValueError(f"safe_rewards: {len(prompts)} prompts, {n} completions, "
                         f"{len(entries)} entries; they must match")
    if not timeout_s or timeout_s <= 0 or deadline.available():
        ok, result = deadline.call_with_deadline(timeout_s, _isolated, fn, prompts, completions, entries)
    else:
        ok, result = _in_thread(fn, prompts, completions, entries, timeout_s)
    if not ok:
        _log_once(fn, f"timed out after {timeout_s}s on {n} completions; rewards set to 0")
        return np.zeros(n, np.float32), {"n_errors": 0, "n_timeouts": n, "n_stuck": n_stuck()}
    if isinstance(result, BaseException):
        _log_once(fn, f"aborted with {type(result).__name__}; rewards set to 0")
        return np.zeros(n, np.float32), {"n_errors": n, "n_timeouts": 0, "n_stuck": n_stuck()}
    values, n_err = result
    return values.astype(np.float32), {"n_errors": n_err, "n_timeouts": 0, "n_stuck": n_stuck()}


def _in_thread(fn, prompts, completions, entries, timeout_s: float) -> tuple[bool, Any]:
    """(finished, result or the exception that ended the thread)."""
    box: dict[str, Any] = {}

    def work():
        try:
            box["result"] = _isolated(fn, prompts, completions, entries)
        except BaseException as e:  # noqa: BLE001 - e.g. SystemExit raised by user code
            box["result"] = e

    thread = threading.Thread(target=work, name=f"reward-{_name(fn)}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _stuck.append(thread)
        return False, None
    return True, box["result"]
