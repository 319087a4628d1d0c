"""Native kernels: C++ sources compiled on first use for the machine that runs them.

`decode_cpu.cc` is the XLA:CPU decode step (see `gpg_em.rollout.decode_cpu`); `logits_cpu.cc` runs
EM-INF and adaptive temperature per row (see `gpg_em.rollout.logits_cpu`).
"""
from gpg_em.kernels.build import (ADAPTIVE_TEMPERATURE_TARGET, DECODE_STEP_TARGET, EM_INF_TARGET,
                                  decode_kernel_available, logits_kernel_available)

__all__ = ["ADAPTIVE_TEMPERATURE_TARGET", "DECODE_STEP_TARGET", "EM_INF_TARGET", "decode_kernel_available",
           "logits_kernel_available"]
