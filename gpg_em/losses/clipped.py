"""Clipped-surrogate baselines: GRPO, Dr.GRPO and RLOO.

All three share PPO's clipped surrogate on the importance ratio
`ratio = exp(logp - old_logp)` (Hugging Face TRL `GRPOTrainer`) and differ in
their advantages and their aggregation:

    GRPO     std-normalised group-mean advantages; mean_i(sum_t l / max(|o_i|, 1))
    Dr.GRPO  group-mean advantages;                sum(l * mask) / (B * L_max)
    RLOO     leave-one-out advantages;             mean_i(sum_t l / max(|o_i|, 1))

`old_logprobs` and `ref_logprobs` are constants (wrapped in stop_gradient).
`old_logprobs=None` means on-policy (one update per rollout, TRL's
num_iterations=1): old = stop_gradient(logprobs), so ratio = 1 with the
REINFORCE gradient. `clip_eps` and `kl_coef` are Python floats (static under
jit): the KL term is built only when kl_coef != 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gpg_em.losses.advantages import (advantage_stats, as_f32, fixed_length_mean, group_advantages,
                                      masked_mean, sequence_mean_batch_mean, valid_group_stats)


def _as_old(logp_BxT: jax.Array, old_logprobs: jax.Array | None) -> jax.Array:
    if old_logprobs is None:
        return jax.lax.stop_gradient(logp_BxT)
    return jax.lax.stop_gradient(as_f32(old_logprobs))


def clipped_surrogate(logp_BxT: jax.Array, old_BxT: jax.Array, adv_B: jax.Array,
                      mask_BxT: jax.Array, clip_eps: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A), [B, T], and clip metrics.

    A token is *clipped* when the clipped branch is the minimum and carries no
    gradient: ratio < 1-eps with A < 0, or ratio > 1+eps with A > 0 (TRL's
    `clip_ratio/low_mean`, `clip_ratio/high_mean`).
    """
    ratio_BxT = jnp.exp(logp_BxT - old_BxT)
    adv_Bx1 = adv_B[:, None]
    unclipped_BxT = ratio_BxT * adv_Bx1
    clipped_BxT = jnp.clip(ratio_BxT, 1.0 - clip_eps, 1.0 + clip_eps) * adv_Bx1
    per_token_BxT = -jnp.minimum(unclipped_BxT, clipped_BxT)
    low_BxT = (ratio_BxT < 1.0 - clip_eps) & (adv_Bx1 < 0)
    high_BxT = (ratio_BxT > 1.0 + clip_eps) & (adv_Bx1 > 0)
    metrics = {
        "clip_fraction": masked_mean(as_f32(low_BxT | high_BxT), mask_BxT),
        "clip_low_fraction": masked_mean(as_f32(low_BxT), mask_BxT),
        "clip_high_fraction": masked_mean(as_f32(high_BxT), mask_BxT),
        "ratio_mean": masked_mean(ratio_BxT, mask_BxT),
    }
    return per_token_BxT, metrics


def k3_kl(logp_BxT: jax.Array, ref_BxT: jax.Array) -> jax.Array:
    """Per-token KL estimate exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman's k3, TRL)."""
    delta_BxT = ref_BxT - logp_BxT
    return jnp.exp(delta_BxT) - delta_BxT - 1.0


def _surrogate_with_kl(logprobs, old_logprobs, ref_logprobs, mask, adv_B, clip_eps, kl_coef):
    """Shared body of GRPO and RLOO: per-token loss [B, T] and its metrics."""
    if kl_coef and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs (log-probs of the reference model); "
                         "got None. Pass them, or set kl_coef=0.")
    logp_BxT, mask_BxT = as_f32(logprobs), as_f32(mask)
    per_token_BxT, aux = clipped_surrogate(logp_BxT, _as_old(logp_BxT, old_logprobs), adv_B,
                                           mask_BxT, clip_eps)
    aux["policy_loss"] = sequence_mean_batch_mean(per_token_BxT, mask_BxT)
    if kl_coef:
        kl_BxT = k3_kl(logp_BxT, jax.lax.stop_gradient(as_f32(ref_logprobs)))
        per_token_BxT = per_token_BxT + kl_coef * kl_BxT
        aux["kl"] = masked_mean(kl_BxT, mask_BxT)
    return per_token_BxT, mask_BxT, aux


def _finish(aux, adv_B, valid_B, group_size):
    aux.update(valid_group_stats(valid_B, group_size))
    aux.update(advantage_stats(adv_B))
    return aux


def grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, ref_logprobs: jax.Array | None,
              mask: jax.Array, rewards: jax.Array, group_size: int, *, clip_eps: float = 0.2,
              kl_coef: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO as TRL `loss_type="grpo"`.

    A_i = (r_i - mean_g r) / (std_g + 1e-4) (Bessel std), per token
    l = -min(ratio*A, clip(ratio, 1-eps, 1+eps)*A) + beta*(exp(ref-logp) - (ref-logp) - 1),
    loss = mean_i( sum_t l*mask / max(sum_t mask, 1) ).
    `ref_logprobs` may be None when kl_coef == 0. aux: clip fractions,
    ratio_mean, policy_loss (without KL), kl (only when kl_coef != 0), group
    and advantage statistics.
    """
    adv_B, valid_B = group_advantages(rewards, group_size, estimator="mean", std_normalize=True)
    per_token_BxT, mask_BxT, aux = _surrogate_with_kl(logprobs, old_logprobs, ref_logprobs, mask,
                                                      adv_B, clip_eps, kl_coef)
    loss = sequence_mean_batch_mean(per_token_BxT, mask_BxT)
    return loss, _finish(aux, adv_B, valid_B, group_size)


def rloo_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, ref_logprobs: jax.Array | None,
              mask: jax.Array, rewards: jax.Array, group_size: int, *, clip_eps: float = 0.2,
              kl_coef: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RLOO advantages A_i = r_i - mean_{j != i in g} r_j with GRPO's clipped surrogate,
    optional k3 KL and per-sequence-mean-then-batch-mean aggregation (see `grpo_loss`).
    """
    adv_B, valid_B = group_advantages(rewards, group_size, estimator="rloo", std_normalize=False)
    per_token_BxT, mask_BxT, aux = _surrogate_with_kl(logprobs, old_logprobs, ref_logprobs, mask,
                                                      adv_B, clip_eps, kl_coef)
    loss = sequence_mean_batch_mean(per_token_BxT, mask_BxT)
    return loss, _finish(aux, adv_B, valid_B, group_size)


def dr_grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, mask: jax.Array,
                 rewards: jax.Array, group_size: int, *, max_completion_length: int,
                 clip_eps: float = 0.2) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dr.GRPO (Liu et al. 2025; TRL `loss_type="dr_grpo"`): A_i = r_i - mean_g r
    (no std), the clipped surrogate, loss = sum(l * mask) / (B * max_completion_length).

    `max_completion_length` is the generation budget L_max (a static int), not
    the padded width T of this batch: the denominator is the same constant for
    every batch, which is what removes the length bias.
    """
    if max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
    adv_B, valid_B = group_advantages(rewards, group_size, estimator="mean", std_normalize=False)
    logp_BxT, mask_BxT = as_f32(logprobs), as_f32(mask)
    per_token_BxT, aux = clipped_surrogate(logp_BxT, _as_old(logp_BxT, old_logprobs), adv_B,
                                           mask_BxT, clip_eps)
    loss = fixed_length_mean(per_token_BxT, mask_BxT, max_completion_length)
    return loss, _finish(aux, adv_B, valid_B, group_size)
