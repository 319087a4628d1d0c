"""The decoder layer, written once: its parameters (`layer_spec`) and its mathematics (`layer`).

    h       = RMSNorm(x)                                  float32 statistics, scale in the compute dtype
    q, k, v = heads(h W_q + b_q), heads(h W_k + b_k), heads(h W_v + b_v)     (biases: Qwen2, `cfg.qkv_bias`)
    q, k    = RMSNorm(q), RMSNorm(k) over head_dim         (Qwen3, `cfg.qk_norm`)
    q, k    = RoPE(q), RoPE(k)
    o       = attend(q, k, v)                             softmax(q k^T / sqrt(Dh)) v, float32 scores, K kv-heads
                                                          shared by H / K query heads (grouped-query attention)
    x       = x + merge(o) W_o
    h       = RMSNorm(x)
    x       = x + (silu(h W_gate) * (h W_up)) W_down

Two things vary between the callers and are passed in:

- `attend(q, k, v) -> (o, state)`, which keys and values attention reads:
  the whole (optionally cached) sequence under a mask (`decoder.masked_attention`),
  the shared prompt plus packed completions (`shared_prefix.block`), or one
  decode step over a prompt-shared cache (`decode_step.cached_attention`).
  `state` is what the strategy hands back (a new cache, or None).
- `ops`, the activation layout: `TokenMajor` ([..., features] with `kernel`
  [in, out]: training and prefill) or `FeatureMajor` ([features, B] with
  `kernel_t` [out, in]: the CPU decode step, where `W x` reads each weight
  once), and `Streams` to run several token streams (prompts and packed
  completions) through one layer together.

An architecture variant (a sliding window, an extra norm) is thus a change
here (and, for a new parameter, in `layer_spec`) plus, for a new way of
reading keys, an attention strategy. The Flax `Decoder` declares the
parameters from `layer_spec` (names, shapes, logical axes for sharding) and
runs `layer` on them: Flax is used for declaration and initialisation only,
so there is no second copy of the maths in Linen modules. The optional C++
decode kernel (`gpg_em/kernels/decode_cpu.cc`) is a separate CPU backend,
held to this form by tests.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from gpg_em.models.config import ModelConfig
from gpg_em.models.rope import apply_rope, inverse_frequencies
from gpg_em.parallel.mesh import constrain


def compute_dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class ParamSpec(NamedTuple):
    """One parameter: shape, logical axis names (one per dimension), initialiser name."""
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: str  # "normal" (N(0, 0.02)) | "zeros" | "ones"


def _linear_spec(d_in: int, d_out: int, axes: tuple[str, str], bias: bool = False) -> dict:
    spec = {"kernel": ParamSpec((d_in, d_out), axes, "normal")}
    return spec | ({"bias": ParamSpec((d_out,), axes[1:], "zeros")} if bias else {})


def norm_spec(size: int, axis: str = "norm") -> dict:
    return {"scale": ParamSpec((size,), (axis,), "ones")}


def layer_spec(cfg: ModelConfig) -> dict:
    """The parameters of one layer: a nested dict, leaves ParamSpec (the tree `layer` reads)."""
    D, F, H, K, Dh = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn = {"q_proj": _linear_spec(D, H * Dh, ("embed", "heads"), cfg.qkv_bias),
            "k_proj": _linear_spec(D, K * Dh, ("embed", "kv_heads"), cfg.qkv_bias),
            "v_proj": _linear_spec(D, K * Dh, ("embed", "kv_heads"), cfg.qkv_bias),
            "o_proj": _linear_spec(H * Dh, D, ("heads", "embed"))}
    if cfg.qk_norm:
        attn |= {"q_norm": norm_spec(Dh, "head_dim"), "k_norm": norm_spec(Dh, "head_dim")}
    mlp = {"gate_proj": _linear_spec(D, F, ("embed", "mlp")), "up_proj": _linear_spec(D, F, ("embed", "mlp")),
           "down_proj": _linear_spec(F, D, ("mlp", "embed"))}
    return {"input_norm": norm_spec(D), "attn": attn, "post_attn_norm": norm_spec(D), "mlp": mlp}


def _rms(x, scale, eps, dt, axis):
    """RMSNorm over `axis`: x / sqrt(mean(x^2) + eps) in float32, times `scale` in dt (as HF does)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axis, keepdims=True) + eps)
    return (y.astype(dt) * scale.astype(dt)).astype(dt)


class TokenMajor:
    """Activations [B, T, features], heads [B, T, heads, Dh], kernels [in, out]; RoPE at `positions` [B, T].

    `pin`: pin activations to their logical axes (`parallel.constrain`; a no-op unless a sharded step
    is being traced). `flat`: run each linear map as one [tokens, in] product (XLA:CPU runs a rank-3
    dot's gradient, contracted over two axes, at about half the speed of the same work in 2-D).
    """

    def __init__(self, cfg: ModelConfig, positions_BxT, *, pin: bool = True, flat: bool = False):
        self.cfg, self.dt, self.positions, self.pinned, self.flat = cfg, compute_dtype(cfg), positions_BxT, pin, flat

    def linear(self, x, p):
        dt = self.dt
        if self.flat:
            y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dt), p["kernel"].astype(dt)).reshape(*x.shape[:-1], -1)
        else:
            y = jnp.dot(x.astype(dt), p["kernel"].astype(dt))
        return y + p["bias"].astype(dt) if "bias" in p else y

    def norm(self, x, scale):
        return _rms(x, scale, self.cfg.rms_norm_eps, self.dt, -1)

    head_norm = norm  # head_dim is the last axis of [B, T, heads, Dh] too

    def split_heads(self, y, role: str):
        """[B, T, n * Dh] -> [B, T, n, Dh]; role "q" (H query heads) or "kv" (K kv-heads)."""
        heads = self.cfg.num_heads if role == "q" else self.cfg.num_kv_heads
        y = y.reshape(*y.shape[:-1], heads, self.cfg.head_dim)
        return self.pin(y, "act_heads" if role == "q" else "act_kv_heads", "head_dim")

    def merge_heads(self, o):
        return o.reshape(*o.shape[:-2], -1)

    def rope(self, x):
        return apply_rope(x, self.positions, inverse_frequencies(self.cfg))

    def pin(self, x, *axes: str):
        return constrain(x, ("batch", "length", *axes)) if self.pinned else x


