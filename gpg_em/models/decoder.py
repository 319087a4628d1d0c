"""The decoder: Llama, Qwen2 and Qwen3 over whole sequences or a KV cache (training's per-row path, prefill).

Flax declares and initialises the parameters and nothing else: each layer's
parameters come from `layer.layer_spec` (via `ParamTree`) and the forward
runs `layer.layer` on them in the token-major layout with the masked
attention below, the same function the shared-prefix forward and the decode
step run. Keeping Linen submodules with their own `__call__` would keep a
second copy of the layer maths; declaration-only modules keep the params
tree (`layers_0/attn/q_proj/kernel`, ...) and its metadata as they were.

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
from gpg_em.models.layer import ParamSpec, TokenMajor, compute_dtype, layer, layer_spec, norm_spec

_NEG = -1e30  # finite, so a fully masked row is uniform rather than NaN


class LayerCache(NamedTuple):
    k: jnp.ndarray  # [B, S, KVH, Dh]
    v: jnp.ndarray  # [B, S, KVH, Dh]


_dtype = compute_dtype


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


_INITS = {"normal": nn.initializers.normal(0.02), "zeros": nn.initializers.zeros, "ones": nn.initializers.ones}


class ParamTree(nn.Module):
    """Declares the parameters of `spec` (nested (name, subtree) pairs, leaves `layer.ParamSpec`), each with
    its logical axes, and returns them as a nested dict. Nested names become submodules, so the params tree
    is `layers_0/attn/q_proj/kernel` etc., as Linear/RMSNorm submodules would lay it out."""
    spec: tuple
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self):
        out = {}
        for name, node in self.spec:
            if isinstance(node, ParamSpec):
                init = nn.with_logical_partitioning(_INITS[node.init], node.axes)
                out[name] = self.param(name, init, node.shape, self.dtype)
            else:
                out[name] = ParamTree(node, self.dtype, name=name)()
        return out


def _frozen(spec: dict) -> tuple:
    """A `layer_spec` dict as nested (name, subtree) pairs: hashable, as Flax module fields should be."""
    return tuple((k, v if isinstance(v, ParamSpec) else _frozen(v)) for k, v in spec.items())


def attention_weights(q_BxTxKxGxD, k_BxSxKxD, allowed_BxTxS):
    """softmax(q k^T / sqrt(Dh)) over slots, float32, masked where not allowed."""
    scale = q_BxTxKxGxD.shape[-1] ** -0.5
    scores = jnp.einsum("btkgd,bskd->bkgts", q_BxTxKxGxD, k_BxSxKxD,
                        preferred_element_type=jnp.float32) * scale
    scores = jnp.where(allowed_BxTxS[:, None, None], scores, _NEG)
    return jax.nn.softmax(scores, axis=-1)


def masked_attention(allowed_BxTxS, cache: LayerCache | None, cache_index, dt):
    """The decoder's attention strategy for `layer.layer`: q [B, T, H, Dh] over the keys/values of every
    slot `allowed` (the T new ones without a cache; with one, the cache [B, S, KVH, Dh] after writing the
    new keys/values at `cache_index`) -> (o [B, T, H, Dh], the new cache or None)."""
    def attend(q, k, v):
        B, T, H, Dh = q.shape
        K = k.shape[2]
        if cache is not None:
            k_all = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), cache_index, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), cache_index, axis=1)
            new_cache = LayerCache(k_all, v_all)
        else:
            k_all, v_all, new_cache = k, v, None
        probs = attention_weights(q.reshape(B, T, K, H // K, Dh), k_all, allowed_BxTxS)
        out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(dt), v_all.astype(dt))
        return out.reshape(B, T, H, Dh), new_cache
    return attend


class Decoder(nn.Module):
    """input_ids [B, T] -> final hidden states [B, T, D] (after the final norm), new cache.

    `kv_mask` is [B, S]: S = T without a cache, the cache length with one.
    """
    cfg: ModelConfig

    def setup(self):
        cfg, dt = self.cfg, _dtype(self.cfg)
        init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed"))
        self.embed = self.param("embed", init, (cfg.vocab_size, cfg.hidden_size), dt)
        spec = _frozen(layer_spec(cfg))
        self.layers = [ParamTree(spec, dt, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = ParamTree(_frozen(norm_spec(cfg.hidden_size)), dt, name="final_norm")
        if not cfg.tie_embeddings:
            head_init = nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab"))
            self.lm_head = self.param("lm_head", head_init, (cfg.hidden_size, cfg.vocab_size), dt)

    def __call__(self, input_ids, positions, kv_mask, cache=None, cache_index=0):
        T = input_ids.shape[1]
        S = kv_mask.shape[1]
        slots_q = cache_index + jnp.arange(T)  # slot of each query
        allowed = (jnp.arange(S)[None, :] <= slots_q[:, None])[None] & kv_mask[:, None, :].astype(bool)
        dt = _dtype(self.cfg)
        ops = TokenMajor(self.cfg, positions)
        x = ops.pin(jnp.take(self.embed, input_ids, axis=0).astype(dt), "act_embed")
        new_cache = []
        for i, layer_params in enumerate(self.layers):
            attend = masked_attention(allowed, None if cache is None else cache[i], cache_index, dt)
            x, c = layer(layer_params(), self.cfg, x, ops, attend)
            new_cache.append(c)
        return ops.norm(x, self.final_norm()["scale"]), (new_cache if cache is not None else None)

    def head_weight(self):
        """The output projection [D, V] (the transposed embedding when tied)."""
        return self.embed.T if self.cfg.tie_embeddings else self.lm_head

    def logits(self, hidden_BxTxD):
        return jnp.dot(hidden_BxTxD, self.head_weight().astype(hidden_BxTxD.dtype),
                       preferred_element_type=jnp.float32)
