"""The one update step every algorithm shares: `(state, batch, rng) -> (state, metrics)`.

Micro-batching without changing the loss. Every loss here is a sum of
per-row terms whose normalisers (token counts, group advantages, AGE's
inverse_alpha, B * L_max) depend on masks and rewards only, never on the
log-probs. So the gradient of the full-batch loss L(lp_1, ..., lp_M) is the
sum over micro-batches m of the gradient of L with only lp_m live and the
other rows held constant (their values do not enter d L / d lp_m). Each
micro-batch does one forward and one backward inside a `lax.scan` that
accumulates the gradient; memory grows with the micro-batch, not the batch,
and the loss and metrics are evaluated once on the assembled [B, N] arrays,
with the full batch's normalisers. A loss that couples rows through the
log-probs would break this: `tests/test_update_step.py` checks the identity.
Micro-batch k takes the k-th chunk of every batch shard's rows (`_micro_split`),
so on a mesh every device computes its own rows of each micro-batch and the
loop needs no collective but the gradient's all-reduce
(`tests/test_micro_batches.py`).

With `prompt_group_size` = G the G rows of a group share one prompt forward
and, with `pack`, their completions are computed end to end without padding
(`gpg_em.models.shared_prefix`); both are exact (`tests/test_shared_prefix.py`),
and a micro-batch then holds whole groups.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from gpg_em.models import ModelConfig, completion_logprobs, grouped_completion_logprobs
from gpg_em.parallel import active_batch_shards, batch_sharding, constrain, on_mesh, replicated
from gpg_em.train import layer_stack
from gpg_em.train.objective import Objective, objective_loss

_ROW_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    objective: Objective
    micro_batch_size: int = 0  # 0: the whole batch at once
    temperature: float = 1.0  # the sampler's temperature: log-probs are of the tempered policy
    chunk_size: int = 128  # sequence chunk of the log-prob head
    # >1: rows come in groups of this many sharing one prompt, computed once per group
    # (gpg_em.models.shared_prefix); 0 or 1: every row's prompt is computed.
    prompt_group_size: int = 0
    remat: bool = False  # recompute each layer in the backward pass (grouped forward only)
    scan_layers: bool = True  # grouped forward only: the layers in a lax.scan (shared_prefix_hidden)
    # grouped forward only: completion attention in query blocks of this many slots when the
    # completions are longer (shared_prefix_hidden's attention_block); 0: one block of N slots
    attention_block: int = 0
    # grouped forward only: batches carry `pack_index` [m, L] (`pack_lanes`) and the groups' valid
    # completion tokens are computed end to end, without the padding after each row's stop token
    pack: bool = False
    # PPO mini-batches: one call of the update step splits its batch into this many consecutive
    # mini-batches of whole groups and takes one optimizer step on each, in order (verl's
    # ppo_mini_batch_size = batch / mini_batches). Each mini-batch is a batch of its own for the
    # loss: its normalisers (token counts, AGE) are its own.
    mini_batches: int = 1

    @classmethod
    def from_config(cls, c, objective: Objective) -> "StepConfig":
        """The step options of a run config (train.*, rollout.temperature / group_size)."""
        return cls(objective, micro_batch_size=c.train.micro_batch_size, temperature=c.rollout.temperature,
                   chunk_size=c.train.chunk_size, remat=c.train.remat, scan_layers=c.train.scan_layers,
                   attention_block=c.train.attention_block,
                   prompt_group_size=c.rollout.group_size if c.train.share_prompts else 0,
                   pack=bool(c.train.share_prompts and c.train.pack and c.rollout.group_size > 1),
                   mini_batches=c.ppo.mini_batches)

    def pack_lanes(self, rows: int, batch_shards: int = 1) -> int:
        """Lanes of the packed layout (`shared_prefix.packing_index`) for a batch of `rows`: the fewest
        that split into whole mini-batches and, within each, whole chunks of each batch shard's rows per
        micro-batch (batch_shards * micro-batches in all; `loss_and_grad`), else one group per lane. Fewer
        lanes waste fewer slots: only the longest lane is padded."""
        G, M = self.prompt_group_size, self.mini_batches
        lanes = batch_shards * (rows // (self.micro_batch_size or rows // M))
        return lanes if (rows // G) % lanes == 0 else rows // G

    @property
    def row_keys(self) -> tuple[str, ...]:
        """Batch arrays the log-prob pass reads."""
        return _ROW_KEYS + (("pack_index",) if self.pack else ())


def _rows(batch) -> dict:
    return {k: batch[k] for k in _ROW_KEYS + ("pack_index",) if k in batch}


def _split(rows, parts: int) -> dict:
    """Each array [R, ...] -> [parts, R / parts, ...] (rows [B] and pack_index's lanes alike)."""
    return jax.tree.map(lambda x: x.reshape(parts, x.shape[0] // parts, *x.shape[1:]), rows)


def _shard_major(x, shards: int, parts: int):
    """[R, ...] -> [parts, R / parts, ...]: micro-batch k is the k-th of `parts` local chunks of each of
    `shards` consecutive row blocks (the batch shards), in shard order; its row j is row
    (j // r) * R / shards + k * r + j % r, r = R / (shards * parts). One shard: consecutive rows."""
    x = x.reshape(shards, parts, x.shape[0] // (shards * parts), *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(parts, -1, *x.shape[3:])


def _unsplit(x, shards: int):
    """The inverse of `_shard_major`: [parts, R / parts, ...] -> [R, ...] in the batch's row order."""
    x = x.reshape(x.shape[0], shards, x.shape[1] // shards, *x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[3:])


def _pin(x, lead: int = 0):
    """`x` with dimension `lead` split over the batch axes, the others replicated (see `constrain`)."""
    return constrain(x, (None,) * lead + ("batch",) + (None,) * (x.ndim - lead - 1))


def _micro_shards(rows, mb: int, unit: int) -> int:
    """How many batch shards the micro-batches are strided over (`_micro_split`): the active mesh's when
    each shard's chunk of a micro-batch is whole groups of `unit` rows and (packed) whole lanes, else 1."""
    D, parts = active_batch_shards(), rows["prompt_ids"].shape[0] // mb
    lanes = rows["pack_index"].shape[0] if "pack_index" in rows else D * parts
    return D if mb % (D * unit) == 0 and lanes % (D * parts) == 0 else 1


def _micro_split(rows, parts: int, shards: int) -> dict:
    """Micro-batches [parts, R / parts, ...] that take rows from every batch shard (`_shard_major`), their
    rows split over the batch axes; pack_index's lanes (consecutive groups) follow the same assignment."""
    split = {k: _shard_major(x, shards, parts) for k, x in rows.items()}
    return {k: x if k == "pack_index" else _pin(x, 1) for k, x in split.items()}


def _row_logprobs(params, cfg: ModelConfig, rows, *, temperature: float, chunk_size: int, prompt_group_size: int,
                  remat: bool, scan_layers: bool, attention_block: int = 0):
    """(logp, entropy) [B, N] of some rows, prompts shared per group when prompt_group_size > 1."""
    if prompt_group_size > 1:
        return grouped_completion_logprobs(params, cfg, rows["prompt_ids"], rows["prompt_mask"],
                                           rows["completion_ids"], rows.get("pack_index"), group_size=prompt_group_size,
                                           temperature=temperature, chunk_size=chunk_size, remat=remat,
                                           scan_layers=scan_layers, attention_block=attention_block)
    return completion_logprobs(params, cfg, rows["prompt_ids"], rows["prompt_mask"], rows["completion_ids"],
                               rows["completion_mask"], temperature=temperature, chunk_size=chunk_size)


def batch_logprobs(params, cfg: ModelConfig, batch, *, micro_batch_size: int, temperature: float,
                   chunk_size: int, prompt_group_size: int = 0, remat: bool = False, scan_layers: bool = True,
                   attention_block: int = 0):
    """(logp, entropy) [B, N] of the batch's completions, micro-batch by micro-batch; each micro-batch
    holds rows of every batch shard (`_micro_split`), so every device computes its share of each."""
    one = lambda p, rows: _row_logprobs(p, cfg, rows, temperature=temperature, chunk_size=chunk_size,
                                        prompt_group_size=prompt_group_size, remat=remat, scan_layers=scan_layers,
                                        attention_block=attention_block)
    rows = _rows(batch)
    B = rows["prompt_ids"].shape[0]
    mb = micro_batch_size or B
    if B % mb:
        raise ValueError(f"micro_batch_size={mb} does not divide the batch of {B} rows")
    if prompt_group_size > 1 and mb % prompt_group_size:
        raise ValueError(f"micro_batch_size={mb} must hold whole groups of {prompt_group_size} rows "
                         "when prompts are shared")
    if mb == B:
        return one(params, rows)
    D = _micro_shards(rows, mb, max(prompt_group_size, 1))
    logp, ent = jax.lax.map(lambda r: tuple(map(_pin, one(params, r))), _micro_split(rows, B // mb, D))
    return _unsplit(logp, D), _unsplit(ent, D)


def _sc_options(sc: StepConfig) -> dict:
    return dict(temperature=sc.temperature, chunk_size=sc.chunk_size, prompt_group_size=sc.prompt_group_size,
                remat=sc.remat, scan_layers=sc.scan_layers, attention_block=sc.attention_block)


def rollout_mismatch(logp_train_BxN, batch) -> dict:
    """The sampler-vs-trainer log-prob mismatch, when the batch carries the sampler's `sample_logprobs`:
    logp_mismatch_max / logp_mismatch_mean = max / mean over completion tokens of
    |logp_rollout - logp_train| ({} otherwise). logp_train must be the log-probs at the params that
    sampled: the batch's `old_logprobs` when it has them (recorded before a pass of several optimizer
    steps), else `logp_train_BxN`, the update's own forward, which runs at those params (no extra forward)."""
    if "sample_logprobs" not in batch:
        return {}
    train = batch["old_logprobs"] if "old_logprobs" in batch else jax.lax.stop_gradient(logp_train_BxN)
    mask = batch["completion_mask"] > 0
    diff = jnp.where(mask, jnp.abs(batch["sample_logprobs"] - train), 0.0)
    return {"logp_mismatch_max": diff.max(), "logp_mismatch_mean": diff.sum() / jnp.maximum(mask.sum(), 1)}


def loss_fn(params, cfg: ModelConfig, sc: StepConfig, batch):
    """Full-batch loss (one forward over the whole batch); the reference for the micro-batched gradient."""
    logp, ent = batch_logprobs(params, cfg, batch, micro_batch_size=0, **_sc_options(sc))
    loss, aux = objective_loss(sc.objective, logp, ent, batch)
    return loss, {**aux, **rollout_mismatch(logp, batch)}


def loss_and_grad(params, cfg: ModelConfig, sc: StepConfig, batch):
    """((loss, aux), grads) of the full-batch loss, accumulated over micro-batches (module docstring).

    Micro-batch k holds the k-th local chunk of rows of every batch shard (`_micro_split`): each device
    computes its own rows of every micro-batch, and the log-probs go back to their rows (`_unsplit`)."""
    B = batch["prompt_ids"].shape[0]
    mb = sc.micro_batch_size or B
    if B % mb:
        raise ValueError(f"micro_batch_size={mb} does not divide the batch of {B} rows")
    if mb == B:
        return jax.value_and_grad(loss_fn, has_aux=True)(params, cfg, sc, batch)
    N, parts = batch["completion_ids"].shape[1], B // mb
    rows = _rows(batch)
    D = _micro_shards(rows, mb, max(sc.prompt_group_size, 1))

    def micro_loss(p, k, rows_k):
        logp_m, ent_m = map(_pin, batch_logprobs(p, cfg, rows_k, micro_batch_size=0, **_sc_options(sc)))
        zeros = _pin(jnp.zeros((parts, mb, N), jnp.float32), 1)
        place = lambda x: _unsplit(jax.lax.dynamic_update_index_in_dim(zeros, x, k, 0), D)  # [B, N], rows of k
        loss, _ = objective_loss(sc.objective, place(logp_m), place(ent_m), batch)
        return loss, (logp_m, ent_m)

    def body(grads, xs):
        (_, out), g = jax.value_and_grad(micro_loss, has_aux=True)(params, *xs)
        return jax.tree.map(jnp.add, grads, g), out

    xs = (jnp.arange(parts), _micro_split(rows, parts, D))
    grads, (logp, ent) = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), xs)
    logp, ent = _unsplit(logp, D), _unsplit(ent, D)
    loss, aux = objective_loss(sc.objective, logp, ent, batch)
    return (loss, {**aux, **rollout_mismatch(logp, batch)}), grads


def _one_update(state, batch, *, cfg: ModelConfig, sc: StepConfig, tx: optax.GradientTransformation, schedule):
    """One optimizer step on the loss of `batch` (all its rows): (state, metrics)."""
    (loss, aux), grads = loss_and_grad(state.params, cfg, sc, batch)
    grads = layer_stack.stack(grads)
    params, opt_state = layer_stack.update(tx, grads, state.opt_state, state.params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step), **aux}
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def split_mini_batches(batch, mini_batches: int) -> dict:
    """Every batch array [R, ...] -> [mini_batches, R / mini_batches, ...]: consecutive rows (whole
    groups, as the batch holds groups in order) and, for `pack_index`, whole lanes. Which rows form a
    mini-batch does not depend on the mesh (it changes the result); each mini-batch's rows are split
    over the batch axes, so the batch is redistributed once, before the pass, and every device works
    on every mini-batch."""
    for k, x in batch.items():
        if x.shape[0] % mini_batches:
            raise ValueError(f"ppo.mini_batches={mini_batches} does not divide the {x.shape[0]} "
                             f"{'lanes' if k == 'pack_index' else 'rows'} of {k}")
    return {k: x if k == "pack_index" else _pin(x, 1) for k, x in _split(batch, mini_batches).items()}


def update_step(state, batch, rng, *, cfg: ModelConfig, sc: StepConfig, tx: optax.GradientTransformation,
                schedule):
    """One pass over the batch: `sc.mini_batches` optimizer steps, one per mini-batch, in order.

    With one mini-batch this is a single update on the whole batch. With M > 1 (PPO mini-batches)
    step m starts from the parameters step m-1 produced, so a ratio loss's ratio
    exp(logp - old_logp) moves away from 1 and its clip is active; the old log-probs are the rollout
    policy's, recorded once before the pass. Metrics are averaged over the M steps (`lr`: the first's;
    the log-prob mismatch, `rollout_mismatch`: the whole batch's, from the old log-probs).
    `rng` is accepted for losses that sample (none do yet).
    """
    del rng
    one = functools.partial(_one_update, cfg=cfg, sc=sc, tx=tx, schedule=schedule)
    if sc.mini_batches <= 1:
        return one(state, batch)
    state, metrics_M = jax.lax.scan(one, state, split_mini_batches(batch, sc.mini_batches))
    metrics = {k: jnp.mean(v) for k, v in metrics_M.items()}
    metrics["lr"] = metrics_M["lr"][0]
    if "old_logprobs" in batch:  # (always, from the trainer, with several mini-batches): the whole batch's
        metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in rollout_mismatch(None, batch).items()})
    return state, metrics


def batch_shardings(batch_keys, mesh: Mesh) -> dict:
    """Rows split over the batch axes: `rewards` is [B], every other batch array [B, N] (or [B, P]);
    `pack_index` [m, L] (small) is replicated."""
    return {k: replicated(mesh) if k == "pack_index" else batch_sharding(mesh, 1 if k == "rewards" else 2)
            for k in batch_keys}


def jit_update_step(cfg: ModelConfig, sc: StepConfig, tx, schedule, mesh: Mesh, state_shardings, batch_keys):
    """`update_step` jitted once with explicit shardings; the state is donated (updated in place)."""
    fn = on_mesh(functools.partial(update_step, cfg=cfg, sc=sc, tx=tx, schedule=schedule), mesh)
    return jax.jit(fn, in_shardings=(state_shardings, batch_shardings(batch_keys, mesh), replicated(mesh)),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))


def jit_loss_and_grad(cfg: ModelConfig, sc: StepConfig, mesh: Mesh, param_shardings, batch_keys):
    """`((loss, aux), grads)` of a batch, jitted with the update step's shardings (grads shaped as params)."""
    fn = on_mesh(lambda params, batch: loss_and_grad(params, cfg, sc, batch), mesh)
    return jax.jit(fn, in_shardings=(param_shardings, batch_shardings(batch_keys, mesh)),
                   out_shardings=(replicated(mesh), param_shardings))


def jit_logprobs(cfg: ModelConfig, sc: StepConfig, mesh: Mesh, param_shardings):
    """Log-probs [B, N] of a batch under given params (old policy or frozen reference): no gradient."""
    def fn(params, rows):
        return batch_logprobs(params, cfg, rows, micro_batch_size=sc.micro_batch_size, **_sc_options(sc))[0]
    b_shard = batch_shardings(sc.row_keys, mesh)
    jitted = jax.jit(on_mesh(fn, mesh), in_shardings=(param_shardings, b_shard), out_shardings=batch_sharding(mesh, 2))
    def call(params, batch):
        return jitted(params, {k: batch[k] for k in sc.row_keys})
    call._cache_size = jitted._cache_size  # compiled executables so far (tests assert no recompilation)
    call.jitted = jitted  # (params, rows of sc.row_keys): lowered ahead of time by gpg_em.train.ahead
    return call