class FeatureMajor:
    """Activations [features, B], heads [heads, Dh, B]; kernels `kernel_t` [out, in] (or `kernel` [in, out],
    contracted on its first axis); RoPE from the tables cos, sin [Dh, B] (`decode_step.rope_cos_sin`).

    The decode step's layout: on XLA:CPU `W[out, in] @ x[in, B]` reads each weight once, streaming
    (`decode_step.decode_weights`).
    """

    def __init__(self, cfg: ModelConfig, cos_DhxB, sin_DhxB):
        self.cfg, self.dt, self.cos, self.sin = cfg, compute_dtype(cfg), cos_DhxB, sin_DhxB

    def linear(self, x_INxB, p):
        dt = self.dt
        if "kernel_t" in p:
            y = jnp.dot(p["kernel_t"].astype(dt), x_INxB.astype(dt))
        else:
            y = jax.lax.dot_general(p["kernel"].astype(dt), x_INxB.astype(dt), (((0,), (0,)), ((), ())))
        return y + p["bias"].astype(dt)[:, None] if "bias" in p else y

    def norm(self, x_DxB, scale):
        return _rms(x_DxB, scale[:, None], self.cfg.rms_norm_eps, self.dt, 0)

    def head_norm(self, x_HxDhxB, scale):
        return _rms(x_HxDhxB, scale[:, None], self.cfg.rms_norm_eps, self.dt, 1)

    def split_heads(self, y, role: str):
        heads = self.cfg.num_heads if role == "q" else self.cfg.num_kv_heads
        return y.reshape(heads, self.cfg.head_dim, y.shape[-1])

    def merge_heads(self, o_HxDhxB):
        return o_HxDhxB.reshape(-1, o_HxDhxB.shape[-1])

    def rope(self, x_HxDhxB):
        """x * cos + rotate_half(x) * sin along head_dim, in float32."""
        x = x_HxDhxB.astype(jnp.float32)
        half = x.shape[1] // 2
        rotated = jnp.concatenate([-x[:, half:], x[:, :half]], axis=1)
        return (x * self.cos + rotated * self.sin).astype(x_HxDhxB.dtype)

    def pin(self, x, *axes: str):
        return x


OPS = ("linear", "norm", "head_norm", "split_heads", "merge_heads", "rope", "pin")


class Streams:
    """Several token streams through one layer at once, stream i in the layout of `parts[i]`: every
    activation is a tuple with one entry per stream (`shared_prefix`: prompts and packed completions,
    each with its own positions), and the attention strategy sees all streams' q, k, v together."""

    def __init__(self, *parts):
        self.parts = parts

    def __getattr__(self, name: str):
        if name not in OPS:
            raise AttributeError(name)
        return lambda xs, *args: tuple(getattr(o, name)(x, *args) for o, x in zip(self.parts, xs))


Attend = Callable[[Any, Any, Any], tuple[Any, Any]]  # (q, k, v) heads -> (o heads, state)


def layer(lp, cfg: ModelConfig, x, ops, attend: Attend):
    """One pre-norm decoder layer (the formulas above) on `x` in `ops`' layout -> (x', attend's state).

    `lp` is the layer's params tree (`layer_spec`); q, k, v reach `attend` as `ops.split_heads` lays
    them out (token-major: q [B, T, H, Dh], k, v [B, T, K, Dh]), and it returns o like q.
    """
    a, m = lp["attn"], lp["mlp"]
    add = lambda u, w: jax.tree.map(jnp.add, u, w)  # u + w, per stream
    h = ops.norm(x, lp["input_norm"]["scale"])
    q = ops.split_heads(ops.linear(h, a["q_proj"]), "q")
    k = ops.split_heads(ops.linear(h, a["k_proj"]), "kv")
    v = ops.split_heads(ops.linear(h, a["v_proj"]), "kv")
    if cfg.qk_norm:
        q, k = ops.head_norm(q, a["q_norm"]["scale"]), ops.head_norm(k, a["k_norm"]["scale"])
    o, state = attend(ops.rope(q), ops.rope(k), v)
    x = add(x, ops.linear(ops.merge_heads(o), a["o_proj"]))
    h = ops.norm(x, lp["post_attn_norm"]["scale"])
    gate, up = (ops.pin(ops.linear(h, m[name]), "act_mlp") for name in ("gate_proj", "up_proj"))
    x = add(x, ops.linear(jax.tree.map(lambda g, u: jax.nn.silu(g) * u, gate, up), m["down_proj"]))
    return ops.pin(x, "act_embed"), state
