"""Group advantages and the masked reductions every loss shares.

A batch holds `B` completions in `B / G` groups of `G` consecutive rows that
answer the same prompt. All functions are pure, reduce in float32 and are
jittable with `group_size` and the string options static.

This module is the single home of the masked reductions (`masked_sum`,
`masked_mean`, `sequence_mean`, ...): the loss modules import them from here
rather than re-deriving `sum(x * mask) / max(sum(mask), 1)` each time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

STD_EPS = 1e-4  # added to the group std before dividing, as TRL does
ESTIMATORS = ("mean", "rloo")


# ----------------------------------------------------------------------------
# Masked reductions (float32; an empty mask reduces to 0, never NaN).
# ----------------------------------------------------------------------------

def as_f32(x: jax.Array) -> jax.Array:
    """Casts any float/bool/int array to float32 (masks may arrive as bool)."""
    return jnp.asarray(x).astype(jnp.float32)


def safe_denominator(d: jax.Array) -> jax.Array:
    """max(d, 1): a count of zero tokens divides a zero numerator by one."""
    return jnp.maximum(d, 1.0)


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """sum(x * mask) over `axis` in float32."""
    return jnp.sum(as_f32(x) * as_f32(mask), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """sum(x * mask) / max(sum(mask), 1) over `axis`: 0 where the mask is empty."""
    return masked_sum(x, mask, axis) / safe_denominator(jnp.sum(as_f32(mask), axis=axis))


def sequence_mean(x_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """Per-sequence token mean, [B]: sum_t x*mask / max(sum_t mask, 1)."""
    return masked_mean(x_BxT, mask_BxT, axis=-1)


def sequence_mean_batch_mean(x_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """mean_i( sum_t x*mask / max(sum_t mask, 1) ): TRL's `loss_type="grpo"`."""
    return jnp.mean(sequence_mean(x_BxT, mask_BxT))


def fixed_length_mean(x_BxT: jax.Array, mask_BxT: jax.Array, max_length: int) -> jax.Array:
    """sum(x*mask) / (B * max_length): Dr.GRPO's length-unbiased aggregation."""
    return masked_sum(x_BxT, mask_BxT) / (x_BxT.shape[0] * float(max_length))


RATIO_AGGREGATIONS = ("seq_mean", "token_mean", "fixed_length")


def aggregate(x_BxT: jax.Array, mask_BxT: jax.Array, aggregation: str, max_completion_length: int = 0) -> jax.Array:
    """A per-token loss [B, T] reduced to a scalar by name.

    seq_mean      mean_i( sum_t x*mask / max(sum_t mask, 1) )  TRL loss_type="grpo"; verl seq-mean-token-mean
    token_mean    sum(x*mask) / max(sum(mask), 1)              verl token-mean; TRL "dapo"/"bnpo"
    fixed_length  sum(x*mask) / (B * max_completion_length)    Dr.GRPO (TRL "dr_grpo")
    """
    if aggregation == "seq_mean":
        return sequence_mean_batch_mean(x_BxT, mask_BxT)
    if aggregation == "token_mean":
        return masked_mean(x_BxT, mask_BxT)
    if aggregation == "fixed_length":
        if max_completion_length < 1:
            raise ValueError("aggregation='fixed_length' needs max_completion_length >= 1, "
                             f"got {max_completion_length}")
        return fixed_length_mean(x_BxT, mask_BxT, max_completion_length)
    raise ValueError(f"unknown loss aggregation {aggregation!r}; expected one of {RATIO_AGGREGATIONS}")


# ----------------------------------------------------------------------------
# Group advantages.
# ----------------------------------------------------------------------------

def num_groups(batch_size: int, group_size: int) -> int:
    """B / G, raising (at trace time) when the batch does not split into groups."""
    if group_size < 1 or batch_size % group_size:
        raise ValueError(f"batch of {batch_size} rows does not split into groups of {group_size}")
    return batch_size // group_size


