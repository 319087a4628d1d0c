"""Teacher-forced forward of G completions per prompt, the prompt computed once per group.

An RL batch holds n groups of G rows that share one prompt. Computing the
prompt's hidden states, keys and values once per group instead of once per
row is exact: every completion token attends to the same prompt keys/values
it would see in its own row, and the backward pass sums the gradients that
flow into the shared prompt activations from the G completions, which is what
the G separate rows would add up to. It removes (G - 1) / G of the prompt
tokens' forward and backward work.

Layout: prompts [n, P] (left-padded); each group's completions are packed
end to end into L slots ([n, L]): slot t holds token `pos[t]` of row
`row[t]` (-1: an empty slot). With `packing_index` only valid tokens are
packed, so the padding after each row's stop token costs nothing;
`identity_packing` packs all G * N positions (L = G * N). Prompt slot s has
position cumsum(prompt_mask)[s] - 1; completion token j has position L_p + j,
L_p the group's prompt length, as `positions_from_mask` gives over the
concatenated row. A completion token attends to the group's valid prompt
slots and to the earlier tokens of its own row.

The layer maths is the decoder's (gpg_em.models.decoder), written over the
params tree: RMSNorm in float32, optional q/k norm, RoPE, grouped-query
attention with a float32 softmax, SwiGLU MLP.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpg_em.models.config import ModelConfig
from gpg_em.models.decoder import _dtype
from gpg_em.models.model import positions_from_mask
from gpg_em.models.rope import apply_rope, inverse_frequencies

_NEG = -1e30


def _norm(x, scale, eps, dt):
    """RMSNorm over the last axis in float32: x / sqrt(mean(x^2) + eps) * scale."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(dt) * scale.astype(dt)


def _linear(p, x, dt):
    y = jnp.dot(x.astype(dt), p["kernel"].astype(dt))
    return y + p["bias"].astype(dt) if "bias" in p else y


