"""Compiles the native kernels (a source with its headers) into shared libraries once per machine and
registers them with XLA:CPU: `decode_cpu.cc` (the decode step) and `logits_cpu.cc` (EM-INF and adaptive
temperature per row).

The library is built with `-march=native` into a cache folder, `$GPG_EM_KERNEL_CACHE` or
`~/.cache/gpg_em/kernels`, under a name that hashes the sources, the compiler command, jaxlib's
version and this CPU's flags, so a changed source or another machine builds afresh and a stale
library is never loaded. The build writes a temporary file and renames it, so concurrent processes
never load a half-written library.

`GPG_EM_CPU_KERNEL=0` keeps the sampler on its XLA decode step (`gpg_em.rollout.decode_cpu`). The
decode kernel's vectors are AVX-512 or, on a CPU without it, AVX2 + FMA (`simd.h`); without a C++
compiler, or on a CPU with neither, the kernel is unavailable, a warning says why, and the XLA step
runs. The logits kernel needs a C++ compiler and an x86-64 CPU (AVX-512 or AVX2 vectors); without
them, or with `GPG_EM_CPU_LOGITS_KERNEL=0`, EM-INF and adaptive temperature run as XLA
(`gpg_em.rollout.logits_cpu`).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

DECODE_STEP_TARGET = "gpg_em_decode_step"
EM_INF_TARGET = "gpg_em_em_inf"
ADAPTIVE_TEMPERATURE_TARGET = "gpg_em_adaptive_temperature"
_SOURCE = Path(__file__).with_name("decode_cpu.cc")
_LOGITS_SOURCE = Path(__file__).with_name("logits_cpu.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
_LOGITS_FLAGS = _FLAGS + ("-fno-math-errno",)  # lets the vector sqrt vectorise


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _missing_vector_flags(flags: list[str]) -> list[str]:
    """The CPU flags the decode kernel's vectors lack here: none with avx512f or with avx2 and fma
    (`simd.h`), else avx512f and whichever of avx2, fma is absent."""
    if "avx512f" in flags or ("avx2" in flags and "fma" in flags):
        return []
    return ["avx512f", *(f for f in ("avx2", "fma") if f not in flags)]


def _library_path(compiler: str, include: str, source: Path | None = None, flags: tuple = _FLAGS) -> Path:
    """The cached library of `source` (default: the decode kernel's), named by a hash of everything it
    is built from."""
    import jaxlib

    source = source or _SOURCE
    sources = [source, *sorted(source.parent.glob("*.h"))]
    key = hashlib.sha256("\n".join([*(f.read_text() for f in sources), compiler, " ".join(flags), include,
                                    jaxlib.__version__, _cpu_flags()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GPG_EM_KERNEL_CACHE", Path.home() / ".cache" / "gpg_em" / "kernels"))
    return cache / f"{source.stem}-{key}.so"


def _compile(compiler: str, include: str, out: Path, source: Path | None = None, flags: tuple = _FLAGS) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        cmd = [compiler, *flags, f"-I{include}", str(source or _SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unavailable(why: str, what: str = "CPU decode kernel", instead: str = "the sampler uses its XLA decode step"
                 ) -> bool:
    warnings.warn(f"gpg_em {what} unavailable ({why}); {instead}", RuntimeWarning, stacklevel=3)
    return False


@functools.lru_cache(maxsize=None)
def decode_kernel_available() -> bool:
    """True once the kernel is compiled (or found in the cache), loaded and registered for "cpu"."""
    missing = _missing_vector_flags(_cpu_flags().split())
    if missing:
        return _unavailable(f"this CPU has neither AVX-512 nor AVX2 + FMA (no {', '.join(missing)})")
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


@functools.lru_cache(maxsize=None)
def logits_kernel_available() -> bool:
    """True once `logits_cpu.cc` is compiled (or found in the cache), loaded and its two targets registered
    for "cpu"."""
    why = lambda reason: _unavailable(reason, "CPU logits kernel", "EM-INF and adaptive temperature run as XLA")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return why(f"it needs an x86-64 CPU, this is {platform.machine()}")
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return why("no C++ compiler on PATH; set CXX")
    import jax

    include = jax.ffi.include_dir()
    path = _library_path(compiler, include, _LOGITS_SOURCE, _LOGITS_FLAGS)
    try:
        if not path.exists():
            _compile(compiler, include, path, _LOGITS_SOURCE, _LOGITS_FLAGS)
        library = ctypes.cdll.LoadLibrary(str(path))
    except (OSError, RuntimeError) as e:
        return why(str(e))
    jax.ffi.register_ffi_target(EM_INF_TARGET, jax.ffi.pycapsule(library.GpgEmEmInf), platform="cpu")
    jax.ffi.register_ffi_target(ADAPTIVE_TEMPERATURE_TARGET, jax.ffi.pycapsule(library.GpgEmAdaptiveTemperature),
                                platform="cpu")
    return True
