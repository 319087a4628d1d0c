"""Compiles `decode_cpu.cc` (with its headers) into a shared library once per machine and registers it
with XLA:CPU.

The library is built with `-march=native` (the packed GEMM uses AVX-512) into a cache folder,
`$GPG_EM_KERNEL_CACHE` or `~/.cache/gpg_em/kernels`, under a name that hashes the sources, the
compiler command, jaxlib's version and this CPU's flags, so a changed source or another machine
builds afresh and a stale library is never loaded. The build writes a temporary file and renames
it, so concurrent processes never load a half-written library.

`GPG_EM_CPU_KERNEL=0` keeps the sampler on its XLA decode step (`gpg_em.rollout.decode_cpu`).
Without a C++ compiler or AVX-512 the kernel is unavailable, a warning says why, and the XLA
step runs.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

DECODE_STEP_TARGET = "gpg_em_decode_step"
_SOURCE = Path(__file__).with_name("decode_cpu.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _library_path(compiler: str, include: str) -> Path:
    import jaxlib

    sources = [_SOURCE, *sorted(_SOURCE.parent.glob("*.h"))]
    key = hashlib.sha256("\n".join([*(f.read_text() for f in sources), compiler, " ".join(_FLAGS), include,
                                    jaxlib.__version__, _cpu_flags()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GPG_EM_KERNEL_CACHE", Path.home() / ".cache" / "gpg_em" / "kernels"))
    return cache / f"decode_cpu-{key}.so"


def _compile(compiler: str, include: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [compiler, *_FLAGS, f"-I{include}", str(_SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unavailable(why: str) -> bool:
    warnings.warn(f"gpg_em CPU decode kernel unavailable ({why}); the sampler uses its XLA decode step",
                  RuntimeWarning, stacklevel=3)
    return False


@functools.lru_cache(maxsize=None)
def decode_kernel_available() -> bool:
    """True once the kernel is compiled (or found in the cache), loaded and registered for "cpu"."""
    if "avx512f" not in _cpu_flags():
        return _unavailable("this CPU has no AVX-512")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return _unavailable("no C++ compiler on PATH; set CXX")
    import jax

    include = jax.ffi.include_dir()
    path = _library_path(compiler, include)
    try:
        if not path.exists():
            _compile(compiler, include, path)
        library = ctypes.cdll.LoadLibrary(str(path))
    except (OSError, RuntimeError) as e:
        return _unavailable(str(e))
    jax.ffi.register_ffi_target(DECODE_STEP_TARGET, jax.ffi.pycapsule(library.GpgEmDecodeStep), platform="cpu")
    return True
