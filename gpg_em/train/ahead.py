"""Compile ahead: the update step's programs for the packed widths a run has not met yet, compiled in a
background thread while the run samples, and called when a step meets their shape.

A program here is a jitted function of (first, batch, ...) whose batch dict
carries `pack_index` [lanes, L]. After a step runs one at a shape the loop has
not seen, `ahead.run` queues the same call at every other rung L' of the
ladder (`shapes.ladder`), nearest rungs first (by ladder position, the wider
one first on a tie): `jitted.lower(*structs).compile()` on ShapeDtypeStructs
with the met arrays' shapes, dtypes and (committed arrays') shardings, which
are the jit's own in_shardings, with its donation. `lower().compile()` does not
fill jit's cache, so the executables are kept here, keyed by
(name, every argument's shape and dtype), and `run` calls the stored one when a
step meets its shape: an executable being compiled is waited for, one still
queued is dropped and the jit compiles it in the step.

One worker thread compiles, inside `compiles.background()`: its compiles show
in the step records as compiles_ahead, not compiles. A failed compile prints
one message and turns compiling ahead off (those shapes compile when met);
`close()` drops the queue and waits only for the compile in progress.
Executables hold no run state: checkpoints and resume do not see them.
"""
from __future__ import annotations

import concurrent.futures
import sys
import threading
from typing import Any, Callable

import jax

from gpg_em.train import compiles


def enabled(setting: Any, backend: str) -> bool:
    """`train.compile_ahead`: "auto" is on for non-CPU backends (the host idles while the device samples;
    on a CPU the compiles would compete with sampling), "true"/"false" (or a bool) as said."""
    text = str(setting).strip().lower()
    if text == "auto":
        return backend != "cpu"
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"config key train.compile_ahead: {setting!r} is not auto, true or false")


def signature(args) -> tuple:
    """(tree structure, each leaf's shape and dtype): what selects a compiled program."""
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


def struct(x) -> jax.ShapeDtypeStruct:
    """x's shape and dtype, and its sharding when committed (an uncommitted array takes the jit's)."""
    sharding = x.sharding if getattr(x, "_committed", False) else None
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def at_width(structs, width: int):
    """`structs` (first, batch, ...) with batch's pack_index [lanes, width]."""
    first, batch, *rest = structs
    index = batch["pack_index"]
    batch = {**batch, "pack_index": jax.ShapeDtypeStruct((index.shape[0], width), index.dtype,
                                                         sharding=index.sharding)}
    return (first, batch, *rest)


def nearest_first(rungs: list[int], width: int) -> list[int]:
    """The other rungs, by distance from `width`'s position in the ladder, the wider first on a tie."""
    at = rungs.index(width) if width in rungs else min(range(len(rungs)), key=lambda i: abs(rungs[i] - width))
    return sorted((r for r in rungs if r != width), key=lambda r: (abs(rungs.index(r) - at), -r))


def _deleted(args) -> bool:
    return any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(args))


class CompileAhead:
    """Stored executables for the ladder's other widths (module docstring); off: `run` is `fallback(*args)`."""

    def __init__(self, rungs: list[int] | None, on: bool, log: Callable[[str], None] | None = None):
        self.rungs = rungs or []
        self.on = bool(on) and len(self.rungs) > 1
        self.log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._met: set = set()  # keys the jit compiled in a step
        self._ahead: dict = {}  # key -> Future of a Compiled
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "gpg-em-compile-ahead") if self.on else None

    def run(self, name: str, fallback: Callable, args: tuple, lower: Callable | None = None, *,
            donated: bool = False):
        """`fallback(*args)` (the jit), or the stored executable for args' shapes; then, for a shape met for the
        first time, queues `lower(*structs).compile()` at the ladder's other widths."""
        if not self.on or "pack_index" not in args[1]:
            return fallback(*args)
        key = (name, signature(args))
        exe = self._take(key)
        if exe is not None:
            try:
                return exe(*args)
            except Exception as e:  # a mismatch of the stored executable and the arguments: the jit runs
                if donated and _deleted(args):
                    raise
                self._fail(f"calling the {name} program compiled ahead failed ({type(e).__name__}: {e})")
                return fallback(*args)
        out = fallback(*args)
        if key not in self._met:
            self._met.add(key)
            if lower is not None:
                self._queue(name, lower, args)
        return out

    def _take(self, key):
        """The executable compiled ahead for key (waiting for it when in progress); None when there is none."""
        with self._lock:
            future = self._ahead.get(key)
        if future is None or not self.on:
            return None
        if future.cancel():  # still queued: the step compiles it itself
            with self._lock:
                self._ahead.pop(key, None)
            return None
        try:
            return future.result()
        except Exception:  # reported by _done; the jit compiles it
            with self._lock:
                self._ahead.pop(key, None)
            return None

    def _queue(self, name: str, lower: Callable, args: tuple) -> None:
        structs = jax.tree.map(struct, args)
        width = args[1]["pack_index"].shape[1]
        for rung in nearest_first(self.rungs, width):
            shaped = at_width(structs, rung)
            key = (name, signature(shaped))
            with self._lock:
                if not self.on or key in self._met or key in self._ahead:
                    continue
                try:
                    future = self._pool.submit(self._compile, lower, shaped)
                except RuntimeError:  # the pool is shut down
                    return
                self._ahead[key] = future
            future.add_done_callback(lambda f, n=name, w=rung: self._done(f, n, w))

    @staticmethod
    def _compile(lower: Callable, structs: tuple):
        with compiles.background():
            return lower(*structs).compile()

    def _done(self, future, name: str, width: int) -> None:
        if future.cancelled() or future.exception() is None:
            return
        e = future.exception()
        self._fail(f"compiling the {name} program ahead for packed width {width} failed "
                   f"({type(e).__name__}: {e})")

    def _fail(self, why: str) -> None:
        with self._lock:
            was_on, self.on = self.on, False
        if was_on:
            self.log(f"gpg-em: compile ahead: {why}; it is off for the rest of the run (new packed widths "
                     "compile when a step meets them)")
            self._pool.shutdown(wait=False, cancel_futures=True)

    def wait(self) -> None:
        """Until every queued compile has finished (for tests)."""
        with self._lock:
            futures = list(self._ahead.values())
        concurrent.futures.wait(futures)

    def close(self) -> None:
        """Drops the queued compiles; waits for the one in progress (bounded: one compile)."""
        with self._lock:
            self.on = False
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
