"""Adaptive temperature, the EM-INF paper's baseline (Agarwal et al. 2025, arXiv 2505.15134).

Per row and step, the largest tau in the bracket [tau_min, 1] with

    H(softmax(z / tau)) <= max(alpha * H(softmax(z)), delta),

and the logits become z / tau. H(softmax(z / tau)) is non-decreasing in tau
(d H / d tau = Var_p(z) / tau^3 >= 0), so the feasible set is an interval
[tau_min, tau*] and bisection finds tau*. Bisection runs in log tau for
`n_iters` iterations (bracket ratio 1e3 -> relative precision
1e3^(2^-n_iters), 1 + 1e-5 for 20) and returns the feasible end.

Bracket: the upper end is 1 (this baseline only sharpens: a row already at
or below delta keeps tau = 1). The lower end tau_min = 1e-3 makes any logit
gap >= 0.01 a factor e^10 in probability; a row infeasible even there (ties
at the top) gets tau_min. Paper: alpha in (0.4, 0.6).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from gpg_em.rollout.em_inf import entropy_of_logits


@dataclasses.dataclass(frozen=True)
class AdaptiveTemperatureConfig:
    alpha: float = 0.5
    delta: float = 0.3
    tau_min: float = 1e-3
    n_iters: int = 20

    def __post_init__(self):
        if not 0 < self.alpha <= 1 or self.delta < 0 or not 0 < self.tau_min < 1 or self.n_iters < 1:
            raise ValueError(f"invalid AdaptiveTemperatureConfig: {self}")


def adaptive_tau(z_BxV: jnp.ndarray, cfg: AdaptiveTemperatureConfig) -> jnp.ndarray:
    """tau [B] (float32): the largest tau in [tau_min, 1] meeting the entropy target (module docstring)."""
    z = z_BxV.astype(jnp.float32)
    h0 = entropy_of_logits(z)
    target = jnp.maximum(cfg.alpha * h0, cfg.delta)
    ok_at_one = h0 <= target
    lo = jnp.full(h0.shape, math.log(cfg.tau_min), jnp.float32)  # feasible end (or tau_min)
    hi = jnp.zeros_like(lo)  # log 1: infeasible end unless ok_at_one

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        feasible = entropy_of_logits(z / jnp.exp(mid)[:, None]) <= target
        return jnp.where(feasible, mid, lo), jnp.where(feasible, hi, mid)

    lo, _ = jax.lax.fori_loop(0, cfg.n_iters, body, (lo, hi))
    return jnp.where(ok_at_one, 1.0, jnp.exp(lo))


def adaptive_temperature_logits(z_BxV: jnp.ndarray, cfg: AdaptiveTemperatureConfig) -> jnp.ndarray:
    """z / tau (float32), tau from `adaptive_tau`."""
    return z_BxV.astype(jnp.float32) / adaptive_tau(z_BxV, cfg)[:, None]
