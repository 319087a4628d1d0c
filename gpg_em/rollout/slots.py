"""Continuous batching: a rollout of R rows decoded in S <= R slots, each finished slot refilled at once.

    out = sample_in_slots(params, prompt_ids, prompt_mask, rng, cfg=cfg, sampling=sampling,
                          max_new_tokens=N, num_samples=G, slots=S)

* The n prompts are prefilled once (`prefill_slots`); their keys/values stay
  in a `PromptStore` [n, ...] that every sample of a prompt reads from, and
  token 0 of all R = n * G rows is drawn there exactly as `sampler.prefill`
  draws it (rows prompt-major: row i * G + j is sample j of prompt i).
* A decode step runs S slots. Slot s holds row `row[s]` at its own token
  index `step[s]`: its generated keys/values sit at generated slots
  0..step[s] - 1 of its own cache (`decode_step` with one index per row), so
  slots at different lengths share one step. The step writes its token
  straight into the [R, N] outputs at (row, step).
* The jitted `while_loop` (`decode_slots`) stops as soon as a slot finishes
  (stop token or N tokens) while rows are pending; the host then refills
  the free slots with the next pending rows, in row order (`refill`: a
  jitted copy of each new row's prompt keys/values from the store, no
  prefill), and calls the loop again. So the number of loop calls is at
  most 1 + R - S.
* Draws: row r's token t uses uniform r of uniform(fold_in(rng, t), [R])
  (`sampling.row_uniforms`), the draw `sampler.sample` makes for it; with
  all rows at one step that is the same number. So tokens, masks and
  log-probs are those of `sampler.sample` with the same seed (equal up to
  float32 rounding of the different batch shapes: tests).
* Compiled programs per (n, P, N, G, S, cfg, sampling): one prefill, one
  refill, one decode loop (plus the decode-weight copy): 3, whatever the
  stopping pattern. The step is the sampler's: the native CPU kernel
  (`decode_cpu`, with one generated-slot index per row) where it applies,
  else the XLA step (`decode_step`).
"""
from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from gpg_em.errors import UserError
from gpg_em.models.config import ModelConfig
from gpg_em.rollout.decode_step import KVCache, empty_generated, gen_blocks
from gpg_em.rollout.sampler import (decode_logits, decode_weights_for, first_tokens, is_stop, modify_logits,
                                    prompt_forward)
from gpg_em.rollout.sampling import SamplingConfig, choose_tokens, row_uniforms
from gpg_em.rollout.state import SampleOutput


class PromptStore(NamedTuple):
    """The prefilled prompts, read when a slot takes a new row."""
    keys_t: list  # per layer [n, KVH, Dh, P]
    values: list  # per layer [n, KVH, P, Dh]
    prompt_mask: jnp.ndarray  # [n, P] bool
    lengths: jnp.ndarray  # [n] int32: real prompt tokens = position id of generated token 0


@struct.dataclass
class SlotState:
    """Carry of the slot decode loop: S slots over R rows, N = max_new_tokens."""
    tokens: jnp.ndarray  # [R, N] int32, the rollout's output, pad after the stop token
    mask: jnp.ndarray  # [R, N] int32
    logprobs: jnp.ndarray  # [R, N] float32
    entropies: jnp.ndarray  # [R, N] float32
    row: jnp.ndarray  # [S] int32: the row a slot decodes (R: none yet)
    step: jnp.ndarray  # [S] int32: tokens that row has (its next one is tokens[row, step])
    done: jnp.ndarray  # [S] bool: the slot's row is finished (or the slot is empty): the slot is free
    last: jnp.ndarray  # [S] int32: the row's last token, the next model input
    positions: jnp.ndarray  # [S] int32: position id of `last`
    prompt_mask: jnp.ndarray  # [S, P] bool: the row's prompt mask
    cache: Any  # list of decode_step.KVCache with n = S, G = 1: the row's prompt copy and its generated keys/values
    rng: jax.Array  # the rollout's base key
    total_rows: int = struct.field(pytree_node=False, default=0)  # R


