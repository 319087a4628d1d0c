"""gpg_em.train.host_memory: with a fixed mmap threshold, freed multi-MiB buffers leave the resident set."""
import os
import subprocess
import sys
import time

import pytest

from gpg_em.train.host_memory import set_mmap_threshold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 16 MiB free raises glibc's dynamic threshold to 16 MiB; then 64 blocks of 4 MiB come from the
# heap, and freeing all but the last (which pins the heap top) leaves ~252 MiB resident, unless the
# threshold was fixed at 1 MiB first, in which case each block is its own mapping, unmapped on free.
_PROBE = """
import sys
import numpy as np
from gpg_em.train.host_memory import set_mmap_threshold
if sys.argv[1] == "fixed":
    assert set_mmap_threshold(1 << 20)
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20
big = np.ones((16 << 20) // 8)
del big
base = rss_mib()
blocks = [np.ones((4 << 20) // 8) for _ in range(64)]
del blocks[:-1]
print(rss_mib() - base)
"""


def _retained_mib(mode: str) -> float:
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_threshold_returns_freed_buffers():
    default, fixed = _retained_mib("default"), _retained_mib("fixed")
    assert default > 200, default  # the 252 MiB of freed blocks stay resident under glibc's default
    assert fixed < 20, fixed  # only the last 4 MiB block is still held


def test_zero_leaves_the_allocator_alone():
    assert set_mmap_threshold(0) is False


def test_a_compile_is_followed_by_a_trim_before_the_executable_runs(monkeypatch):
    """The listener trims when a compile ends: after a new jit compile, before its result exists."""
    import jax
    import jax.numpy as jnp
    from gpg_em.train import host_memory
    events = []
    monkeypatch.setattr(host_memory, "trim", lambda: events.append("trim") or True)
    host_memory.trim_after_compiles(min_seconds=0.0)
    try:
        salt = float(os.getpid() * 1000 + time.time_ns() % 1000)  # new HLO: no persistent-cache hit
        f = jax.jit(lambda x: jnp.sin(x) * salt + x.shape[0])
        f(jnp.ones(17)).block_until_ready()
        events.append("ran")
        assert events[0] == "trim" and events[-1] == "ran"
        before = len(events)
        f(jnp.ones(17)).block_until_ready()  # cached: no compile, no trim
        assert len(events) == before
        host_memory.trim_after_compiles(min_seconds=1e9)  # a threshold no compile reaches
        jax.jit(lambda x: jnp.cos(x) - salt)(jnp.ones(19)).block_until_ready()
        assert len(events) == before
    finally:
        host_memory.trim_after_compiles(min_seconds=1.0)
