"""Run reward functions so that no failure of theirs crashes the caller.

`safe_rewards` turns every failure into 0.0 rewards, a count and a
description of the first failure (`first_error`); whether a failure stops
training is the trainer's decision (`gpg_em.train.guard.RewardFailures`):
  raises               -> retried one sample at a time, so only the samples
                          that raise get 0.0 (counted in n_errors)
  wrong length         -> every sample of the call 0.0 (n_errors)
  non-numeric value    -> handled like a raise (a str such as "1.0" included)
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
import numbers
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


class WrongLength(ValueError):
    """A reward fn returned a number of values other than one per completion (a contract error, not a sample's)."""


def _numbers(out, n: int) -> np.ndarray:
    """A reward fn's return value as float64 [n]; TypeError/ValueError naming what is wrong."""
    try:
        items = list(out)
    except TypeError:
        raise WrongLength(f"returned {type(out).__name__}, not a list of {n} numbers") from None
    if len(items) != n:
        raise WrongLength(f"returned {len(items)} values for {n} completions")
    for i, v in enumerate(items):
        if isinstance(v, (str, bytes)) or not isinstance(v, (numbers.Real, np.number, np.bool_)):
            raise TypeError(f"value {i} is {v!r} ({type(v).__name__}), not a number")
    return np.asarray(items, dtype=np.float64)


def _checked(fn, prompts, completions, entries) -> tuple[np.ndarray, int, str | None]:
    """(fn's rewards as float64 [n] with non-finite values zeroed, how many, the first described)."""
    values = _numbers(fn(prompts, completions, entries), len(completions))
    bad = np.flatnonzero(~np.isfinite(values))
    first = f"value {bad[0]} is {values[bad[0]]}" if bad.size else None
    values[bad] = 0.0
    return values, int(bad.size), first


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _isolated(fn, prompts, completions, entries) -> tuple[np.ndarray, int, str | None]:
    """One batch call; if it fails, one call per sample to find the culprits (a wrong length fails them all)."""
    try:
        return _checked(fn, prompts, completions, entries)
    except WrongLength as e:
        _log_once(fn, f"{e}; rewards set to 0")
        return np.zeros(len(completions)), len(completions), str(e)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any user failure becomes a count
        first = _describe(e)
        _log_once(fn, f"batch call failed ({first}); retrying per sample", exc_info=True)
    values, n_err = np.zeros(len(completions)), 0
    for i in range(len(completions)):
        try:
            v, bad, _ = _checked(fn, prompts[i:i + 1], completions[i:i + 1], entries[i:i + 1])
            values[i], n_err = v[0], n_err + bad
        except (Exception, SystemExit):  # noqa: BLE001
            n_err += 1
    return values, n_err, first if n_err else None  # a batch-only failure lost no sample


def n_stuck() -> int:
    """Reward threads abandoned after a timeout that are still running."""
    _stuck[:] = [t for t in _stuck if t.is_alive()]
    return len(_stuck)


def safe_rewards(fn: Callable, prompts: Sequence[Any], completions: Sequence[str],
                 entries: Sequence[Mapping[str, Any]], timeout_s: float | None
                 ) -> tuple[np.ndarray, dict[str, int]]:
    """Calls `fn(prompts, completions, entries)`; never raises because of `fn`.

    Returns (rewards float32 [B], counts) with counts
    {"n_errors", "n_timeouts", "n_stuck"} for metrics and "first_error": a
    one-line description of the first failure, or None. `timeout_s` None or
    <= 0 means no time limit.
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
        first = f"timed out after {timeout_s}s on {n} completions"
        _log_once(fn, f"{first}; rewards set to 0")
        return np.zeros(n, np.float32), {"n_errors": 0, "n_timeouts": n, "n_stuck": n_stuck(), "first_error": first}
    if isinstance(result, BaseException):
        _log_once(fn, f"aborted with {type(result).__name__}; rewards set to 0")
        return np.zeros(n, np.float32), {"n_errors": n, "n_timeouts": 0, "n_stuck": n_stuck(),
                                         "first_error": f"aborted with {_describe(result)}"}
    values, n_err, first = result
    if n_err:
        _log_once(fn, f"failed on {n_err} of {n} completions (first: {first}); those rewards set to 0")
    return values.astype(np.float32), {"n_errors": n_err, "n_timeouts": 0, "n_stuck": n_stuck(), "first_error": first}


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