def _empty_slots(slots: int, P: int, N: int, cfg: ModelConfig, dtype) -> list[KVCache]:
    K, Dh = cfg.num_kv_heads, cfg.head_dim
    zeros = lambda *shape: jnp.zeros(shape, dtype)
    return [KVCache(zeros(slots, K, Dh, P), zeros(slots, K, P, Dh), *empty_generated(slots, K, 1, Dh, N, dtype))
            for _ in range(cfg.num_layers)]


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "max_new_tokens", "num_samples", "slots"))
def prefill_slots(params, prompt_ids_NxP, prompt_mask_NxP, rng, *, cfg: ModelConfig, sampling: SamplingConfig,
                  max_new_tokens: int, num_samples: int, slots: int):
    """(SlotState with every slot free and token 0 of every row written, PromptStore, first_done [R] bool)."""
    n, P = prompt_ids_NxP.shape
    R, N = n * num_samples, max_new_tokens
    pmask = prompt_mask_NxP.astype(bool)
    z, cache = prompt_forward(params, prompt_ids_NxP, pmask, cfg, sampling)
    token, logp, ent = first_tokens(z, rng, sampling, num_samples)
    store = PromptStore([c.k.transpose(0, 2, 3, 1) for c in cache], [c.v.transpose(0, 2, 1, 3) for c in cache],
                        pmask, jnp.sum(pmask, axis=1, dtype=jnp.int32))
    state = SlotState(
        tokens=jnp.full((R, N), sampling.pad_token_id, jnp.int32).at[:, 0].set(token),
        mask=jnp.zeros((R, N), jnp.int32).at[:, 0].set(1),
        logprobs=jnp.zeros((R, N), jnp.float32).at[:, 0].set(logp),
        entropies=jnp.zeros((R, N), jnp.float32).at[:, 0].set(ent),
        row=jnp.full((slots,), R, jnp.int32), step=jnp.ones((slots,), jnp.int32),
        done=jnp.ones((slots,), bool), last=jnp.zeros((slots,), jnp.int32),
        positions=jnp.zeros((slots,), jnp.int32), prompt_mask=jnp.zeros((slots, P), bool),
        cache=_empty_slots(slots, P, N, cfg, cache[0].k.dtype), rng=rng, total_rows=R)
    return state, store, is_stop(token, sampling)


@functools.partial(jax.jit, static_argnames=("num_samples",), donate_argnums=(0,))
def refill(state: SlotState, store: PromptStore, new_row_S, *, num_samples: int) -> SlotState:
    """Slot s takes row new_row[s] (R: keeps what it has): step 1, input its token 0, its prompt's
    keys/values and mask copied from the store. Its generated cache is not cleared: a row reads only
    generated slots it has written (0..step - 1)."""
    R = state.total_rows
    fill = new_row_S < R
    row = jnp.where(fill, new_row_S, 0)
    prompt = row // num_samples
    take = lambda new, old: jnp.where(fill.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)
    cache = [c._replace(prompt_k_t=take(k[prompt], c.prompt_k_t), prompt_v=take(v[prompt], c.prompt_v))
             for c, k, v in zip(state.cache, store.keys_t, store.values)]
    return state.replace(row=take(new_row_S, state.row), step=take(1, state.step), done=take(False, state.done),
                         last=take(state.tokens[row, 0], state.last),
                         positions=take(store.lengths[prompt], state.positions),
                         prompt_mask=take(store.prompt_mask[prompt], state.prompt_mask), cache=cache)


def _slot_step(params, state: SlotState, cfg: ModelConfig, sampling: SamplingConfig) -> SlotState:
    """Every live slot feeds `last` at generated slot step - 1 and draws its row's token `step`."""
    R, N = state.tokens.shape
    live, t = ~state.done, state.step
    index = jnp.where(live, t - 1, 0)  # free slots read one block (the loop runs to the largest index)
    z, cache = decode_logits(params, cfg, state.last, state.positions, state.prompt_mask, state.cache, index)
    z = modify_logits(z, sampling)
    uniform = None if sampling.greedy else row_uniforms(state.rng, t, jnp.minimum(state.row, R - 1), R)
    token, logp, ent = choose_tokens(z, state.rng, sampling, uniform_B=uniform)
    row, col = jnp.where(live, state.row, R), jnp.minimum(t, N - 1)  # free slots write nowhere (dropped)
    put = lambda buf, x: buf.at[row, col].set(x.astype(buf.dtype), mode="drop")
    finished = live & (is_stop(token, sampling) | (t + 1 >= N))
    return state.replace(tokens=put(state.tokens, token), mask=put(state.mask, live), logprobs=put(state.logprobs, logp),
                         entropies=put(state.entropies, ent), step=t + live, done=state.done | finished,
                         last=token, positions=state.positions + 1, cache=cache)


