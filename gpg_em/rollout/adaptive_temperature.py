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


def _tempered(d_BxV, beta_B):
    """(H(softmax(beta d)), dH / d log tau = beta^2 Var_q(d)) per row, d = z - max(z)."""
    e = jnp.exp(beta_B[:, None] * d_BxV)
    ed = e * d_BxV
    s, a, c = jnp.sum(e, -1), jnp.sum(ed, -1), jnp.sum(ed * d_BxV, -1)
    mean = a / s
    return jnp.log(s) - beta_B * mean, beta_B * beta_B * jnp.maximum(c / s - mean * mean, 0.)


def _next_probe(lo, hi, f_lo, d_lo, f_hi, d_hi, tol, bisect):
    """Per row, the next point of the bracket [lo, hi] (f(lo) <= 0 < f(hi); f_lo NaN while lo is
    unevaluated): Newton's root from the end with the smaller |f|, else the secant's; moved tol / 2 away
    from the nearer end (so the bracket closes from both sides); the midpoint when `bisect` or outside."""
    from_lo = jnp.abs(f_lo) < jnp.abs(f_hi)
    r = jnp.where(from_lo, lo - f_lo / d_lo, hi - f_hi / d_hi)
    r = jnp.where(~((r > lo) & (r < hi)) & ~jnp.isnan(f_lo), lo - f_lo * (hi - lo) / (f_hi - f_lo), r)
    probe = jnp.where(r - lo < hi - r, r + 0.5 * tol, r - 0.5 * tol)
    return jnp.where(bisect | ~((probe > lo) & (probe < hi)), 0.5 * (lo + hi), probe)


def adaptive_tau_newton(z_BxV: jnp.ndarray, cfg: AdaptiveTemperatureConfig) -> jnp.ndarray:
    """`adaptive_tau(z, cfg)` to the bisection's precision in fewer passes (float32 [B]).

    Each evaluation at beta = 1 / tau also gives dH / d log tau = beta^2 Var_q(z) (q = softmax(beta z)),
    so a safeguarded Newton iteration on f(s) = H(z / e^s) - target (`_next_probe`; three probes in a
    row that do not halve a row's bracket are followed by a bisection) shrinks the bracket
    [log tau_min, 0] to the bisection's final width log(1 / tau_min) / 2^n_iters, ~7 passes against
    20 on LLM-like rows. Returns the feasible end, as `adaptive_tau`; the loop exits when every row's
    bracket is that narrow (gpg_em/kernels/logits_cpu.cc does the same per row).
    """
    z = z_BxV.astype(jnp.float32)
    d = z - jnp.max(z, axis=-1, keepdims=True)
    h0, slope0 = _tempered(d, jnp.ones(z.shape[:1], jnp.float32))
    target = jnp.maximum(cfg.alpha * h0, cfg.delta)
    ok_at_one = h0 <= target
    tol = math.log(1 / cfg.tau_min) / 2.0 ** min(cfg.n_iters, 40)
    lo = jnp.where(ok_at_one, 0., math.log(cfg.tau_min)).astype(jnp.float32)
    nan = jnp.full_like(lo, jnp.nan)

    def cond(carry):
        it, lo, hi = carry[:3]
        return (it < 4 * cfg.n_iters + 8) & jnp.any(hi - lo > tol)

    def body(carry):
        it, lo, hi, f_lo, d_lo, f_hi, d_hi, slow = carry
        probe = _next_probe(lo, hi, f_lo, d_lo, f_hi, d_hi, tol, slow >= 3)
        h, slope = _tempered(d, jnp.exp(-probe))
        f = h - target
        open_ = hi - lo > tol  # rows already closed keep their bracket
        down, up = open_ & (f <= 0), open_ & (f > 0)
        pick = lambda cond, new, old: jnp.where(cond, new, old)  # noqa: E731
        lo_new, hi_new = pick(down, probe, lo), pick(up, probe, hi)
        slow = jnp.where(hi_new - lo_new > 0.5 * (hi - lo), slow + 1, 0)
        return (it + 1, lo_new, hi_new, pick(down, f, f_lo), pick(down, slope, d_lo), pick(up, f, f_hi),
                pick(up, slope, d_hi), slow)

    init = (jnp.int32(0), lo, jnp.zeros_like(lo), nan, nan, h0 - target, slope0, jnp.zeros(lo.shape, jnp.int32))
    lo = jax.lax.while_loop(cond, body, init)[1]
    return jnp.where(ok_at_one, 1.0, jnp.exp(lo))