def _qkv(lp, cfg: ModelConfig, x_BxTxD, positions_BxT):
    """Rotated q [B, T, K, H/K, Dh] and k, v [B, T, K, Dh] of one layer."""
    dt, (B, T, _) = _dtype(cfg), x_BxTxD.shape
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = _linear(lp["q_proj"], x_BxTxD, dt).reshape(B, T, H, Dh)
    k = _linear(lp["k_proj"], x_BxTxD, dt).reshape(B, T, K, Dh)
    v = _linear(lp["v_proj"], x_BxTxD, dt).reshape(B, T, K, Dh)
    if cfg.qk_norm:
        q = _norm(q, lp["q_norm"]["scale"], cfg.rms_norm_eps, dt)
        k = _norm(k, lp["k_norm"]["scale"], cfg.rms_norm_eps, dt)
    inv_freq = inverse_frequencies(cfg)
    q, k = apply_rope(q, positions_BxT, inv_freq), apply_rope(k, positions_BxT, inv_freq)
    return q.reshape(B, T, K, H // K, Dh), k, v


def _prompt_attention(q, k, v, allowed_nxPxP, dt):
    """Causal masked attention within the prompts: q [n,P,K,g,Dh], k/v [n,P,K,Dh] -> [n,P,K,g,Dh]."""
    s = jnp.einsum("ntkgd,nskd->nkgts", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    p = jax.nn.softmax(jnp.where(allowed_nxPxP[:, None, None], s, _NEG), axis=-1)
    return jnp.einsum("nkgts,nskd->ntkgd", p.astype(dt), v.astype(dt))


def _blocks_with_previous(x_nxLx, C: int, fill):
    """[n, L, ...] -> [n, L/C, 2C, ...]: each block of C slots preceded by the block before it."""
    n, L = x_nxLx.shape[:2]
    b = x_nxLx.reshape(n, L // C, C, *x_nxLx.shape[2:])
    prev = jnp.concatenate([jnp.full_like(b[:, :1], fill), b[:, :-1]], axis=1)
    return jnp.concatenate([prev, b], axis=2)


def completion_window_mask(row_nxL, C: int):
    """allowed [n, L/C, C, 2C]: query slot t of a block sees window slot s when both hold the same row
    and s <= t. Rows are contiguous and at most C long, so a row's earlier tokens always lie in the
    query's block or the one before it."""
    n, L = row_nxL.shape
    t = jnp.arange(L).reshape(L // C, C)
    s = jnp.concatenate([t - C, t], axis=1)  # [L/C, 2C]
    rows_q = row_nxL.reshape(n, L // C, C)
    rows_k = _blocks_with_previous(row_nxL, C, -1)
    return ((rows_q[..., :, None] == rows_k[..., None, :]) & (rows_k[..., None, :] >= 0)
            & (s[None, :, None, :] <= t[None, :, :, None]))


def _completion_attention(q, k_p, v_p, k_c, v_c, prompt_mask_nxP, allowed_nxbxCx2C, dt):
    """Packed completion queries q [n,L,K,g,Dh] over the group's prompt (k_p [n,P,K,Dh]) and their own row.

    Blocks of C query slots attend to the P prompt slots and a window of the
    2C packed slots ending with their block (`completion_window_mask`), in one
    softmax: O(L * (P + 2C)) work instead of O(L * (P + L)).
    """
    n, L, K, g, Dh = q.shape
    C = allowed_nxbxCx2C.shape[-2]
    qb = q.reshape(n, L // C, C, K, g, Dh)
    k_w, v_w = _blocks_with_previous(k_c, C, 0), _blocks_with_previous(v_c, C, 0)
    scale = Dh ** -0.5
    s_p = jnp.einsum("nbtkgd,nskd->nbkgts", qb, k_p, preferred_element_type=jnp.float32) * scale
    s_c = jnp.einsum("nbtkgd,nbskd->nbkgts", qb, k_w, preferred_element_type=jnp.float32) * scale
    P = s_p.shape[-1]
    s_p = jnp.where(prompt_mask_nxP.astype(bool)[:, None, None, None, None, :], s_p, _NEG)
    s_c = jnp.where(allowed_nxbxCx2C[:, :, None, None], s_c, _NEG)
    probs = jax.nn.softmax(jnp.concatenate([s_p, s_c], axis=-1), axis=-1).astype(dt)
    out = (jnp.einsum("nbkgts,nskd->nbtkgd", probs[..., :P], v_p.astype(dt))
           + jnp.einsum("nbkgts,nbskd->nbtkgd", probs[..., P:], v_w.astype(dt)))
    return out.reshape(n, L, K, g, Dh)


def _mlp(mp, x, dt):
    return _linear(mp["down_proj"], jax.nn.silu(_linear(mp["gate_proj"], x, dt)) * _linear(mp["up_proj"], x, dt), dt)


def block(lp, cfg: ModelConfig, x_p, x_c, pos_p, pos_c, allowed_p, prompt_mask, allowed_c):
    """One decoder layer over prompts x_p [n, P, D] and packed completions x_c [n, L, D]."""
    dt, eps = _dtype(cfg), cfg.rms_norm_eps
    q_p, k_p, v_p = _qkv(lp["attn"], cfg, _norm(x_p, lp["input_norm"]["scale"], eps, dt), pos_p)
    q_c, k_c, v_c = _qkv(lp["attn"], cfg, _norm(x_c, lp["input_norm"]["scale"], eps, dt), pos_c)
    o_p = _prompt_attention(q_p, k_p, v_p, allowed_p, dt)
    o_c = _completion_attention(q_c, k_p, v_p, k_c, v_c, prompt_mask, allowed_c, dt)
    x_p = x_p + _linear(lp["attn"]["o_proj"], o_p.reshape(*x_p.shape[:2], -1), dt)
    x_c = x_c + _linear(lp["attn"]["o_proj"], o_c.reshape(*x_c.shape[:2], -1), dt)
    post = lambda x: _mlp(lp["mlp"], _norm(x, lp["post_attn_norm"]["scale"], eps, dt), dt)
    return x_p + post(x_p), x_c + post(x_c)


def identity_packing(n: int, G: int, N: int) -> jnp.ndarray:
    """pack_index [n, G*N] that lays each group's G rows end to end, padding included."""
    return jnp.broadcast_to(jnp.arange(G * N, dtype=jnp.int32), (n, G * N))


def packing_index(completion_mask_BxN, G: int, width: int):
    """pack_index [n, width] (host numpy): each group's valid completion tokens end to end.

    Slot p of group i holds flat token g * N + j of the group's [G, N]
    completions (row g, token j), or -1 when empty. `width` must hold the
    group with the most valid tokens.
    """
    mask = np.asarray(completion_mask_BxN).astype(bool)
    B, N = mask.shape
    flat = mask.reshape(B // G, G * N)
    if flat.sum(1).max(initial=0) > width:
        raise ValueError(f"packing width {width} < {flat.sum(1).max()} valid tokens in one group")
    index = np.full((B // G, width), -1, np.int32)
    for i, row in enumerate(flat):
        valid = np.flatnonzero(row)
        index[i, :valid.size] = valid
    return index


def packed_width(completion_mask_BxN, G: int, multiple: int) -> int:
    """Width holding the group with the most valid tokens, rounded up to `multiple`, at most G * N."""
    mask = np.asarray(completion_mask_BxN)
    B, N = mask.shape
    most = int(mask.reshape(B // G, G * N).sum(1).max(initial=1))
    return min(G * N, -(-most // multiple) * multiple)


def stacked_layers(params, num_layers: int):
    """The layers' parameters stacked on a leading [num_layers] axis (a copy), for `lax.scan`."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(num_layers)])


def shared_prefix_hidden(params, cfg: ModelConfig, prompt_ids_nxP, prompt_mask_nxP, tokens_nxL, row_nxL, pos_nxL,
                         *, window: int, remat: bool = False, scan_layers: bool = True):
    """Final-norm hidden states: (last prompt slot [n, D], packed completion slots [n, L, D]).

    Packed slot t of group i holds token `tokens[i, t]` of row `row[i, t]`
    (-1: empty) at completion position `pos[i, t]` (0 for a row's first token);
    a row's tokens are contiguous, in order and at most `window` long (L a
    multiple of `window`: the completion maximum N). `remat` recomputes each
    layer's activations in the backward pass (`jax.checkpoint` per layer):
    memory O(one layer) instead of O(all layers). `scan_layers` runs the
    layers in a `lax.scan` over their stacked parameters: traced and compiled
    once instead of num_layers times, and with `remat` the backward pass
    recomputes one layer at a time (unrolled, XLA may schedule every layer's
    recomputation at once, which keeps most of the memory remat should save).
    Unrolled without remat is the fastest on a CPU (no stacked copy).
    """
    dt, eps = _dtype(cfg), cfg.rms_norm_eps
    P = prompt_ids_nxP.shape[1]
    pmask = prompt_mask_nxP.astype(bool)
    pos_p = positions_from_mask(pmask)
    pos_c = pmask.sum(axis=1).astype(jnp.int32)[:, None] + pos_nxL
    allowed_p = jnp.tril(jnp.ones((P, P), bool))[None] & pmask[:, None, :]
    allowed_c = completion_window_mask(row_nxL, window)
    embed = lambda ids: jnp.take(params["embed"], ids, axis=0).astype(dt)
    x_p, x_c = embed(prompt_ids_nxP), embed(tokens_nxL)
    layer = jax.checkpoint(block, static_argnums=(1,)) if remat else block

    def body(x, lp):
        return layer(lp, cfg, *x, pos_p, pos_c, allowed_p, pmask, allowed_c), None
    if scan_layers:
        (x_p, x_c), _ = jax.lax.scan(body, (x_p, x_c), stacked_layers(params, cfg.num_layers))
    else:
        for i in range(cfg.num_layers):
            (x_p, x_c), _ = body((x_p, x_c), params[f"layers_{i}"])
    scale = params["final_norm"]["scale"]
    return _norm(x_p[:, -1], scale, eps, dt), _norm(x_c, scale, eps, dt)
