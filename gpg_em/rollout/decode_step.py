"""One decode step of the decoder for a single new token per row, on a sampler-specific KV cache layout.

Same mathematics, parameters and dtypes as `gpg_em.models.decoder.Decoder`
(which the prefill uses and which tests compare against), rewritten for
T = 1 because of how XLA:CPU lowers attention over the decoder's
`[B, S, KVH, Dh]` cache: the score and value products are batched over
(b, kv_head), which are not the leading dimensions there, so XLA copies a
transposed version of every layer's whole K and V cache on every step
(measured: 60 copies, ~280 MB per step at B=32, S=192 for SmolLM2). Here the
cache is stored the way the products read it:

    k_t: [B, KVH, Dh, S]   q . k is a plain batched [G, Dh] x [Dh, S] matmul
    v:   [B, KVH, S, Dh]   p . v is a plain batched [G, S] x [S, Dh] matmul

and the new key/value go in with one `dynamic_update_slice` each. RoPE
angles are computed once per step, not per layer.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gpg_em.models.config import ModelConfig
from gpg_em.models.decoder import LayerCache
from gpg_em.models.rope import inverse_frequencies

import os
ATTN_MODE = os.environ.get("ATTN_MODE", "dot")
_NEG = -1e30  # as the decoder: finite, so a fully masked row is uniform rather than NaN


class KVCache(NamedTuple):
    k_t: jnp.ndarray  # [B, KVH, Dh, S] keys, slot axis last
    v: jnp.ndarray  # [B, KVH, S, Dh]


def _dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def from_decoder_cache(cache: list[LayerCache], extra_slots: int) -> list[KVCache]:
    """Decoder cache [B, P, KVH, Dh] per layer -> this layout with `extra_slots` zero slots appended."""
    def convert(c: LayerCache) -> KVCache:
        k_t = jnp.pad(c.k.transpose(0, 2, 3, 1), ((0, 0), (0, 0), (0, 0), (0, extra_slots)))
        v = jnp.pad(c.v.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, extra_slots), (0, 0)))
        return KVCache(k_t, v)
    return [convert(c) for c in cache]


def _rms(x, scale, eps, dt):
    """RMSNorm exactly as the decoder's: float32 statistics, then scale in the compute dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y.astype(dt) * scale.astype(dt)).astype(dt)


def _linear(x, p, dt):
    y = jnp.dot(x.astype(dt), p["kernel"].astype(dt))
    return y + p["bias"].astype(dt) if "bias" in p else y


def _rope(x_BxHxD, cos_Bx1xD, sin_Bx1xD):
    x = x_BxHxD.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos_Bx1xD + rotated * sin_Bx1xD).astype(x_BxHxD.dtype)


def _attention(lp, cfg: ModelConfig, h_BxD, cos, sin, valid_BxS, cache: KVCache, slot):
    dt = _dtype(cfg)
    B = h_BxD.shape[0]
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = _linear(h_BxD, lp["q_proj"], dt).reshape(B, H, Dh)
    k = _linear(h_BxD, lp["k_proj"], dt).reshape(B, K, Dh)
    v = _linear(h_BxD, lp["v_proj"], dt).reshape(B, K, Dh)
    if cfg.qk_norm:
        q = _rms(q, lp["q_norm"]["scale"], cfg.rms_norm_eps, dt)
        k = _rms(k, lp["k_norm"]["scale"], cfg.rms_norm_eps, dt)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    k_t = jax.lax.dynamic_update_slice(cache.k_t, k[..., None].astype(cache.k_t.dtype), (0, 0, 0, slot))
    v_c = jax.lax.dynamic_update_slice(cache.v, v[:, :, None, :].astype(cache.v.dtype), (0, 0, slot, 0))
    qg = q.reshape(B, K, H // K, Dh)
    if ATTN_MODE == "dot":
        scores = jnp.einsum("bkgd,bkds->bkgs", qg, k_t, preferred_element_type=jnp.float32) * Dh ** -0.5
    else:
        scores = jnp.sum(qg[..., None].astype(jnp.float32) * k_t[:, :, None].astype(jnp.float32), axis=-2) * Dh ** -0.5
    probs = jax.nn.softmax(jnp.where(valid_BxS[:, None, None, :], scores, _NEG), axis=-1)
    if ATTN_MODE == "dot":
        out = jnp.einsum("bkgs,bksd->bkgd", probs.astype(dt), v_c.astype(dt))
    else:
        out = jnp.sum(probs.astype(dt)[..., None] * v_c[:, :, None].astype(dt), axis=-2)
    return _linear(out.reshape(B, H * Dh), lp["o_proj"], dt), KVCache(k_t, v_c)


def _block(lp, cfg: ModelConfig, x_BxD, cos, sin, valid_BxS, cache: KVCache, slot):
    dt, eps = _dtype(cfg), cfg.rms_norm_eps
    h, cache = _attention(lp["attn"], cfg, _rms(x_BxD, lp["input_norm"]["scale"], eps, dt), cos, sin,
                          valid_BxS, cache, slot)
    x = x_BxD + h
    h = _rms(x, lp["post_attn_norm"]["scale"], eps, dt)
    mlp = lp["mlp"]
    return x + _linear(jax.nn.silu(_linear(h, mlp["gate_proj"], dt)) * _linear(h, mlp["up_proj"], dt),
                       mlp["down_proj"], dt), cache


def step_hidden(params, cfg: ModelConfig, token_B, position_B, kv_mask_BxS, cache: list[KVCache], slot):
    """Final-norm hidden state [B, D] of one new token per row, written at cache `slot`; new cache.

    The token attends to every slot <= `slot` where `kv_mask` is true
    (the decoder's rule for a query at `slot`).
    """
    dt = _dtype(cfg)
    S = kv_mask_BxS.shape[1]
    valid = kv_mask_BxS.astype(bool) & (jnp.arange(S) <= slot)[None]
    angles = position_B.astype(jnp.float32)[:, None] * jnp.asarray(inverse_frequencies(cfg))
    angles = jnp.concatenate([angles, angles], axis=-1)[:, None, :]  # [B, 1, Dh]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x = jnp.take(params["embed"], token_B, axis=0).astype(dt)
    new_cache = []
    for i in range(cfg.num_layers):
        x, c = _block(params[f"layers_{i}"], cfg, x, cos, sin, valid, cache[i], slot)
        new_cache.append(c)
    return _rms(x, params["final_norm"]["scale"], cfg.rms_norm_eps, dt), new_cache
