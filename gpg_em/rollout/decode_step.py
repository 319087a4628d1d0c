"""One decode step of the decoder (one new token per row) over a prompt-shared KV cache.

The layer is the one definition in `gpg_em.models.layer` (as the Decoder,
which the prefill uses, runs it; tests compare the two), run feature-major
(`layer.FeatureMajor`: activations [D, B], kernels transposed) with
`cached_attention` as its attention strategy, over a cache laid out for how
the step reads it. Per layer the cache is

    prompt_k_t [n, KVH, Dh, P]          keys of the n prompts, slot axis last
    prompt_v   [n, KVH, P, Dh]
    gen_k_t    [C, n, KVH, G, Dh, T]    keys of the generated tokens, G samples per prompt, in C blocks of T
    gen_v      [C, n, KVH, G, T, Dh]    slots (generated slot t is slot t % T of block t // T)

Why: (1) the G samples of a prompt share its prompt keys/values, so they are
stored once and read once per step for all G samples (a [G*q_per_kv, Dh] x
[Dh, P] product per prompt and kv-head) instead of G times: at 4 prompts x 8
samples this removes ~1/3 of the attention's memory traffic, which is what
attention costs on CPU. (2) Every product is a plain batched matmul with
the batch dimensions leading; the decoder's `[B, S, KVH, Dh]` layout makes
XLA:CPU copy a transposed version of every layer's whole cache on every step.
(3) The new key/value go in with one `dynamic_update_slice` each, at the
same generated index for all rows (or, for continuous batching, where each
row has its own index [B], a per-row scatter: `put_generated`). RoPE angles are computed once per step.
(4) The generated slots are read a block at a time, only the blocks filled so
far (`_gen_blocks`, an online softmax), so a step at generated index t costs
attention over P + ~t slots whatever the budget: a 4k budget does not make
the early steps of a rollout cost as much as a 4k-token sequence. The block
axis leads, so a block is one contiguous array that the products read in
place: with the block axis last, XLA:CPU copied every block out of the cache
before its two products, which took ~40% of the attention's time
(benchmarks/results/decode_step_length_cpu.md).

Rows are prompt-major: row b = i * G + j is sample j of prompt i.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gpg_em.models.config import ModelConfig
from gpg_em.models.decoder import LayerCache, _dtype
from gpg_em.models.layer import FeatureMajor, layer
from gpg_em.models.rope import inverse_frequencies

_NEG = -1e30  # as the decoder: finite, so a fully masked row is uniform rather than NaN


class KVCache(NamedTuple):
    """One layer's keys/values, in the sampler's cache dtype (`decoder.cache_dtype`, `SamplingConfig.kv_dtype`)."""
    prompt_k_t: jnp.ndarray  # [n, KVH, Dh, P]
    prompt_v: jnp.ndarray  # [n, KVH, P, Dh]
    gen_k_t: jnp.ndarray  # [C, n, KVH, G, Dh, T]
    gen_v: jnp.ndarray  # [C, n, KVH, G, T, Dh]


GEN_BLOCK = 128  # generated slots per block: a step's attention costs ceil((index + 1) / GEN_BLOCK) blocks


def gen_blocks(max_new_tokens: int, block: int | None = None) -> tuple[int, int]:
    """(C, T): C blocks of T = min(block, max_new_tokens) generated slots, C T >= max_new_tokens.
    `block` defaults to GEN_BLOCK (read when called)."""
    T = min(block or GEN_BLOCK, max_new_tokens)
    return -(-max_new_tokens // T), T


def empty_generated(n: int, kv_heads: int, samples: int, head_dim: int, max_new_tokens: int, dtype,
                    block: int | None = None):
    """Zeroed (gen_k_t [C, n, KVH, G, Dh, T], gen_v [C, n, KVH, G, T, Dh]) for `max_new_tokens` slots."""
    C, T = gen_blocks(max_new_tokens, block)
    head = (C, n, kv_heads, samples)
    return jnp.zeros(head + (head_dim, T), dtype), jnp.zeros(head + (T, head_dim), dtype)


def from_prefill_cache(cache: list[LayerCache], num_samples: int, max_new_tokens: int,
                       block: int | None = None) -> list[KVCache]:
    """Decoder cache [n, P, KVH, Dh] per layer -> KVCache with zeroed generated slots."""
    def convert(c: LayerCache) -> KVCache:
        n, _, K, Dh = c.k.shape
        return KVCache(c.k.transpose(0, 2, 3, 1), c.v.transpose(0, 2, 1, 3),
                       *empty_generated(n, K, num_samples, Dh, max_new_tokens, c.k.dtype, block))
    return [convert(c) for c in cache]


def select_rows(cache: KVCache, prompt_b, sample_b) -> KVCache:
    """The cache of rows (prompt_b[r], sample_b[r]) as b prompts of one sample each (G = 1): the prompt
    keys/values copied per row, the generated ones of that sample."""
    gen = lambda x: x[:, prompt_b, :, sample_b]  # advanced indices on axes 1, 3 (not adjacent) -> [b, C, K, ...]
    move = lambda x: jnp.moveaxis(x, 0, 1)[:, :, :, None]  # [C, b, K, 1, ...]
    return KVCache(cache.prompt_k_t[prompt_b], cache.prompt_v[prompt_b], move(gen(cache.gen_k_t)),
                   move(gen(cache.gen_v)))


def decode_weights(params, cfg: ModelConfig, transpose: bool):
    """The parameters the decode step reads. With `transpose`, every linear kernel [in, out] is stored as
    `kernel_t` [out, in] (and an untied `lm_head` [D, V] as `lm_head_t` [V, D]).

    Why: the step works feature-major (activations [features, B]) so each linear is `W[out, in] @ x[in, B]`.
    On XLA:CPU that product reads the weight once, streaming, and runs ~2x faster than `x[B, in] @ W[in, out]`
    at decode batch sizes (measured for SmolLM2 at B=32: 38 vs 66 ms for 60 [576, 1536] products). The
    copy must be materialised outside the decode jit (XLA folds a transpose inside it back into the dot),
    so callers make it once per `decode` call with `jit_decode_weights`. Without `transpose` (accelerators,
    whose layout assignment handles this) the kernels are used as they are, at no extra memory.
    """
    return to_decode_layout(params, cfg, lambda w: w.T) if transpose else params


def to_decode_layout(tree, cfg: ModelConfig, flip):
    """`tree` (params, or any pytree shaped like them, e.g. their shardings) with every `kernel` leaf
    renamed `kernel_t` and an untied `lm_head` renamed `lm_head_t`, each mapped by `flip` (a transpose)."""
    def walk(node):
        if not isinstance(node, dict):
            return node
        return {("kernel_t" if k == "kernel" else k): (flip(v) if k == "kernel" else walk(v)) for k, v in node.items()}
    out = walk(tree)
    if not cfg.tie_embeddings:
        out["lm_head_t"] = flip(out.pop("lm_head"))
    return out


jit_decode_weights = jax.jit(decode_weights, static_argnames=("cfg", "transpose"))


def _read_dtype(q, v):
    """The dtype of the probabilities x values product: the wider of the compute dtype (q's) and the cache's
    (`rollout.kv_dtype`); the same as the cache's when they agree. A bfloat16 cache under a float32 model
    thus rounds only the stored keys/values, never the probabilities."""
    return jnp.promote_types(q.dtype, v.dtype)


def _gen_blocks(q_nxKxGxQxD, cache: KVCache, index, carry):
    """Folds the filled generated slots 0..index into the online-softmax state `carry` = (m, l, acc):
    running max m and normaliser l [n, K, G, Q] and unnormalised output acc [n, K, G, Q, Dh], float32.

    `index`: [] (every row) or [n * G] (row b = i * G + j reads its slots 0..index[b]; the loop runs to the
    largest, and a block past a row's index is fully masked for it, which leaves its (m, l, acc) exactly as
    they were: scale e^0 = 1 and p = 0).
    Only the blocks that hold a filled slot are read (ceil((index + 1) / T) of the cache's C), so the
    cost of a step follows the length generated so far, not the cache's budget. Per block
    (Milakov & Gimelshein 2018, as in flash attention):
        m' = max(m, max_t s_t),  l' = l e^(m - m') + sum_t e^(s_t - m'),  acc' = acc e^(m - m') + sum_t e^(s_t - m') v_t
    """
    n, K, G, Q, Dh = q_nxKxGxQxD.shape
    T = cache.gen_k_t.shape[-1]
    # a scalar index (all rows alike) or one per row [n * G], as [n, 1, G, 1, 1] against s [n, K, G, Q, T]
    last = index if jnp.ndim(index) == 0 else index.reshape(n, 1, G, 1, 1)

    def fold(b, carry):
        m, l, acc = carry
        k_t = jax.lax.dynamic_index_in_dim(cache.gen_k_t, b, keepdims=False)  # [n, K, G, Dh, T]
        v = jax.lax.dynamic_index_in_dim(cache.gen_v, b, keepdims=False)  # [n, K, G, T, Dh]
        s = jnp.einsum("nkgqd,nkgdt->nkgqt", q_nxKxGxQxD, k_t, preferred_element_type=jnp.float32) * Dh ** -0.5
        s = jnp.where(b * T + jnp.arange(T) <= last, s, _NEG)
        m_new = jnp.maximum(m, s.max(-1))
        p, scale = jnp.exp(s - m_new[..., None]), jnp.exp(m - m_new)
        pv = jnp.einsum("nkgqt,nkgtd->nkgqd", p.astype(_read_dtype(q_nxKxGxQxD, v)), v,
                        preferred_element_type=jnp.float32)
        return m_new, l * scale + p.sum(-1), acc * scale[..., None] + pv

    return jax.lax.fori_loop(0, jnp.max(index) // T + 1, fold, carry)


def _attend(q_nxKxGxQxD, cache: KVCache, prompt_mask_nxP, index, dt):
    """softmax over [prompt slots ++ generated slots 0..index] of q.k / sqrt(Dh), times v. -> [n, K, G, Q, Dh].

    The prompt part is one product per prompt shared by its G samples; it starts the online softmax
    that `_gen_blocks` continues over the filled generated blocks.
    """
    n, K, G, Q, Dh = q_nxKxGxQxD.shape
    P = cache.prompt_k_t.shape[-1]
    q_shared = q_nxKxGxQxD.reshape(n, K, G * Q, Dh)  # all samples of a prompt in one matmul
    s = jnp.einsum("nkmd,nkdp->nkmp", q_shared, cache.prompt_k_t, preferred_element_type=jnp.float32) * Dh ** -0.5
    s = jnp.where(prompt_mask_nxP[:, None, None, :], s, _NEG)
    m = s.max(-1)  # [n, K, G*Q]
    p = jnp.exp(s - m[..., None])
    acc = jnp.einsum("nkmp,nkpd->nkmd", p.astype(_read_dtype(q_nxKxGxQxD, cache.prompt_v)), cache.prompt_v,
                     preferred_element_type=jnp.float32)
    carry = (m.reshape(n, K, G, Q), p.sum(-1).reshape(n, K, G, Q), acc.reshape(n, K, G, Q, Dh))
    _, l, acc = _gen_blocks(q_nxKxGxQxD, cache, index, carry)
    return (acc / l[..., None]).astype(dt)


def put_generated(cache: KVCache, k_nxKxGxDh, v_nxKxGxDh, index) -> KVCache:
    """The cache with row (i, j)'s new key/value at generated slot `index` (slot index % T of block
    index // T; [] for all rows: one `dynamic_update_slice`; [n * G]: row b = i * G + j at index[b], a
    per-row scatter)."""
    k_new, v_new = k_nxKxGxDh.astype(cache.gen_k_t.dtype), v_nxKxGxDh.astype(cache.gen_v.dtype)
    T = cache.gen_k_t.shape[-1]
    if jnp.ndim(index) == 0:
        c, t = index // T, index % T
        return cache._replace(
            gen_k_t=jax.lax.dynamic_update_slice(cache.gen_k_t, k_new[None, ..., None], (c, 0, 0, 0, 0, t)),
            gen_v=jax.lax.dynamic_update_slice(cache.gen_v, v_new[None, :, :, :, None, :], (c, 0, 0, 0, t, 0)))
    n, K, G, Dh = k_new.shape
    i, j = jnp.arange(n)[:, None], jnp.arange(G)[None, :]
    c, t = jnp.divmod(index.reshape(n, G), T)
    # advanced indices (c, i, j, t) on axes 0, 1, 3, 5 of [C, n, K, G, Dh, T]: the indexed view is [n, G, K, Dh]
    gen_k_t = cache.gen_k_t.at[c, i, :, j, :, t].set(k_new.transpose(0, 2, 1, 3))
    gen_v = cache.gen_v.at[c, i, :, j, t, :].set(v_new.transpose(0, 2, 1, 3))
    return cache._replace(gen_k_t=gen_k_t, gen_v=gen_v)


def cached_attention(cfg: ModelConfig, prompt_mask_nxP, cache: KVCache, index):
    """The decode step's attention strategy for `layer.layer` (feature-major): q [H, Dh, B], k, v
    [KVH, Dh, B] of the rows' new tokens -> (o [H, Dh, B], the cache with k, v written at `index`).
    Columns b = i * G + j are laid out as the cache's [n, KVH, G, ...] for `_attend`."""
    dt, H, K, Dh = _dtype(cfg), cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    n, G, Q = cache.prompt_k_t.shape[0], cache.gen_k_t.shape[3], H // K

    def attend(q, k, v):
        k = k.reshape(K, Dh, n, G).transpose(2, 0, 3, 1)  # [n, K, G, Dh]
        v = v.reshape(K, Dh, n, G).transpose(2, 0, 3, 1)
        new_cache = put_generated(cache, k, v, index)
        q = q.reshape(K, Q, Dh, n, G).transpose(3, 0, 4, 1, 2)  # [n, K, G, Q, Dh]
        out = _attend(q, new_cache, prompt_mask_nxP, index, dt)  # [n, K, G, Q, Dh]
        return out.transpose(1, 3, 4, 0, 2).reshape(H, Dh, n * G), new_cache
    return attend


def rope_cos_sin(cfg: ModelConfig, position_B):
    """RoPE tables cos, sin [Dh, B] of the rows' positions (angles duplicated over the two halves)."""
    angles = jnp.asarray(inverse_frequencies(cfg))[:, None] * position_B.astype(jnp.float32)[None, :]
    angles = jnp.concatenate([angles, angles], axis=0)
    return jnp.cos(angles), jnp.sin(angles)


def step_hidden(params, cfg: ModelConfig, token_B, position_B, prompt_mask_nxP, cache: list[KVCache], index):
    """Final-norm hidden state, feature-major [D, B], of generated token `index` of every row (written at
    generated slot `index`, attending to its prompt's valid slots and generated slots <= index); new cache.
    `index`: [] int32 (one for all rows) or [B] int32 (each row its own, continuous batching).

    `params` come from `decode_weights`.
    """
    dt = _dtype(cfg)
    ops = FeatureMajor(cfg, *rope_cos_sin(cfg, position_B))
    x = jnp.take(params["embed"], token_B, axis=0).astype(dt).T  # [D, B]
    pmask = prompt_mask_nxP.astype(bool)
    new_cache = []
    for i in range(cfg.num_layers):
        x, c = layer(params[f"layers_{i}"], cfg, x, ops, cached_attention(cfg, pmask, cache[i], index))
        new_cache.append(c)
    return ops.norm(x, params["final_norm"]["scale"]), new_cache


def step_logits(params, cfg: ModelConfig, hidden_DxB) -> jnp.ndarray:
    """Float32 logits [B, V] from the feature-major hidden state: [B, D] x [V, D] contracted on D.

    The hidden state is transposed to [B, D] behind an optimization barrier. Left to itself XLA:CPU
    computes [V, D] @ [D, B] and transposes the [V, B] product, which at decode batch sizes costs more
    than the product (SmolLM2's head: 46 against 16 ms at B = 8, 57 against 26 ms at B = 32).
    """
    if cfg.tie_embeddings:
        w = params["embed"]
    elif "lm_head_t" in params:
        w = params["lm_head_t"]
    else:
        return jax.lax.dot_general(hidden_DxB, params["lm_head"].astype(hidden_DxB.dtype), (((0,), (0,)), ((), ())),
                                   preferred_element_type=jnp.float32)
    h_BxD = jax.lax.optimization_barrier(hidden_DxB.T)
    return jax.lax.dot_general(h_BxD, w.astype(h_BxD.dtype), (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)
