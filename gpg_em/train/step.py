"""The one update step every algorithm shares: `(state, batch, rng) -> (state, metrics)`.

Micro-batching without changing the loss: the batch is split into
`micro_batch_size` rows, and each micro-batch's log-probs are computed inside
`lax.map` under `jax.checkpoint`. The loss then sees the whole batch's
[B, N] log-probs (so group advantages, AGE's inverse_alpha and every
normaliser are those of the full batch), while the backward pass recomputes
one micro-batch's activations at a time: memory grows with the micro-batch,
not the batch, and the gradient is exactly the full-batch gradient.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from gpg_em.models import ModelConfig, completion_logprobs
from gpg_em.parallel import batch_sharding, replicated
from gpg_em.train.objective import Objective, objective_loss

_ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    objective: Objective
    micro_batch_size: int = 0  # 0: the whole batch at once
    temperature: float = 1.0  # the sampler's temperature: log-probs are of the tempered policy
    chunk_size: int = 128  # sequence chunk of the log-prob head


def batch_logprobs(params, cfg: ModelConfig, batch, *, micro_batch_size: int, temperature: float,
                   chunk_size: int, remat: bool):
    """(logp, entropy) [B, N] of the batch's completions, micro-batch by micro-batch."""
    one = lambda p, rows: completion_logprobs(p, cfg, rows["prompt_ids"], rows["prompt_mask"],
                                              rows["completion_ids"], rows["completion_mask"],
                                              temperature=temperature, chunk_size=chunk_size)
    rows = {k: batch[k] for k in _ROW_KEYS}
    B = rows["prompt_ids"].shape[0]
    mb = micro_batch_size or B
    if B % mb:
        raise ValueError(f"micro_batch_size={mb} does not divide the batch of {B} rows")
    if mb == B:
        return one(params, rows)
    split = jax.tree.map(lambda x: x.reshape(B // mb, mb, *x.shape[1:]), rows)
    body = jax.checkpoint(lambda r: one(params, r)) if remat else (lambda r: one(params, r))
    logp, ent = jax.lax.map(body, split)
    return logp.reshape(B, -1), ent.reshape(B, -1)


def loss_fn(params, cfg: ModelConfig, sc: StepConfig, batch):
    logp, ent = batch_logprobs(params, cfg, batch, micro_batch_size=sc.micro_batch_size,
                               temperature=sc.temperature, chunk_size=sc.chunk_size, remat=True)
    return objective_loss(sc.objective, logp, ent, batch)


def update_step(state, batch, rng, *, cfg: ModelConfig, sc: StepConfig, tx: optax.GradientTransformation,
                schedule):
    """One optimizer update on one batch. `rng` is accepted for losses that sample (none do yet)."""
    del rng
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, cfg, sc, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step), **aux}
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def batch_shardings(batch, mesh: Mesh):
    return {k: batch_sharding(mesh, v.ndim) for k, v in batch.items()}


def jit_update_step(cfg: ModelConfig, sc: StepConfig, tx, schedule, mesh: Mesh, state_shardings, batch_keys):
    """`update_step` jitted once with explicit shardings; the state is donated (updated in place)."""
    fn = functools.partial(update_step, cfg=cfg, sc=sc, tx=tx, schedule=schedule)
    ndims = {"rewards": 1}
    b_shard = {k: batch_sharding(mesh, ndims.get(k, 2)) for k in batch_keys}
    return jax.jit(fn, in_shardings=(state_shardings, b_shard, replicated(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))


def jit_logprobs(cfg: ModelConfig, sc: StepConfig, mesh: Mesh, param_shardings):
    """Log-probs [B, N] of a batch under given params (old policy or frozen reference): no gradient."""
    def fn(params, rows):
        return batch_logprobs(params, cfg, rows, micro_batch_size=sc.micro_batch_size,
                              temperature=sc.temperature, chunk_size=sc.chunk_size, remat=False)[0]
    b_shard = {k: batch_sharding(mesh, 2) for k in _ROW_KEYS}
    jitted = jax.jit(fn, in_shardings=(param_shardings, b_shard), out_shardings=batch_sharding(mesh, 2))
    return lambda params, batch: jitted(params, {k: batch[k] for k in _ROW_KEYS})
