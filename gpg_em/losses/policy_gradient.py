"""GPG: Group Policy Gradient (Chu et al. 2025, arXiv 2504.02546).

Plain REINFORCE on the original objective with a group-mean baseline: no
importance ratio, no clipping, no KL and no reference model. The source of
truth is the official trainer (open-r1 `gpg_trainer.py` in AMAP-ML/GPG).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gpg_em.losses.advantages import (advantage_stats, as_f32, group_advantages, masked_mean,
                                      safe_inverse_alpha, valid_group_stats)

AGGREGATIONS = ("token_mean", "valid_token_mean")


def gpg_loss(logprobs: jax.Array, mask: jax.Array, rewards: jax.Array, group_size: int, *,
             std_normalize: bool = False, scale_batch: bool = False, age: bool = True,
             aggregation: str = "token_mean", age_micro_steps: int = 1,
             age_devices: int = 1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GPG loss on log-probs [B, T] of completions, `mask` [B, T], `rewards` [B].

    Per token: l[i,t] = -logp[i,t] * A_i, A_i = r_i - mean_g(r) (optionally
    divided by std_g + 1e-4).

    aggregation="token_mean" (the official code):
        loss = sum(l * mask) / sum(mask)  over the whole batch,
        and with `age` (accurate gradient estimation)
        loss = loss / inverse_alpha,  inverse_alpha = min(1, n_valid_groups / n_groups),
        i.e. the gradient is scaled by alpha = B / (B - M), M the invalid groups.
    aggregation="valid_token_mean" (the masked-valid mean):
        loss = sum(l * mask * valid) / sum(mask * valid),
        the token mean over the tokens of valid groups only. This *is* the AGE
        correction measured in tokens instead of groups: with equal completion
        lengths sum(mask * valid) = inverse_alpha * sum(mask), so it equals
        token_mean / inverse_alpha exactly. AGE is therefore not applied a
        second time; it requires `age=True` (the default) and raises otherwise,
        since an un-rescaled masked-valid mean does not exist.

    age_micro_steps K, age_devices D (the official code's form; default 1, 1 = the
    whole batch as above): the batch is K gradient-accumulation micro-steps of D
    devices' consecutive rows each, [K, D, B/(K*D)]. Each micro-step k has its
    own inverse_alpha_k over its K-th of the groups (rewards are gathered across
    devices there), each device its own token mean, and the gradients average:
        loss = mean_{k,d}( token_mean_{k,d} / inverse_alpha_k ).
    With equal token counts and equal valid fractions per chunk it equals the
    whole-batch form; otherwise the two differ (the official code's AGE is
    noisier). Only with aggregation="token_mean".

    scale_batch (with std_normalize): the batch std instead of the group std
    (`group_advantages`).

    Neither aggregation needs a valid group: without one, A = 0 everywhere and
    the loss and its gradient are exactly 0 (the reference divides by zero).
    Fully masked rows and batches reduce to 0 too.

    aux: inverse_alpha (group-level, as the reference logs it), valid_fraction,
    n_valid_groups, n_groups, valid_token_fraction, loss_unscaled (before AGE)
    and advantage statistics; all float32 scalars.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown GPG aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
    if aggregation == "valid_token_mean" and not age:
        raise ValueError("aggregation='valid_token_mean' is itself the AGE rescaling; "
                         "use aggregation='token_mean', age=False for GPG with alpha = 1")
    chunks = age_micro_steps * age_devices
    if chunks > 1 and aggregation != "token_mean":
        raise ValueError("age_micro_steps/age_devices > 1 is the official code's token_mean form; "
                         f"got aggregation={aggregation!r}")
    logp_BxT, mask_BxT = as_f32(logprobs), as_f32(mask)
    adv_B, valid_B = group_advantages(rewards, group_size, estimator="mean",
                                      std_normalize=std_normalize, scale_batch=scale_batch)
    groups = valid_group_stats(valid_B, group_size)
    per_token_BxT = -logp_BxT * adv_B[:, None]
    valid_mask_BxT = mask_BxT * as_f32(valid_B)[:, None]

    unscaled = masked_mean(per_token_BxT, mask_BxT)
    if chunks > 1:
        unscaled, loss = micro_step_age(per_token_BxT, mask_BxT, valid_B, group_size, age_micro_steps,
                                        age_devices, age)
    elif aggregation == "valid_token_mean":
        loss = masked_mean(per_token_BxT, valid_mask_BxT)
    elif age:
        loss = unscaled / safe_inverse_alpha(groups["inverse_alpha"])
    else:
        loss = unscaled
    aux = dict(groups)
    aux["valid_token_fraction"] = jnp.sum(valid_mask_BxT) / jnp.maximum(jnp.sum(mask_BxT), 1.0)
    aux["loss_unscaled"] = unscaled
    aux.update(advantage_stats(adv_B))
    return loss, aux


def micro_step_age(per_token_BxT: jax.Array, mask_BxT: jax.Array, valid_B: jax.Array, group_size: int,
                   micro_steps: int, devices: int, age: bool) -> tuple[jax.Array, jax.Array]:
    """(mean_{k,d} token_mean_{k,d}, mean_{k,d} token_mean_{k,d} / inverse_alpha_k): GPG's AGE per
    gradient-accumulation micro-step k and device d (`gpg_loss`), rows [K, D, R] in order."""
    B, T = per_token_BxT.shape
    n = micro_steps * devices
    if B % (n * group_size):
        raise ValueError(f"age_micro_steps*age_devices = {n} does not split {B} rows into whole groups "
                         f"of {group_size}")
    tm_KxD = masked_mean(per_token_BxT.reshape(micro_steps, devices, -1, T),
                         mask_BxT.reshape(micro_steps, devices, -1, T), axis=(2, 3))
    valid_KxR = valid_B.reshape(micro_steps, -1)
    inverse_alpha_K = jnp.minimum(1.0, jnp.mean(as_f32(valid_KxR), axis=1))  # valid rows = valid groups * G
    unscaled = jnp.mean(tm_KxD)
    if not age:
        return unscaled, unscaled
    return unscaled, jnp.mean(tm_KxD / safe_inverse_alpha(inverse_alpha_K)[:, None])
