"""The decode step on CPU as one native call: `gpg_em/kernels/decode_cpu.cc` through `jax.ffi`.

Same mathematics, cache layout and results as `decode_step.step_hidden` + `step_logits` (float32;
the tests compare the two, and the sampler's greedy tokens with transformers'); the layer it
computes is `gpg_em.models.layer.layer`, so an architecture variant added there must be added
here too or refused by `use_kernel`. What differs is
how the work is done: every layer of the step runs in one C++ call over weights packed once per
`sample` call (`pack_weights`), with skinny GEMMs in AVX-512 (or AVX2 + FMA where the CPU has no
AVX-512) that keep both cores busy, so a SmolLM2 step at B = 32 rows takes ~65 ms against ~135 ms
for the XLA step on an AVX-512 machine (`benchmarks/sampler.py`).

Used by `sampler.sample` when `use_kernel(cfg)`: the default backend is CPU, the model computes in
float32, its head_dim is at most 512, the kernel builds here (`gpg_em.kernels`) and the
environment does not set `GPG_EM_CPU_KERNEL=0`. The sharded sampler and accelerators keep the XLA
step.
"""
from __future__ import annotations

import functools
import os
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gpg_em.kernels import DECODE_STEP_TARGET, decode_kernel_available
from gpg_em.models.config import ModelConfig
from gpg_em.rollout.decode_step import KVCache, put_generated, rope_cos_sin

PANEL = 48  # packed panel width, as kPanel in decode_cpu.cc


class PackedWeights(NamedTuple):
    """The decode step's weights in the kernel's layout (L layers stacked; see decode_cpu.cc)."""
    embed: jnp.ndarray  # [V, D] token embeddings (gathered in XLA)
    in_norm: jnp.ndarray  # [L, D]
    post_norm: jnp.ndarray  # [L, D]
    final_norm: jnp.ndarray  # [D]
    w_qkv: jnp.ndarray  # [L, ceil((H + 2 KVH) Dh / 48), D, 48]: [q | k | v] kernels, packed
    b_qkv: jnp.ndarray  # [L, (H + 2 KVH) Dh] (zeros without qkv_bias)
    w_o: jnp.ndarray  # [L, ceil(D / 48), H Dh, 48]
    w_gu: jnp.ndarray  # [L, ceil(2 F / 48), D, 48]: [gate | up]
    w_down: jnp.ndarray  # [L, ceil(D / 48), F, 48]
    w_head: jnp.ndarray  # [ceil(V / 48), D, 48]: the head [D, V] (embed.T when tied)
    q_norm: jnp.ndarray  # [L, Dh] (ones without qk_norm)
    k_norm: jnp.ndarray  # [L, Dh]


def use_kernel(cfg: ModelConfig) -> bool:
    """Whether `sample` decodes with the native kernel (see the module docstring)."""
    return (os.environ.get("GPG_EM_CPU_KERNEL", "1") != "0" and jax.default_backend() == "cpu"
            and cfg.dtype == "float32" and cfg.head_dim <= 512 and decode_kernel_available())


