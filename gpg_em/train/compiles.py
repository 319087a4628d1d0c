"""XLA compilations of this process, counted from jax.monitoring events, for the per-step records.

Every executable jax builds passes through one backend compile, which jax
reports as the duration event BACKEND_COMPILE_EVENT (jax 0.10:
`jax._src.dispatch.BACKEND_COMPILE_EVENT`; a test holds the two equal). An
executable loaded from the persistent compilation cache (`compilation_cache_dir`)
is reported by the same event, with its load time, and also as CACHE_HIT_EVENT.
One listener per process, installed on import, keeps running totals; a caller
takes the difference of two `totals()`:

    before = compiles.totals()
    ...  # a train step
    record.update(compiles.since(before))  # compiles, compile_seconds, compile_cache_hits, compiles_ahead, ...

Compiles in a thread inside `background()` (the loop's compile-ahead thread,
`gpg_em.train.ahead`) are counted apart, as compiles_ahead /
compile_ahead_seconds (persistent-cache loads included): they do not hold up
a step, so `compiles` stays the compiles a step waited for in its own thread.
"""
from __future__ import annotations

import contextlib
import threading

import jax.monitoring

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_lock = threading.Lock()
_totals = {"compiles": 0, "compile_seconds": 0.0, "compile_cache_hits": 0, "compiles_ahead": 0,
           "compile_ahead_seconds": 0.0}
_thread = threading.local()  # .background: this thread compiles ahead


def _in_background() -> bool:
    return getattr(_thread, "background", False)


@contextlib.contextmanager
def background():
    """Compiles in this thread, within the context, count as compiles_ahead / compile_ahead_seconds."""
    before, _thread.background = _in_background(), True
    try:
        yield
    finally:
        _thread.background = before


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == BACKEND_COMPILE_EVENT:
        count, seconds = ("compiles_ahead", "compile_ahead_seconds") if _in_background() else (
            "compiles", "compile_seconds")
        with _lock:
            _totals[count] += 1
            _totals[seconds] += float(duration)


def _on_event(event: str, **kwargs) -> None:
    if event == CACHE_HIT_EVENT and not _in_background():  # a background load counts in compiles_ahead
        with _lock:
            _totals["compile_cache_hits"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def totals() -> dict:
    """Backend compilations since the process started: compiles (count, persistent-cache loads included),
    compile_seconds (their summed durations), compile_cache_hits (of them, loads from the persistent cache),
    all outside `background()`; compiles_ahead / compile_ahead_seconds: those within it."""
    with _lock:
        return dict(_totals)


def since(before: dict) -> dict:
    """`totals()` now minus `before`."""
    now = totals()
    return {k: now[k] - before[k] for k in now}
