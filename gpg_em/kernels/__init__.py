"""Native kernels: C++ sources compiled on first use for the machine that runs them.

`decode_cpu.cc` is the XLA:CPU decode step (see `gpg_em.rollout.decode_cpu`).
"""
from gpg_em.kernels.build import DECODE_STEP_TARGET, decode_kernel_available

__all__ = ["DECODE_STEP_TARGET", "decode_kernel_available"]