def pack_panels(w_KxN: jnp.ndarray) -> jnp.ndarray:
    """[K, N] -> [ceil(N / 48), K, 48], columns zero-padded: out[p, k, c] = w[k, 48 p + c]."""
    K, N = w_KxN.shape
    pad = -N % PANEL
    w = jnp.pad(w_KxN.astype(jnp.float32), ((0, 0), (0, pad)))
    return w.reshape(K, (N + pad) // PANEL, PANEL).transpose(1, 0, 2)


def _layer_arrays(lp, cfg: ModelConfig) -> dict:
    attn, mlp, Dh = lp["attn"], lp["mlp"], cfg.head_dim
    kernels = [attn[p]["kernel"] for p in ("q_proj", "k_proj", "v_proj")]
    bias = (jnp.concatenate([attn[p]["bias"] for p in ("q_proj", "k_proj", "v_proj")]) if cfg.qkv_bias
            else jnp.zeros(sum(k.shape[1] for k in kernels), jnp.float32))
    norm = lambda name: attn[name]["scale"] if cfg.qk_norm else jnp.ones((Dh,), jnp.float32)
    return dict(in_norm=lp["input_norm"]["scale"], post_norm=lp["post_attn_norm"]["scale"],
                w_qkv=pack_panels(jnp.concatenate(kernels, axis=1)), b_qkv=bias,
                w_o=pack_panels(attn["o_proj"]["kernel"]),
                w_gu=pack_panels(jnp.concatenate([mlp["gate_proj"]["kernel"], mlp["up_proj"]["kernel"]], axis=1)),
                w_down=pack_panels(mlp["down_proj"]["kernel"]), q_norm=norm("q_norm"), k_norm=norm("k_norm"))


@functools.partial(jax.jit, static_argnames=("cfg",))
def pack_weights(params, cfg: ModelConfig) -> PackedWeights:
    """The model's params in the kernel's layout: one float32 copy of every weight (made once per call)."""
    layers = [_layer_arrays(params[f"layers_{i}"], cfg) for i in range(cfg.num_layers)]
    stack = lambda key: jnp.stack([l[key] for l in layers]).astype(jnp.float32)
    head = params["embed"].T if cfg.tie_embeddings else params["lm_head"]
    return PackedWeights(embed=params["embed"], final_norm=params["final_norm"]["scale"].astype(jnp.float32),
                         w_head=pack_panels(head), **{k: stack(k) for k in layers[0]})


class _LastPacked:
    """A one-entry cache: the packed copy of the last params packed, while every one of their arrays lives.

    `sample` is often called again with the same params (evaluation, `generate`, benchmarks); packing
    costs a pass over every weight (~0.4 s for SmolLM2 on 2 cores). The entry holds the params' arrays
    weakly and is dropped as soon as any of them is collected (an RL update replaces them all), so the
    packed copy never outlives its params.
    """
    entry = None  # (cfg, [weakref to each leaf], PackedWeights)

    @classmethod
    def get(cls, params, cfg: ModelConfig) -> PackedWeights:
        leaves = jax.tree.leaves(params)
        hit = cls.entry
        if (hit is not None and hit[0] == cfg and len(hit[1]) == len(leaves)
                and all(r() is x for r, x in zip(hit[1], leaves))
                and not any(getattr(x, "is_deleted", lambda: False)() for x in leaves)):
            return hit[2]
        cls.entry = None
        packed = pack_weights(params, cfg=cfg)
        try:
            refs = [weakref.ref(x, cls._drop) for x in leaves]
        except TypeError:  # leaves that cannot be weakly referenced: no caching
            return packed
        cls.entry = (cfg, refs, packed)
        return packed

    @classmethod
    def _drop(cls, ref):
        if cls.entry is not None and ref in cls.entry[1]:
            cls.entry = None


def release_packed_weights() -> None:
    """Drops the cached packed copy now (the trainer calls this before its update, whose peak memory
    the copy would otherwise add to while the rollout's params are still alive)."""
    _LastPacked.entry = None


def packed_weights(params, cfg: ModelConfig) -> PackedWeights:
    """`pack_weights(params, cfg)`, reusing the previous result while the same params arrays are passed."""
    return _LastPacked.get(params, cfg)


def step(packed: PackedWeights, cfg: ModelConfig, token_B, position_B, prompt_mask_nxP, cache: list[KVCache],
         index):
    """(float32 logits [B, V], the cache with this step's keys/values at generated slot `index`: [] for all
    rows, or [B] per row (continuous batching, `slots`))."""
    if not decode_kernel_available():  # (also registers the FFI target in this process)
        raise RuntimeError("the CPU decode kernel is unavailable here (see the warning); decode with "
                           "decode_step.step_hidden instead")
    _, n, K, G, Dh, _ = cache[0].gen_k_t.shape
    B, L = token_B.shape[0], cfg.num_layers
    cos, sin = rope_cos_sin(cfg, position_B)  # [Dh, B]
    x = jnp.take(packed.embed, token_B, axis=0).astype(jnp.float32)
    kv = jax.ShapeDtypeStruct((L, n, K, G, Dh), jnp.float32)
    call = jax.ffi.ffi_call(DECODE_STEP_TARGET, (jax.ShapeDtypeStruct((B, cfg.vocab_size), jnp.float32), kv, kv))
    arrays = [a for c in cache for a in c]
    logits, k_new, v_new = call(
        x, cos.T, sin.T, prompt_mask_nxP.astype(jnp.int32), jnp.asarray(index, jnp.int32), *packed[1:], *arrays,
        num_heads=np.int64(cfg.num_heads), num_kv_heads=np.int64(cfg.num_kv_heads),
        intermediate_size=np.int64(cfg.intermediate_size), eps=np.float32(cfg.rms_norm_eps),
        qk_norm=np.int64(cfg.qk_norm))
    return logits, [put_generated(c, k_new[l], v_new[l], index) for l, c in enumerate(cache)]
