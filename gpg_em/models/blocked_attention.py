"""Packed completion attention in query blocks with an online softmax: memory O(Cq * (P + Cq)) a step.

The same attention as `shared_prefix._completion_attention` (a completion
slot attends to its group's valid prompt slots and to the earlier tokens of
its own row), computed for one block of Cq query slots at a time instead of
for blocks of N = window slots against a window of 2N. Rows are contiguous
and at most N long, so the earlier tokens of a row in query block
[s, s + Cq) lie in the slots [s - N, s + Cq): the nk = ceil(N / Cq) + 1
key blocks of Cq slots ending with the query block. Per query block:

  prompt:  m_0 = max_j s_j,  l_0 = sum_j exp(s_j - m_0),  a_0 = sum_j exp(s_j - m_0) v_j
  key block i (scores s_j, j in the block, masked ones at -1e30):
           m_i = max(m_{i-1}, max_j s_j),  c = exp(m_{i-1} - m_i)
           l_i = c l_{i-1} + sum_j exp(s_j - m_i),  a_i = c a_{i-1} + sum_j exp(s_j - m_i) v_j
  output:  a_nk / l_nk  = softmax over prompt and row keys, times v

with m, l, a in float32. The running maximum only keeps exp in range (the
output does not depend on it), so it carries no gradient. Each query
block's body and each key block's step are `jax.checkpoint`-ed: the
backward pass recomputes one query block's scores at a time, keeping only
its key steps' (m, l, a), never every block's scores.

Each query block reads its prompts per sub-block of c = gcd(Cq, Cp) slots
(Cp: the packing's prompt block, `shared_prefix.prompt_block`), each
sub-block inside one prompt block, so each reads one group's prompt keys
and values, gathered from its lane's prompts.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_NEG = -1e30


def _pad_slots(x_mxLx, before: int, after: int, fill):
    """Pad the slot axis (1) of [m, L, ...] with `fill`."""
    widths = [(0, 0), (before, after)] + [(0, 0)] * (x_mxLx.ndim - 2)
    return jnp.pad(x_mxLx, widths, constant_values=fill)


def _lane_gather(x_mxnx, index_mxb):
    """[m, n/m, ...] per lane-local group -> [m, b, ...]: the entry of group index[k, j] of lane k."""
    return jax.vmap(lambda xs, i: xs[i])(x_mxnx, index_mxb)


def _prompt_start(q_mxKxCxgxD, k_p, v_p, pmask_mxbxP, dt):
    """(max, normaliser, accumulator) over the prompts, each [m, K, Cq, g, 1 or Dh] float32.

    q's Cq slots split into b sub-blocks; k_p, v_p [m, b, P, K, Dh] and pmask [m, b, P] are each
    sub-block's group prompt."""
    m, K, C, g, Dh = q_mxKxCxgxD.shape
    b = k_p.shape[1]
    q = q_mxKxCxgxD.reshape(m, K, b, C // b, g, Dh)
    s = jnp.einsum("mkbtgd,mbskd->mkbtgs", q, k_p, preferred_element_type=jnp.float32) * Dh ** -0.5
    s = jnp.where(pmask_mxbxP[:, None, :, None, None, :], s, _NEG)
    top = jax.lax.stop_gradient(s.max(-1, keepdims=True))
    e = jnp.exp(s - top)
    acc = jnp.einsum("mkbtgs,mbskd->mkbtgd", e.astype(dt), v_p.astype(dt), preferred_element_type=jnp.float32)
    flat = lambda x: x.reshape(m, K, C, g, x.shape[-1])
    return flat(top), flat(e.sum(-1, keepdims=True)), flat(acc)


def _key_step(carry, q_mxKxCxgxD, k_mxCxKxD, v_mxCxKxD, allowed_mxCxC, dt):
    """One key block's online-softmax update of (max, normaliser, accumulator) (module docstring)."""
    top, total, acc = carry
    s = jnp.einsum("mktgd,mskd->mktgs", q_mxKxCxgxD, k_mxCxKxD,
                   preferred_element_type=jnp.float32) * q_mxKxCxgxD.shape[-1] ** -0.5
    s = jnp.where(allowed_mxCxC[:, None, :, None, :], s, _NEG)
    new = jax.lax.stop_gradient(jnp.maximum(top, s.max(-1, keepdims=True)))
    e, rescale = jnp.exp(s - new), jnp.exp(top - new)
    pv = jnp.einsum("mktgs,mskd->mktgd", e.astype(dt), v_mxCxKxD.astype(dt), preferred_element_type=jnp.float32)
    return new, total * rescale + e.sum(-1, keepdims=True), acc * rescale + pv


def _query_block(b, q_mxKxCxgxD, rows_mxC, groups_mxb, keys, prompts, *, window: int, dt):
    """Output [m, Cq, K, g, Dh] of query block b: its prompts, then the nk key blocks ending with it.

    keys = (k, v [m, (nk - 1) * Cq + L, K, Dh], rows [m, (nk - 1) * Cq + L]): the packed slots after
    nk - 1 empty blocks (row -1), so key block b - nk + 1 + i starts at padded slot (b + i) * Cq."""
    k_c, v_c, rows_k = keys
    k_p, v_p, pmask = prompts
    C = rows_mxC.shape[1]
    nk = -(-window // C) + 1
    carry = _prompt_start(q_mxKxCxgxD, _lane_gather(k_p, groups_mxb), _lane_gather(v_p, groups_mxb),
                          _lane_gather(pmask, groups_mxb), dt)
    t = b * C + jnp.arange(C)

    @jax.checkpoint
    def step(carry, i):
        start = (b + i) * C
        window_rows = jax.lax.dynamic_slice_in_dim(rows_k, start, C, axis=1)
        u = start - (nk - 1) * C + jnp.arange(C)
        allowed = ((rows_mxC[:, :, None] == window_rows[:, None, :]) & (window_rows >= 0)[:, None, :]
                   & (u[None, :] <= t[:, None])[None])
        kv = [jax.lax.dynamic_slice_in_dim(x, start, C, axis=1) for x in (k_c, v_c)]
        return _key_step(carry, q_mxKxCxgxD, *kv, allowed, dt), None

    (_, total, acc), _ = jax.lax.scan(step, carry, jnp.arange(nk))
    return jnp.moveaxis((acc / total).astype(dt), 2, 1)


def blocked_completion_attention(q, k_p, v_p, k_c, v_c, prompt_mask, row_mxL, group_mxL, *, window: int,
                                 query_block: int, prompt_block: int, dt):
    """Packed completion queries q [m, L, K, g, Dh] over their group's prompt and their own row.

    k_p, v_p [m, n/m, P, K, Dh] and prompt_mask [m, n/m, P]: the prompts of
    each lane's groups; k_c, v_c [m, L, K, Dh] the packed completion keys and
    values; row [m, L] each slot's lane row (-1: empty), group [m, L] its
    lane-local group. A row is contiguous and at most `window` slots long,
    and each aligned block of `prompt_block` slots holds one group's tokens.
    Query blocks of `query_block` slots in a `lax.scan` (L padded up to a
    multiple of it); returns [m, L, K, g, Dh].
    """
    m, L, K, g, Dh = q.shape
    C = query_block
    c, nq, nk = math.gcd(C, prompt_block), -(-L // C), -(-window // C) + 1
    pad = nq * C - L
    q_b = jnp.moveaxis(_pad_slots(q, 0, pad, 0).reshape(m, nq, C, K, g, Dh), (1, 2), (0, 3))  # [nq,m,K,C,g,Dh]
    rows = _pad_slots(row_mxL, 0, pad, -1)
    groups = _pad_slots(group_mxL, 0, pad, 0).reshape(m, nq, C // c, c).max(-1)
    keys = (_pad_slots(k_c, (nk - 1) * C, pad, 0), _pad_slots(v_c, (nk - 1) * C, pad, 0),
            _pad_slots(rows, (nk - 1) * C, 0, -1))
    body = jax.checkpoint(lambda b, q_, r_, g_: _query_block(b, q_, r_, g_, keys, (k_p, v_p, prompt_mask),
                                                             window=window, dt=dt))
    _, out = jax.lax.scan(lambda _, xs: (None, body(*xs)), None,
                          (jnp.arange(nq), q_b, jnp.moveaxis(rows.reshape(m, nq, C), 1, 0), jnp.moveaxis(groups, 1, 0)))
    return jnp.moveaxis(out, 0, 1).reshape(m, nq * C, K, g, Dh)[:, :L]
