"""Host allocator settings for a process that frees large buffers every step (glibc only).

XLA on the CPU gets its buffers from malloc. glibc serves a request of at
least M_MMAP_THRESHOLD bytes with its own mmap, returned to the system on
free; but after each such free it raises the threshold to that size (up to
32 MiB on 64-bit), so later buffers of that size come from the heap, and
memory freed there mostly stays in the process (mallopt(3), "M_MMAP_THRESHOLD").
A step's activations, gradients and sampler state are freed and allocated
again every step, so the resident set grows to the sum of several phases'
peaks. A fixed threshold turns the adjustment off: buffers of at least that
size go back to the system when XLA frees them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # <malloc.h>
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax.monitoring: an XLA compile finished


@functools.cache
def _libc():
    """The C library, loaded once (find_library runs ldconfig); None without glibc's mallopt/malloc_trim."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def set_mmap_threshold(nbytes: int) -> bool:
    """mallopt(M_MMAP_THRESHOLD, nbytes); False where there is no glibc (or nbytes <= 0: left as is)."""
    libc = _libc()
    if libc is None or nbytes <= 0:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)))


def trim() -> bool:
    """malloc_trim(0): returns the free pages of every malloc arena to the system (glibc only).

    Called between the phases of a step (after sampling, after the update):
    what a phase freed below the threshold, or in the middle of an arena,
    does not count against the next phase's peak. True if memory was released.
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


_trim_after = {"min_seconds": None}  # the compile listener's threshold (None: not registered)


def _on_compile(event: str, seconds: float, **_) -> None:
    if event == COMPILE_EVENT and _trim_after["min_seconds"] is not None and seconds >= _trim_after["min_seconds"]:
        trim()


def trim_after_compiles(min_seconds: float = 1.0) -> None:
    """Trims after every XLA compile that took at least `min_seconds` (idempotent; later calls set the threshold).

    Why: compiling the update step leaves ~0.9 GiB of freed heap in the
    process (LLVM's working memory; measured for SmolLM2's update, 3.3 ->
    2.45 GiB resident after a trim). jax runs the new executable right after
    compiling it, so without a trim there its temporaries (1.6 GiB) come on
    top of that heap: the step's peak is the compile's leftovers plus the
    execution's. The listener runs in the compiling thread after the compile
    and before the execution.
    """
    import jax.monitoring
    if _trim_after["min_seconds"] is None:
        jax.monitoring.register_event_duration_secs_listener(_on_compile)
    _trim_after["min_seconds"] = float(min_seconds)
