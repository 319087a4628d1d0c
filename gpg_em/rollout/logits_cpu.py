"""EM-INF and adaptive temperature on CPU as native calls: `gpg_em/kernels/logits_cpu.cc` through `jax.ffi`.

Same mathematics as `em_inf.em_inf_logits` and `adaptive_temperature.adaptive_tau` (the tests hold
them equal to float tolerance, and the sampler's tokens equal for fixed seeds); the work is done per
row with the row in cache: each Adam step is one pass over the row, rows already below delta stop
after one pass, and tau comes from a safeguarded Newton iteration to the bisection's bracket width
(see the source's header). The [B, V] logits are updated in place (the call aliases its input).

Used by the sampler (`sampler.modify_logits`) when `use_logits_kernel()`: the default backend is CPU
with a single device (a custom call is not split by the SPMD partitioner, so meshes keep the XLA
formulation), the kernel builds here (`gpg_em.kernels`) and `GPG_EM_CPU_LOGITS_KERNEL` is not "0".
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from gpg_em.kernels import ADAPTIVE_TEMPERATURE_TARGET, EM_INF_TARGET, logits_kernel_available
from gpg_em.rollout.adaptive_temperature import AdaptiveTemperatureConfig
from gpg_em.rollout.em_inf import EMInfConfig


def use_logits_kernel() -> bool:
    """Whether the sampler runs EM-INF / adaptive temperature natively (module docstring)."""
    return (os.environ.get("GPG_EM_CPU_LOGITS_KERNEL", "1") != "0" and jax.default_backend() == "cpu"
            and jax.device_count() == 1 and logits_kernel_available())


def _require():
    if not logits_kernel_available():  # (also registers the FFI targets in this process)
        raise RuntimeError("the CPU logits kernel is unavailable here (see the warning); use "
                           "em_inf.em_inf_logits / adaptive_temperature.adaptive_temperature_logits instead")


def em_inf_logits_cpu(z_BxV: jnp.ndarray, cfg: EMInfConfig) -> jnp.ndarray:
    """`em_inf.em_inf_logits(z, cfg)` (float32 [B, V]) computed by the native kernel."""
    _require()
    z = z_BxV.astype(jnp.float32)
    call = jax.ffi.ffi_call(EM_INF_TARGET, jax.ShapeDtypeStruct(z.shape, jnp.float32), input_output_aliases={0: 0})
    return call(z, lr=np.float32(cfg.lr), n_steps=np.int64(cfg.n_steps), kl_weight=np.float32(cfg.kl_weight),
                delta=np.float32(cfg.delta), b1=np.float32(cfg.b1), b2=np.float32(cfg.b2), eps=np.float32(cfg.eps))


def adaptive_temperature_cpu(z_BxV: jnp.ndarray, cfg: AdaptiveTemperatureConfig):
    """(z / tau [B, V], tau [B]) float32, tau as `adaptive_temperature.adaptive_tau`, by the native kernel."""
    _require()
    z = z_BxV.astype(jnp.float32)
    call = jax.ffi.ffi_call(ADAPTIVE_TEMPERATURE_TARGET, (jax.ShapeDtypeStruct(z.shape, jnp.float32),
                                                          jax.ShapeDtypeStruct(z.shape[:1], jnp.float32)),
                            input_output_aliases={0: 0})
    return call(z, alpha=np.float32(cfg.alpha), delta=np.float32(cfg.delta), tau_min=np.float32(cfg.tau_min),
                n_iters=np.int64(cfg.n_iters))
