"""The decoder: one Flax Linen implementation for Llama, Qwen2 and Qwen3.

Every parameter dimension carries a logical axis name (`vocab`, `embed`,
`heads`, `kv_heads`, `mlp`, `head_dim`, `norm`), and so do the activations
(`batch`, `length`, `act_embed`, `act_heads`, `act_kv_heads`, `act_mlp`, pinned
with `parallel.constrain` while a sharded step is traced); `gpg_em.parallel`
maps them to mesh axes in one table. Layers are separate submodules (`layers_0`, ...), one
array per layer: on CPU, slicing stacked `[L, ...]` weights inside a jitted
decode step copies them (measured ~2.6x slower per step).

Attention works on "slots": without a cache the slots are the input tokens;
with a cache `[B, S, KVH, Dh]` the new keys/values are written at
`cache_index` and queries attend to every valid slot at or before their own.
`kv_mask [B, S]` marks valid (non-padding) slots, so left and right padding
are both handled by masking, and positions come in explicitly.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpg_em.models.config import ModelConfig
from gpg_em.models.rope import apply_rope, inverse_frequencies
from gpg_em.parallel.mesh import constrain

_NEG = -1e30  # finite, so a fully masked row is uniform rather than NaN


class LayerCache(NamedTuple):
    k: jnp.ndarray  # [B, S, KVH, Dh]
    v: jnp.ndarray  # [B, S, KVH, Dh]


def _dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


KV_DTYPES = ("auto", "float32", "bfloat16")


def cache_dtype(cfg: ModelConfig, kv_dtype: str = "auto"):
    """The dtype keys/values are stored in: `kv_dtype` ("float32" | "bfloat16"), or with "auto" the compute
    dtype. Attention reads them back and computes in the wider of the two (scores always in float32)."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype {kv_dtype!r} is not one of {list(KV_DTYPES)}")
    return _dtype(cfg) if kv_dtype == "auto" else jnp.dtype(kv_dtype)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, kv_dtype: str = "auto") -> list[LayerCache]:
    """Zeroed KV cache, one LayerCache per layer, in `cache_dtype(cfg, kv_dtype)`: every key/value written is
    rounded to it, and every attention read sees the stored (rounded) values."""
    shape, dt = (batch, max_len, cfg.num_kv_heads, cfg.head_dim), cache_dtype(cfg, kv_dtype)
    return [LayerCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(cfg.num_layers)]


class Linear(nn.Module):
    features: int
    axes: tuple[str, str]
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), self.axes)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), self.dtype)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias_init = nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:])
            y = y + self.param("bias", bias_init, (self.features,), self.dtype).astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32 (as HF does)."""
    eps: float
    axis_name: str = "norm"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,))
        scale = self.param("scale", init, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y.astype(self.dtype) * scale.astype(self.dtype)).astype(self.dtype)


def attention_weights(q_BxTxKxGxD, k_BxSxKxD, allowed_BxTxS):
    """softmax(q k^T / sqrt(Dh)) over slots, float32, masked where not allowed."""
    scale = q_BxTxKxGxD.shape[-1] ** -0.5
    scores = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD,
                        preferred_element_type=jnp.float32) * scale
    scores = jnp.where(allowed_BxTxS[:, None, None], scores, _NEG)
    return jax.nn.softmax(scores, axis=-1)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, allowed, cache, cache_index):
        cfg, dt = self.cfg, _dtype(self.cfg)
        B, T, _ = x.shape
        H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = Linear(H * Dh, ("embed", "heads"), cfg.qkv_bias, dt, name="q_proj")(x).reshape(B, T, H, Dh)
        k = Linear(K * Dh, ("embed", "kv_heads"), cfg.qkv_bias, dt, name="k_proj")(x).reshape(B, T, K, Dh)
        v = Linear(K * Dh, ("embed", "kv_heads"), cfg.qkv_bias, dt, name="v_proj")(x).reshape(B, T, K, Dh)
        q = constrain(q, ("batch", "length", "act_heads", "head_dim"))
        k, v = (constrain(a, ("batch", "length", "act_kv_heads", "head_dim")) for a in (k, v))
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, "head_dim", dt, name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, "head_dim", dt, name="k_norm")(k)
        inv_freq = inverse_frequencies(cfg)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        if cache is not None:
            k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), cache_index, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), cache_index, axis=1)
            cache = LayerCache(k_all, v_all)
        else:
            k_all, v_all = k, v
        probs = attention_weights(q.reshape(B, T, K, H // K, Dh), k_all, allowed)
        out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(dt), v_all.astype(dt))
        out = Linear(cfg.hidden_size, ("heads", "embed"), False, dt, name="o_proj")(out.reshape(B, T, H * Dh))
        return out, cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg, dt = self.cfg, _dtype(self.cfg)
        gate = Linear(cfg.intermediate_size, ("embed", "mlp"), False, dt, name="gate_proj")(x)
        up = Linear(cfg.intermediate_size, ("embed", "mlp"), False, dt, name="up_proj")(x)
        gate, up = (constrain(a, ("batch", "length", "act_mlp")) for a in (gate, up))
        return Linear(cfg.hidden_size, ("mlp", "embed"), False, dt, name="down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, allowed, cache, cache_index):
        dt = _dtype(self.cfg)
        h, cache = Attention(self.cfg, name="attn")(
            RMSNorm(self.cfg.rms_norm_eps, "norm", dt, name="input_norm")(x), positions, allowed, cache, cache_index)
        x = x + h
        x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg.rms_norm_eps, "norm", dt, name="post_attn_norm")(x))
        return constrain(x, ("batch", "length", "act_embed")), cache


class Decoder(nn.Module):
    """input_ids [B, T] -> final hidden states [B, T, D] (after the final norm), new cache.

    `kv_mask` is [B, S]: S = T without a cache, the cache length with one.
    """
    cfg: ModelConfig

    def setup(self):
        cfg, dt = self.cfg, _dtype(self.cfg)
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed"))
        self.embed = self.param("embed", init, (cfg.vocab_size, cfg.hidden_size), dt)
        self.layers = [Block(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = RMSNorm(cfg.rms_norm_eps, "norm", dt, name="final_norm")
        if not cfg.tie_embeddings:
            head_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab"))
            self.lm_head = self.param("lm_head", head_init, (cfg.hidden_size, cfg.vocab_size), dt)

    def __call__(self, input_ids, positions, kv_mask, cache=None, cache_index=0):
        T = input_ids.shape[1]
        S = kv_mask.shape[1]
        slots_q = cache_index + jnp.arange(T)  # slot of each query
        allowed = (jnp.arange(S)[None, :] <= slots_q[:, None])[None] & kv_mask[:, None, :].astype(bool)
        x = jnp.take(self.embed, input_ids, axis=0).astype(_dtype(self.cfg))
        x = constrain(x, ("batch", "length", "act_embed"))
        new_cache = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, positions, allowed, None if cache is None else cache[i], cache_index)
            new_cache.append(c)
        return self.final_norm(x), (new_cache if cache is not None else None)

    def head_weight(self):
        """The output projection [D, V] (the transposed embedding when tied)."""
        return self.embed.T if self.cfg.tie_embeddings else self.lm_head

    def logits(self, hidden_BxTxD):
        return jnp.dot(hidden_BxTxD, self.head_weight().astype(hidden_BxTxD.dtype),
                       preferred_element_type=jnp.float32)
