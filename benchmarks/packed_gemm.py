"""The decode kernel's packed GEMM alone, for choosing its register tile: builds benchmarks/packed_gemm.cc
once per tile shape (`-march=native`, -DGPG_EM_GEMM_ROWS=R -DGPG_EM_GEMM_VECS=V) and prints the median
time of one SmolLM2-135M decode step's products (30 layers + head) at M rows: the fastest of
`--reps` and the median, and GFLOP/s at the fastest.

    python benchmarks/packed_gemm.py [--rows 32] [--reps 7] [--rounds 1] [--shapes 6x1,4x1,2x3,8x3]

Without --shapes it times the kernel's own choice for this CPU. The shapes run in turn, `--rounds`
times (the machine may be shared: compare the fastest times over several rounds). The kernel's
thread count applies (GPG_EM_CPU_THREADS, default all cores this process may use).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parent / "gpg_em" / "kernels"


def build(out: Path, shape: str | None) -> Path:
    """Compiles the driver for one tile shape "RxV" (None: the header's default)."""
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    defines = []
    if shape:
        rows, vecs = shape.split("x")
        defines = [f"-DGPG_EM_GEMM_ROWS={int(rows)}", f"-DGPG_EM_GEMM_VECS={int(vecs)}"]
    exe = out / f"packed_gemm_{shape or 'default'}"
    subprocess.run([compiler, "-O3", "-march=native", "-std=c++17", "-pthread", *defines, f"-I{KERNELS}",
                    str(HERE / "packed_gemm.cc"), "-o", str(exe)], check=True)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=32, help="M: rows of x (decode batch)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=1, help="times each shape runs, in turn")
    ap.add_argument("--shapes", default="", help="comma-separated RxV tiles (rows x 16-float vectors)")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        exes = [build(Path(tmp), s) for s in (args.shapes.split(",") if args.shapes else [None])]
        for _ in range(args.rounds):
            for exe in exes:
                subprocess.run([str(exe), str(args.rows), str(args.reps)], check=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
