"""The functional model API: a plain params pytree plus a static config.

`Model` bundles `.params` (Linen's nested dict of arrays), `.config` and
`.tokenizer`. Every jitted function takes `params` and a static `cfg`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpg_em.models.config import ModelConfig
from gpg_em.models.decoder import Decoder


@dataclasses.dataclass
class Model:
    params: Any  # nested dict of arrays, Decoder's param tree
    config: ModelConfig
    tokenizer: Any = None  # a transformers tokenizer, when known


def positions_from_mask(mask_BxT: jnp.ndarray) -> jnp.ndarray:
    """Position of each token counting only real tokens: cumsum(mask) - 1, floored at 0.

    This makes left- and right-padded rows produce the same logits as unpadded ones.
    """
    return jnp.maximum(jnp.cumsum(mask_BxT.astype(jnp.int32), axis=1) - 1, 0)


def init_params(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Randomly initialised parameters (normal(0.02) kernels, unit norms), unboxed."""
    ids = jnp.zeros((1, 1), jnp.int32)
    variables = Decoder(cfg).init(rng, ids, ids, jnp.ones((1, 1), bool))
    return nn.unbox(variables["params"])


def logical_axes(cfg: ModelConfig) -> dict:
    """Same tree as the params, each leaf a PartitionSpec of logical axis names."""
    ids = jnp.zeros((1, 1), jnp.int32)
    abstract = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.PRNGKey(0), ids, ids, jnp.ones((1, 1), bool)))
    return nn.get_partition_spec(abstract)["params"]


def hidden_states(params, cfg: ModelConfig, input_ids_BxT, attention_mask_BxT):
    """Final-norm hidden states [B, T, D] of a padded batch (no cache)."""
    mask = attention_mask_BxT.astype(bool)
    hidden, _ = Decoder(cfg).apply({"params": params}, input_ids_BxT, positions_from_mask(mask), mask)
    return hidden


def head_weight(params, cfg: ModelConfig) -> jnp.ndarray:
    """Output projection [D, V]; the transposed embedding when tied."""
    return params["embed"].T if cfg.tie_embeddings else params["lm_head"]


@functools.partial(jax.jit, static_argnums=(1,))
def _logits(params, cfg, input_ids, attention_mask):
    hidden = hidden_states(params, cfg, input_ids, attention_mask)
    return jnp.dot(hidden, head_weight(params, cfg).astype(hidden.dtype), preferred_element_type=jnp.float32)


def forward(model: Model, input_ids_BxT, attention_mask_BxT=None) -> jnp.ndarray:
    """Float32 logits [B, T, V]. Padding (left or right) is given by `attention_mask`.

    Materialises all logits: for training use `gpg_em.models.token_logprobs`.
    """
    input_ids = jnp.asarray(input_ids_BxT, jnp.int32)
    mask = jnp.ones_like(input_ids) if attention_mask_BxT is None else jnp.asarray(attention_mask_BxT)
    return _logits(model.params, model.config, input_ids, mask)