# The state is donated: its slot KV cache is the loop carry (see sampler.decode).
@functools.partial(jax.jit, static_argnames=("cfg", "sampling"), donate_argnums=(1,))
def decode_slots(params, state: SlotState, pending, *, cfg: ModelConfig, sampling: SamplingConfig) -> SlotState:
    """Steps the slots until none is live, or, while `pending` (a traced count) rows wait, until one is free."""
    S = state.done.shape[0]

    def cond(s: SlotState):
        live = jnp.sum(~s.done)
        return (live > 0) & ((pending == 0) | (live == S))

    return jax.lax.while_loop(cond, lambda s: _slot_step(params, s, cfg, sampling), state)


def _assign(done_S: np.ndarray, queue: list[int], total_rows: int) -> np.ndarray:
    """new_row [S] int32 for `refill`: the free slots, in order, take the next queued rows (popped); R elsewhere."""
    new_row = np.full(done_S.shape, total_rows, np.int32)
    free = np.flatnonzero(done_S)[:len(queue)]
    new_row[free] = queue[:len(free)]
    del queue[:len(free)]
    return new_row


def sample_in_slots(params, prompt_ids_NxP, prompt_mask_NxP, rng, *, cfg: ModelConfig, sampling: SamplingConfig,
                    max_new_tokens: int, num_samples: int, slots: int) -> SampleOutput:
    """`sampler.sample`'s rollout ([n * G, N] outputs, same draws) decoded in min(slots, n * G) slots."""
    R = prompt_ids_NxP.shape[0] * num_samples
    S = min(slots, R)
    state, store, first_done = prefill_slots(params, prompt_ids_NxP, prompt_mask_NxP, rng, cfg=cfg,
                                             sampling=sampling, max_new_tokens=max_new_tokens,
                                             num_samples=num_samples, slots=S)
    queue = [] if max_new_tokens == 1 else np.flatnonzero(~np.asarray(first_done)).tolist()
    weights = decode_weights_for(params, cfg, sampling.kv_dtype) if queue else None
    done = np.ones(S, bool)
    while queue or not done.all():
        new_row = _assign(done, queue, R)
        if (new_row < R).any():
            state = refill(state, store, jnp.asarray(new_row), num_samples=num_samples)
        state = decode_slots(weights, state, jnp.int32(len(queue)), cfg=cfg, sampling=sampling)
        done = np.asarray(state.done)
    return SampleOutput(state.tokens, state.mask, state.logprobs, state.entropies)


def slot_bytes(cfg: ModelConfig, prompt_width: int, max_new_tokens: int, itemsize: int = 4) -> int:
    """KV-cache bytes one slot holds: 2 (keys, values) * layers * KVH * Dh * (P + C T) * itemsize, where C T
    >= N = max_new_tokens is the generated slots the cache holds in whole blocks (`decode_step.gen_blocks`)."""
    C, T = gen_blocks(max_new_tokens)
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * (prompt_width + C * T) * itemsize


def slots_for_memory(cfg: ModelConfig, rows: int, prompt_width: int, max_new_tokens: int, free_bytes: int,
                     fraction: float = 0.5, itemsize: int = 4) -> int:
    """Slots whose KV caches fit in `fraction` of `free_bytes`: clip(floor(fraction * free / slot_bytes), 1, rows)."""
    fit = int(fraction * free_bytes) // slot_bytes(cfg, prompt_width, max_new_tokens, itemsize)
    return int(min(rows, max(1, fit)))


def free_device_bytes() -> int:
    """Free memory of the first device: bytes_limit - bytes_in_use on accelerators; on CPU the host's
    available physical memory (sysconf)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resolve_slots(decode_slots: int, cfg: ModelConfig, rows: int, prompt_width: int, max_new_tokens: int) -> int:
    """The slots a rollout of `rows` rows runs in: 0 -> all rows (no slots), -1 -> `slots_for_memory`
    of the free memory, S >= 1 -> min(S, rows). Anything else is refused."""
    if not isinstance(decode_slots, (int, np.integer)) or decode_slots < -1:
        raise UserError(f"rollout.decode_slots={decode_slots!r}: expected 0 (all rows at once), -1 (chosen from "
                        "free memory) or a slot count >= 1")
    if decode_slots == -1:
        return slots_for_memory(cfg, rows, prompt_width, max_new_tokens, free_device_bytes(),
                                itemsize=jnp.dtype(cfg.dtype).itemsize)
    return min(int(decode_slots), rows) if decode_slots else rows