def group_advantages(rewards: jax.Array, group_size: int, *, estimator: str = "mean",
                     std_normalize: bool = False, scale_batch: bool = False) -> tuple[jax.Array, jax.Array]:
    """Group-relative advantages, [B], and the per-row validity of their group, [B] bool.

    mean: A_i = r_i - mean_g(r)                      (GPG, Dr.GRPO; GRPO with std)
    rloo: A_i = r_i - mean_{j != i in g} r_j = G/(G-1) (r_i - mean_g(r))
    std_normalize: A_i / (std_g + 1e-4), std with Bessel's correction (TRL,
    `torch.std`), computed from the group-mean residuals.
    scale_batch (with std_normalize; GPG's official `scale_batch`, open-rs
    `gpg_std_trainer.py`): divide by std_batch + 1e-4 instead, the Bessel std
    of all B rewards of the batch.

    A group is *valid* when its rewards are not all equal (std > 0). This is
    tested as max_g(r) > min_g(r), exactly, because a float32 std of equal
    rewards can round to a tiny non-zero value. Invalid groups get exactly
    zero advantage. `group_size == 1` has no within-group comparison: every
    group is invalid and every advantage is 0 (no NaN from G - 1 = 0).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; expected one of {ESTIMATORS}")
    r_B = as_f32(rewards)
    if r_B.ndim != 1:
        raise ValueError(f"rewards must be [B], got shape {r_B.shape}")
    n = num_groups(r_B.shape[0], group_size)
    r_NxG = r_B.reshape(n, group_size)
    valid_N = jnp.max(r_NxG, axis=1) > jnp.min(r_NxG, axis=1)
    mean_Nx1 = jnp.mean(r_NxG, axis=1, keepdims=True)
    # max(G - 1, 1) keeps G == 1 finite; those groups are all invalid anyway.
    bessel = float(max(group_size - 1, 1))
    if estimator == "rloo":
        loo_mean_NxG = (jnp.sum(r_NxG, axis=1, keepdims=True) - r_NxG) / bessel
        adv_NxG = r_NxG - loo_mean_NxG
    else:
        adv_NxG = r_NxG - mean_Nx1
    if scale_batch and not std_normalize:
        raise ValueError("scale_batch divides by the batch std: it needs std_normalize=True")
    if std_normalize and scale_batch:
        adv_NxG = adv_NxG / (batch_std(r_B) + STD_EPS)
    elif std_normalize:
        std_Nx1 = jnp.sqrt(jnp.sum(jnp.square(r_NxG - mean_Nx1), axis=1, keepdims=True) / bessel)
        adv_NxG = adv_NxG / (std_Nx1 + STD_EPS)
    adv_NxG = jnp.where(valid_N[:, None], adv_NxG, 0.0)
    valid_B = jnp.repeat(valid_N, group_size)
    return jax.lax.stop_gradient(adv_NxG.reshape(-1)), valid_B


def batch_std(r_B: jax.Array) -> jax.Array:
    """Bessel std of all rewards of the batch, sqrt(sum (r - mean r)^2 / max(B - 1, 1)) (`torch.std`)."""
    return jnp.sqrt(jnp.sum(jnp.square(r_B - jnp.mean(r_B))) / max(r_B.shape[0] - 1, 1))


def valid_group_stats(valid_B: jax.Array, group_size: int) -> dict[str, jax.Array]:
    """n_valid_groups, n_groups, valid_fraction and GPG's inverse_alpha (float32).

    inverse_alpha = min(1, n_valid_groups / n_groups) (GPG's AGE, Eq. 12 of the
    paper); it is 0 for a batch without a valid group: callers divide by it only
    through `safe_inverse_alpha`.
    """
    n = num_groups(valid_B.shape[0], group_size)
    n_valid = jnp.sum(as_f32(valid_B)) / group_size
    fraction = n_valid / n
    return {
        "n_valid_groups": n_valid,
        "n_groups": jnp.float32(n),
        "valid_fraction": fraction,
        "inverse_alpha": jnp.minimum(1.0, fraction),
    }


def safe_inverse_alpha(inverse_alpha: jax.Array) -> jax.Array:
    """inverse_alpha, or 1 when it is 0 (then every advantage, hence the loss, is 0)."""
    return jnp.where(inverse_alpha > 0, inverse_alpha, 1.0)


def advantage_stats(adv_B: jax.Array) -> dict[str, jax.Array]:
    """Row-level summaries of the advantages for logging."""
    return {
        "advantage_mean": jnp.mean(adv_B),
        "advantage_std": jnp.std(adv_B),
        "advantage_abs_max": jnp.max(jnp.abs(adv_B)),
    }
