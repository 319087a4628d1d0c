"""Clipped-surrogate baselines: GRPO, Dr.GRPO and RLOO.

All three share PPO's clipped surrogate on the importance ratio
`ratio = exp(logp - old_logp)` (Hugging Face TRL `GRPOTrainer`) and differ in
their advantages and their default aggregation (`aggregation=`, any of the three
for any of the losses; `advantages.aggregate`):

    GRPO     std-normalised group-mean advantages; seq_mean     mean_i(sum_t l / max(|o_i|, 1))
    Dr.GRPO  group-mean advantages;                fixed_length sum(l * mask) / (B * L_max)
    RLOO     leave-one-out advantages;             seq_mean     (verl's RLOO: token_mean)

Options shared by the three: the k3 KL to a reference model at `kl_coef`,
optionally clamped to [-kl_clamp, kl_clamp] (verl's `low_var_kl` clamps at 10),
and an entropy bonus `- entropy_coef * aggregate(H)` (verl's `entropy_coeff`).
The KL and the entropy are aggregated like the surrogate.

`old_logprobs` and `ref_logprobs` are constants (wrapped in stop_gradient).
`old_logprobs=None` means on-policy (one update per rollout, TRL's
num_iterations=1): old = stop_gradient(logprobs), so ratio = 1 with the
REINFORCE gradient. The float options are Python floats (static under jit):
the KL and entropy terms are built only when their coefficient is non-zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gpg_em.losses.advantages import (RATIO_AGGREGATIONS, advantage_stats, aggregate, as_f32, group_advantages,
                                      masked_mean, valid_group_stats)


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


def k3_kl(logp_BxT: jax.Array, ref_BxT: jax.Array, clamp: float = 0.0) -> jax.Array:
    """Per-token KL estimate exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman's k3, TRL).

    clamp > 0: clipped to [-clamp, clamp] (verl `kl_penalty="low_var_kl"`, clamp 10); no gradient
    flows through a clipped token.
    """
    delta_BxT = ref_BxT - logp_BxT
    kl_BxT = jnp.exp(delta_BxT) - delta_BxT - 1.0
    return jnp.clip(kl_BxT, -clamp, clamp) if clamp > 0 else kl_BxT


def _ratio_loss(logprobs, old_logprobs, ref_logprobs, entropies, mask, adv_B, *, clip_eps: float,
                kl_coef: float, kl_clamp: float, entropy_coef: float, aggregation: str,
                max_completion_length: int):
    """The body every ratio loss shares: (loss, aux) of surrogate + KL - entropy bonus, aggregated."""
    if aggregation not in RATIO_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; expected one of {RATIO_AGGREGATIONS}")
    if kl_coef and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs (log-probs of the reference model); "
                         "got None. Pass them, or set kl_coef=0.")
    if entropy_coef and entropies is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs entropies; got None. Pass them, or set entropy_coef=0.")
    agg = lambda x_BxT: aggregate(x_BxT, mask_BxT, aggregation, max_completion_length)
    logp_BxT, mask_BxT = as_f32(logprobs), as_f32(mask)
    per_token_BxT, aux = clipped_surrogate(logp_BxT, _as_old(logp_BxT, old_logprobs), adv_B,
                                           mask_BxT, clip_eps)
    aux["policy_loss"] = agg(per_token_BxT)
    if kl_coef:
        kl_BxT = k3_kl(logp_BxT, jax.lax.stop_gradient(as_f32(ref_logprobs)), kl_clamp)
        per_token_BxT = per_token_BxT + kl_coef * kl_BxT
        aux["kl"] = masked_mean(kl_BxT, mask_BxT)
    loss = agg(per_token_BxT)
    if entropy_coef:
        entropy = agg(as_f32(entropies))
        loss = loss - entropy_coef * entropy
        aux["entropy_bonus"] = jax.lax.stop_gradient(entropy)
    return loss, aux


def _finish(aux, adv_B, valid_B, group_size):
    aux.update(valid_group_stats(valid_B, group_size))
    aux.update(advantage_stats(adv_B))
    return aux


def grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, ref_logprobs: jax.Array | None,
              mask: jax.Array, rewards: jax.Array, group_size: int, *, clip_eps: float = 0.2,
              kl_coef: float = 0.0, kl_clamp: float = 0.0, entropies: jax.Array | None = None,
              entropy_coef: float = 0.0, aggregation: str = "seq_mean",
              max_completion_length: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO as TRL `loss_type="grpo"`.

    A_i = (r_i - mean_g r) / (std_g + 1e-4) (Bessel std), per token
    l = -min(ratio*A, clip(ratio, 1-eps, 1+eps)*A) + beta*(exp(ref-logp) - (ref-logp) - 1),
    loss = mean_i( sum_t l*mask / max(sum_t mask, 1) )  (aggregation="seq_mean"; module docstring
    for the others, the KL clamp and the entropy bonus).
    `ref_logprobs` may be None when kl_coef == 0. aux: clip fractions,
    ratio_mean, policy_loss (without KL), kl (only when kl_coef != 0), group
    and advantage statistics.
    """
    adv_B, valid_B = group_advantages(rewards, group_size, estimator="mean", std_normalize=True)
    loss, aux = _ratio_loss(logprobs, old_logprobs, ref_logprobs, entropies, mask, adv_B, clip_eps=clip_eps,
                            kl_coef=kl_coef, kl_clamp=kl_clamp, entropy_coef=entropy_coef,
                            aggregation=aggregation, max_completion_length=max_completion_length)
    return loss, _finish(aux, adv_B, valid_B, group_size)


