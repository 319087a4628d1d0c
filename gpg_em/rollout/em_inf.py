"""EM-INF: entropy minimisation of the logits at decoding time (Agarwal et al. 2025, arXiv 2505.15134).

At every decoding step, starting from the model's float32 logits z (before
temperature), run up to `n_steps` of Adam (learning rate `lr`) on x = z,
minimising per row

    L(x) = H(softmax(x)) + kl_weight * KL(p || softmax(x)),   p = softmax(z),

and stop updating a row as soon as H(softmax(x)) < delta (checked before each
step; a stopped row stays stopped). Temperature / top-p / sampling follow on
the result. Released defaults: lr 0.1, 5 steps, kl_weight 0.001, delta 0.3.

The gradient is written out (q = softmax(x), H = H(q)):
    dH/dx_j  = -q_j (log q_j + H)
    dKL/dx_j =  q_j - p_j
and Adam is hand-written (torch/optax defaults b1 0.9, b2 0.999, eps 1e-8,
bias-corrected with the global step, which is every active row's own step
count because rows never restart). The loop is a `while_loop` that exits
when no row is active: most LLM steps are already below delta, so the
common case costs one entropy evaluation.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class EMInfConfig:
    lr: float = 0.1
    n_steps: int = 5
    kl_weight: float = 0.001
    delta: float = 0.3  # stop threshold on the entropy (nats)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if self.n_steps < 0 or self.lr < 0 or self.kl_weight < 0 or self.delta < 0:
            raise ValueError(f"EMInfConfig fields must be non-negative: {self}")


def _log_softmax_entropy(x_BxV):
    logq = jax.nn.log_softmax(x_BxV, axis=-1)
    q = jnp.exp(logq)
    return logq, q, -jnp.sum(q * logq, axis=-1)


def entropy_of_logits(x_BxV: jnp.ndarray) -> jnp.ndarray:
    """H(softmax(x)) per row, float32 [B]."""
    return _log_softmax_entropy(x_BxV.astype(jnp.float32))[2]


def em_inf_logits(z_BxV: jnp.ndarray, cfg: EMInfConfig) -> jnp.ndarray:
    """The EM-INF-optimised logits [B, V] (float32) of raw logits z (module docstring)."""
    z = z_BxV.astype(jnp.float32)
    if cfg.n_steps == 0:
        return z
    p = jax.nn.softmax(z, axis=-1)
    zeros = jnp.zeros_like(z)

    def cond(carry):
        i, _, _, _, active = carry
        return (i < cfg.n_steps) & jnp.any(active)

    def body(carry):
        i, x, m, v, active = carry
        logq, q, h = _log_softmax_entropy(x)
        active = active & (h >= cfg.delta)
        grad = -q * (logq + h[:, None]) + cfg.kl_weight * (q - p)
        t = (i + 1).astype(jnp.float32)
        m_new = cfg.b1 * m + (1 - cfg.b1) * grad
        v_new = cfg.b2 * v + (1 - cfg.b2) * grad * grad
        step = cfg.lr * (m_new / (1 - cfg.b1 ** t)) / (jnp.sqrt(v_new / (1 - cfg.b2 ** t)) + cfg.eps)
        a = active[:, None]
        return (i + 1, jnp.where(a, x - step, x), jnp.where(a, m_new, m), jnp.where(a, v_new, v), active)

    init = (jnp.int32(0), z, zeros, zeros, jnp.ones(z.shape[:1], bool))
    return jax.lax.while_loop(cond, body, init)[1]


# An Adam step moves a logit by at most lr (1 - b1) / sqrt(1 - b2) (~3.2 lr at the defaults); the fused
# formulation keeps exp's reference at max(z) while the logits can drift at most this far from it.
_MAX_DRIFT = 30.0


def em_inf_logits_fused(z_BxV: jnp.ndarray, cfg: EMInfConfig) -> jnp.ndarray:
    """`em_inf_logits(z, cfg)` with one fused pass over the rows per Adam step (float32 [B, V]).

    With ref = max(z) per row, u = exp(x - ref), S = sum u, T = sum u (x - ref):
        q = u / S,   H = log S - T / S,   log q_j + H = x_j - E_q[x],   E_q[x] = ref + T / S,
    so a step reads x, m, v, u and writes them with the new x's u, S and T, instead of
    re-deriving log-softmax, softmax and the entropy from x (the entropy factor is written as
    x_j - E_q[x], which avoids cancelling log q_j against H). The while_loop exits once no row is
    active. When lr * n_steps could move the logits more than 30 from ref (exp's range), the
    straightforward formulation runs instead.
    """
    z = z_BxV.astype(jnp.float32)
    bound = cfg.lr * cfg.n_steps * max(1.0, (1 - cfg.b1) / (1 - cfg.b2) ** 0.5)
    if cfg.n_steps == 0 or bound > _MAX_DRIFT:
        return em_inf_logits(z, cfg)
    ref = jnp.max(z, axis=-1, keepdims=True)

    def exp_sums(x):
        d = x - ref
        u = jnp.exp(d)
        return u, jnp.sum(u, axis=-1), jnp.sum(u * d, axis=-1)

    u0, s0, t0 = exp_sums(z)
    p = u0 / s0[:, None]

    def cond(carry):
        return (carry[0] < cfg.n_steps) & jnp.any(carry[-1])

    def body(carry):
        i, x, m, v, u, s, t, active = carry
        active = active & (jnp.log(s) - t / s >= cfg.delta)
        q = u / s[:, None]
        grad = q * ((ref[:, 0] + t / s)[:, None] - x) + cfg.kl_weight * (q - p)
        k = (i + 1).astype(jnp.float32)
        m_new = cfg.b1 * m + (1 - cfg.b1) * grad
        v_new = cfg.b2 * v + (1 - cfg.b2) * grad * grad
        x_new = x - cfg.lr * (m_new / (1 - cfg.b1 ** k)) / (jnp.sqrt(v_new / (1 - cfg.b2 ** k)) + cfg.eps)
        a = active[:, None]
        x, m, v = jnp.where(a, x_new, x), jnp.where(a, m_new, m), jnp.where(a, v_new, v)
        return (i + 1, x, m, v, *exp_sums(x), active)

    zeros = jnp.zeros_like(z)
    init = (jnp.int32(0), z, zeros, zeros, u0, s0, t0, jnp.ones(z.shape[:1], bool))
    return jax.lax.while_loop(cond, body, init)[1]
