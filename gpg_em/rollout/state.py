"""The decode loop's carry: one pytree dataclass, static shape facts as non-pytree fields."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class DecodeState:
    """Carry of the jitted `while_loop`. n prompts, G samples each, B = n * G rows (prompt-major),
    P prompt slots, N = max_new_tokens; generated token t of every row sits in generated slot t."""
    step: jnp.ndarray  # [] int32: tokens produced so far (the next one is tokens[:, step])
    tokens: jnp.ndarray  # [B, N] int32, pad after the stop token
    mask: jnp.ndarray  # [B, N] int32: 1 on generated tokens up to and including the stop token
    logprobs: jnp.ndarray  # [B, N] float32, 0 where mask is 0
    entropies: jnp.ndarray  # [B, N] float32, 0 where mask is 0
    done: jnp.ndarray  # [B] bool: produced a stop token
    last: jnp.ndarray  # [B] int32: tokens[:, step - 1], the next model input
    positions: jnp.ndarray  # [B] int32: position id of `last` (prompt tokens + generated before it)
    prompt_mask: jnp.ndarray  # [n, P] bool: real prompt tokens (False on left padding)
    cache: Any  # list of decode_step.KVCache, one per layer (prompt part shared by a prompt's samples)
    rng: jax.Array  # base key; step t draws with fold_in(rng, t)
    row_ids: jnp.ndarray  # [B] int32: each row's index in the sampled batch (they differ after `compact`)
    total_rows: int = struct.field(pytree_node=False, default=0)  # rows of the sampled batch (uniform draws)

    @property
    def max_new_tokens(self) -> int:
        return self.tokens.shape[1]


class SampleOutput(NamedTuple):
    tokens: jnp.ndarray  # [B, N] int32
    mask: jnp.ndarray  # [B, N] int32
    logprobs: jnp.ndarray  # [B, N] float32, log pi(token) under the sampled tempered policy
    entropies: jnp.ndarray  # [B, N] float32, full-vocabulary entropy of that policy