def rloo_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, ref_logprobs: jax.Array | None,
              mask: jax.Array, rewards: jax.Array, group_size: int, *, clip_eps: float = 0.2,
              kl_coef: float = 0.0, kl_clamp: float = 0.0, entropies: jax.Array | None = None,
              entropy_coef: float = 0.0, aggregation: str = "seq_mean",
              max_completion_length: int = 0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RLOO advantages A_i = r_i - mean_{j != i in g} r_j with GRPO's clipped surrogate,
    optional k3 KL and per-sequence-mean-then-batch-mean aggregation by default (see `grpo_loss`;
    verl's RLOO, as the EM-RL release trains, uses aggregation="token_mean").
    """
    adv_B, valid_B = group_advantages(rewards, group_size, estimator="rloo", std_normalize=False)
    loss, aux = _ratio_loss(logprobs, old_logprobs, ref_logprobs, entropies, mask, adv_B, clip_eps=clip_eps,
                            kl_coef=kl_coef, kl_clamp=kl_clamp, entropy_coef=entropy_coef,
                            aggregation=aggregation, max_completion_length=max_completion_length)
    return loss, _finish(aux, adv_B, valid_B, group_size)


def dr_grpo_loss(logprobs: jax.Array, old_logprobs: jax.Array | None, mask: jax.Array,
                 rewards: jax.Array, group_size: int, *, max_completion_length: int,
                 clip_eps: float = 0.2, ref_logprobs: jax.Array | None = None, kl_coef: float = 0.0,
                 kl_clamp: float = 0.0, entropies: jax.Array | None = None, entropy_coef: float = 0.0,
                 aggregation: str = "fixed_length") -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dr.GRPO (Liu et al. 2025; TRL `loss_type="dr_grpo"`): A_i = r_i - mean_g r
    (no std), the clipped surrogate plus, as in TRL, the optional k3 KL (`kl_coef`, added per token
    before aggregating), loss = sum(l * mask) / (B * max_completion_length).

    `max_completion_length` is the generation budget L_max (a static int), not
    the padded width T of this batch: the denominator is the same constant for
    every batch, which is what removes the length bias.
    """
    if max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
    adv_B, valid_B = group_advantages(rewards, group_size, estimator="mean", std_normalize=False)
    loss, aux = _ratio_loss(logprobs, old_logprobs, ref_logprobs, entropies, mask, adv_B, clip_eps=clip_eps,
                            kl_coef=kl_coef, kl_clamp=kl_clamp, entropy_coef=entropy_coef,
                            aggregation=aggregation, max_completion_length=max_completion_length)
    return loss, _finish(aux, adv_B, valid_B, group_size)
