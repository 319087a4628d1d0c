"""Which loss an algorithm trains with, and how the batch feeds it.

Every algorithm is a loss name from `gpg_em.losses.LOSSES` plus static
keyword options. The batch always has the same keys, so one update step
serves them all:

    prompt_ids [B, P] int32 (left-padded), prompt_mask [B, P],
    completion_ids [B, N] int32 (right-padded), completion_mask [B, N],
    rewards [B] float32, and optionally old_logprobs [B, N], ref_logprobs [B, N].
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gpg_em.losses import LOSS_INPUTS, get_loss, masked_mean
from gpg_em.losses.registry import GROUPED

# Losses with an importance ratio: their old log-probs are recorded once per rollout.
RATIO_LOSSES = frozenset({"grpo", "dr_grpo", "rloo"})


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: str
    group_size: int
    options: tuple = ()  # sorted (key, value) pairs: the loss's static keyword options

    @property
    def kwargs(self) -> dict:
        return dict(self.options)

    @property
    def uses_ratio(self) -> bool:
        return self.loss in RATIO_LOSSES

    @property
    def kl_coef(self) -> float:
        return float(self.kwargs.get("kl_coef", 0.0))


def make_objective(loss: str, group_size: int, **options) -> Objective:
    get_loss(loss)  # refuses unknown names with the list of known ones
    return Objective(loss, group_size, tuple(sorted(options.items())))


def objective_loss(obj: Objective, logprobs_BxN, entropies_BxN, batch) -> tuple[jax.Array, dict]:
    """(loss, aux) of `obj` on the current log-probs/entropies and the batch."""
    inputs = {
        "logprobs": logprobs_BxN,
        "entropies": entropies_BxN,
        "mask": batch["completion_mask"],
        "rewards": batch["rewards"],
        "old_logprobs": batch.get("old_logprobs"),
        "ref_logprobs": batch.get("ref_logprobs"),
    }
    kwargs = {name: inputs[name] for name in LOSS_INPUTS[obj.loss]}
    if obj.loss in GROUPED:
        kwargs["group_size"] = obj.group_size
    loss, aux = get_loss(obj.loss)(**kwargs, **obj.kwargs)
    mask = batch["completion_mask"]
    aux = dict(aux)
    aux["entropy_mean"] = jax.lax.stop_gradient(masked_mean(entropies_BxN, mask))
    aux["completion_length_mean"] = jnp.mean(jnp.sum(mask.astype(jnp.float32), axis=1))
    aux["reward_mean"] = jnp.mean(batch["rewards"].astype(jnp.float32))
    return loss, aux
