"""Entropy minimisation (Agarwal et al. 2025, arXiv 2505.15134): EM-FT and EM-RL.

`entropies` [B, T] are full-vocabulary entropies H[i,t] = -sum_v p_v log p_v of
the policy at each completion position, computed by the model code in chunks
(never a [B, T, V] float32 tensor for the whole batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gpg_em.losses.advantages import as_f32, masked_mean, masked_sum, sequence_mean

EM_FT_REDUCTIONS = ("seq_sum", "token_mean")
EM_RL_KINDS = ("trajectory", "token")
EM_RL_REDUCTIONS = ("sum", "mean")


def em_ft_loss(entropies: jax.Array, mask: jax.Array, *,
               reduction: str = "seq_sum") -> tuple[jax.Array, dict[str, jax.Array]]:
    """EM-FT: minimise the token entropy of the policy's own fresh samples (no labels).

    seq_sum    (paper, Eq. 2): (1/N) sum_i sum_t H[i,t] * mask[i,t], N = B.
    token_mean (option):       sum(H * mask) / max(sum(mask), 1).
    The gradient flows through `entropies`; the samples themselves are data.
    aux: entropy_token_mean, entropy_seq_sum_mean, completion_length_mean.
    """
    if reduction not in EM_FT_REDUCTIONS:
        raise ValueError(f"unknown EM-FT reduction {reduction!r}; expected one of {EM_FT_REDUCTIONS}")
    h_BxT, mask_BxT = as_f32(entropies), as_f32(mask)
    seq_sum = masked_sum(h_BxT, mask_BxT) / h_BxT.shape[0]
    token_mean = masked_mean(h_BxT, mask_BxT)
    loss = seq_sum if reduction == "seq_sum" else token_mean
    aux = {
        "entropy_token_mean": jax.lax.stop_gradient(token_mean),
        "entropy_seq_sum_mean": jax.lax.stop_gradient(seq_sum),
        "completion_length_mean": jnp.mean(jnp.sum(mask_BxT, axis=-1)),
    }
    return loss, aux


def em_rl_reward(mask: jax.Array, *, logprobs: jax.Array | None = None,
                 entropies: jax.Array | None = None, kind: str = "trajectory",
                 reduction: str = "sum") -> jax.Array:
    """EM-RL reward [B] from the policy's own confidence, under stop_gradient.

    kind="trajectory" (paper, Eq. 3): r_i = sum_t logp[i,t]      (needs `logprobs`)
    kind="token"      (paper, Eq. 4): r_i = -sum_t H[i,t]        (needs `entropies`)
    reduction="sum" is the paper; reduction="mean" is the released code's
    per-token mean, sum_t x*mask / max(sum_t mask, 1), so an empty completion
    scores 0 (never NaN) under both reductions.
    """
    if kind not in EM_RL_KINDS:
        raise ValueError(f"unknown EM-RL reward kind {kind!r}; expected one of {EM_RL_KINDS}")
    if reduction not in EM_RL_REDUCTIONS:
        raise ValueError(f"unknown EM-RL reduction {reduction!r}; expected one of {EM_RL_REDUCTIONS}")
    if kind == "trajectory":
        if logprobs is None:
            raise ValueError("em_rl_reward(kind='trajectory') needs `logprobs`; got None")
        x_BxT, sign = logprobs, 1.0
    else:
        if entropies is None:
            raise ValueError("em_rl_reward(kind='token') needs `entropies`; got None")
        x_BxT, sign = entropies, -1.0
    if reduction == "sum":
        r_B = masked_sum(x_BxT, mask, axis=-1)
    else:
        r_B = sequence_mean(x_BxT, mask)
    return jax.lax.stop_gradient(sign * r_B)
