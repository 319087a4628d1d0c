"""Rotary position embeddings (Su et al. 2021) in the "rotate half" layout of
Hugging Face Llama/Qwen, with Llama 3 and linear frequency scaling."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from gpg_em.models.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """inv_freq[i] = theta^(-2i/d), rescaled per `cfg.rope_scaling`; float32 [head_dim/2].

    Llama 3 scaling (Meta's release): wavelengths longer than
    original_max / low_freq_factor are divided by `factor`, shorter than
    original_max / high_freq_factor are kept, and in between the two are
    blended with smooth = (original_max / wavelen - low) / (high - low).
    """
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    scaling = cfg.rope_scaling_dict
    if not scaling:
        return inv.astype(np.float32)
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return (inv / float(scaling["factor"])).astype(np.float32)
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported; expected 'llama3' or 'linear'")
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = np.where(wavelen > original / low, inv / factor, inv)
    medium = (wavelen <= original / low) & (wavelen >= original / high)
    return np.where(medium, blended, out).astype(np.float32)


def apply_rope(x_BxTxHxD: jnp.ndarray, positions_BxT: jnp.ndarray, inv_freq: np.ndarray) -> jnp.ndarray:
    """Rotates q or k: x * cos + rotate_half(x) * sin, angles = position * inv_freq (float32)."""
    angles = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x = x_BxTxHxD.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x_BxTxHxD.dtype)
