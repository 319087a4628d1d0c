"""The functional sampler: jitted prefill, then a jitted `while_loop` decode over a `DecodeState`.

    out = sample(params, prompt_ids, prompt_mask, rng, cfg=cfg, sampling=SamplingConfig(...),
                 max_new_tokens=128, num_samples=8)

* Prompts arrive left-padded `[n, P]`. Each prompt is prefilled once; its
  keys/values are stored once and read by all `num_samples` samples (rows
  prompt-major: row i * num_samples + j is sample j of prompt i), so a group
  of G samples costs one prompt forward and one prompt-cache read per step.
* Generated token t of every row sits in generated slot t of the cache
  (`decode_step.KVCache`), so one scalar index serves the whole batch and
  the per-step update is a `dynamic_update_slice` of one slot.
* On CPU a float32 model decodes with the native kernel
  (`decode_cpu`: every layer of a step in one call, over weights packed
  once, ~2x the XLA step); otherwise the XLA step runs, feature-major on
  transposed weights on CPU (`decode_step.decode_weights`), on the params
  as they are on accelerators.
* Decode stops when every row has produced a stop token, or after
  max_new_tokens.
* `decode_slots` >= 1 (config `rollout.decode_slots`) decodes the rows that
  many at a time instead, refilling a finished row's slot at once with the
  next row (continuous batching, `slots.py`): the same draws, so the same tokens and log-probs up to
  float rounding of the logits (a draw within rounding of a CDF boundary can differ; README).
* Compiled shapes: one (prefill, decode) pair per distinct
  (n, P, max_new_tokens, num_samples, cfg, sampling). Callers bucket P with
  `prompt_bucket` (powers of two >= 16, see there) so a stream of prompts of
  varying lengths compiles O(log max_len) shapes. Dropping finished rows
  (`sample`, `compact`) adds decode shapes of B/2, B/4, ... rows (one prompt
  per row), at most log2(B / COMPACT_MIN_ROWS) of them.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gpg_em.models.config import ModelConfig
from gpg_em.models.decoder import Decoder, cache_dtype, init_cache
from gpg_em.models.model import positions_from_mask
from gpg_em.rollout import decode_cpu, logits_cpu
from gpg_em.rollout.adaptive_temperature import adaptive_tau_newton
from gpg_em.rollout.decode_step import from_prefill_cache, jit_decode_weights, select_rows, step_hidden, step_logits
from gpg_em.rollout.em_inf import em_inf_logits_fused
from gpg_em.rollout.sampling import SamplingConfig, choose_tokens
from gpg_em.rollout.state import DecodeState, SampleOutput

MIN_BUCKET = 16


def prompt_bucket(length: int, minimum: int = MIN_BUCKET) -> int:
    """Padded prompt width: the next power of two, at least `minimum` (16).

    At most 2x padding (which only the prefill and the attention over the
    prompt slots pay for) and log2(max_len / 8) compiled shapes in all:
    16, 32, 64, 128, 256, ... Every prompt length in (2^(k-1), 2^k] shares
    the shape 2^k. A larger `minimum` (the trainer's `rollout.min_prompt_width`)
    puts every prompt up to that length in one shape.
    """
    if length < 1:
        raise ValueError(f"prompt length must be >= 1, got {length}")
    return max(minimum, 1 << (int(length) - 1).bit_length())


def left_pad(prompts: list[list[int]], pad_id: int, width: int | None = None, min_width: int = MIN_BUCKET):
    """(ids [n, width] int32, mask [n, width] int32), prompts right-aligned;
    width = prompt_bucket(longest, min_width) unless given."""
    longest = max(len(p) for p in prompts)
    width = prompt_bucket(longest, min_width) if width is None else width
    if longest > width:
        raise ValueError(f"a prompt has {longest} tokens, more than the padded width {width}")
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = p
            mask[i, width - len(p):] = 1
    return ids, mask


def head_logits(params, cfg: ModelConfig, hidden_BxD: jnp.ndarray) -> jnp.ndarray:
    """Float32 logits [B, V]. A tied head contracts the embedding [V, D] on D directly, no transpose copy."""
    if cfg.tie_embeddings:
        w = params["embed"].astype(hidden_BxD.dtype)
        return jax.lax.dot_general(hidden_BxD, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return jnp.dot(hidden_BxD, params["lm_head"].astype(hidden_BxD.dtype), preferred_element_type=jnp.float32)


def modify_logits(z_BxV: jnp.ndarray, sampling: SamplingConfig) -> jnp.ndarray:
    """EM-INF or adaptive temperature on the raw float32 logits (identity when neither is set): on a
    single CPU device by the native per-row kernel (`logits_cpu.use_logits_kernel`), else by the fused
    XLA formulations (`em_inf_logits_fused`, `adaptive_tau_newton`). All equal the straightforward
    `em_inf_logits` / `adaptive_temperature_logits` to float tolerance (tests)."""
    if sampling.em_inf is None and sampling.adaptive_temperature is None:
        return z_BxV
    if logits_cpu.use_logits_kernel():
        if sampling.em_inf is not None:
            return logits_cpu.em_inf_logits_cpu(z_BxV, sampling.em_inf)
        return logits_cpu.adaptive_temperature_cpu(z_BxV, sampling.adaptive_temperature)[0]
    if sampling.em_inf is not None:
        return em_inf_logits_fused(z_BxV, sampling.em_inf)
    z = z_BxV.astype(jnp.float32)
    return z / adaptive_tau_newton(z, sampling.adaptive_temperature)[:, None]


def is_stop(token_B, sampling: SamplingConfig):
    """[B] bool: the token is one of `sampling.stop_token_ids`."""
    stop = jnp.zeros(token_B.shape, bool)
    for s in sampling.stop_token_ids:
        stop |= token_B == s
    return stop


def prompt_forward(params, prompt_ids_NxP, pmask_NxP, cfg: ModelConfig, sampling: SamplingConfig):
    """(modified float32 logits [n, V] of each prompt's next token, the decoder's cache [n, P, KVH, Dh] per layer)."""
    n, P = prompt_ids_NxP.shape
    hidden, cache = Decoder(cfg).apply({"params": params}, prompt_ids_NxP, positions_from_mask(pmask_NxP),
                                       pmask_NxP, init_cache(cfg, n, P, sampling.kv_dtype), 0)
    # Left padding puts every prompt's last token at P - 1.
    return modify_logits(head_logits(params, cfg, hidden[:, -1]), sampling), cache


def first_tokens(z_NxV, rng, sampling: SamplingConfig, num_samples: int):
    """(token, logp, entropy) [n * G] of token 0 of every row (prompt-major), drawn with fold_in(rng, 0)."""
    return choose_tokens(jnp.repeat(z_NxV, num_samples, axis=0), jax.random.fold_in(rng, 0), sampling)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "max_new_tokens", "num_samples"))
def prefill(params, prompt_ids_NxP, prompt_mask_NxP, rng, *, cfg: ModelConfig, sampling: SamplingConfig,
            max_new_tokens: int, num_samples: int = 1) -> DecodeState:
    """Runs the prompts once, repeats the cache per sample and draws token 0 of every row."""
    n, P = prompt_ids_NxP.shape
    B, N, G = n * num_samples, max_new_tokens, num_samples
    pmask = prompt_mask_NxP.astype(bool)
    z, cache = prompt_forward(params, prompt_ids_NxP, pmask, cfg, sampling)
    repeat = lambda x: jnp.repeat(x, G, axis=0)
    token, logp, ent = first_tokens(z, rng, sampling, G)
    return DecodeState(
        step=jnp.int32(1),
        tokens=jnp.full((B, N), sampling.pad_token_id, jnp.int32).at[:, 0].set(token),
        mask=jnp.zeros((B, N), jnp.int32).at[:, 0].set(1),
        logprobs=jnp.zeros((B, N), jnp.float32).at[:, 0].set(logp),
        entropies=jnp.zeros((B, N), jnp.float32).at[:, 0].set(ent),
        done=is_stop(token, sampling),
        last=token,
        positions=repeat(jnp.sum(pmask, axis=1, dtype=jnp.int32)),
        prompt_mask=pmask,
        cache=from_prefill_cache(cache, G, N),
        rng=rng,
        row_ids=jnp.arange(B, dtype=jnp.int32),
        total_rows=B,
    )


def decode_logits(params, cfg: ModelConfig, token_B, position_B, prompt_mask_nxP, cache, index):
    """(logits [B, V], the cache with the step's keys/values at generated slot `index`, [] or [B] per row):
    the native kernel's step for `decode_cpu.PackedWeights`, else the XLA step (`decode_weights_for`)."""
    if isinstance(params, decode_cpu.PackedWeights):
        return decode_cpu.step(params, cfg, token_B, position_B, prompt_mask_nxP, cache, index)
    hidden, cache = step_hidden(params, cfg, token_B, position_B, prompt_mask_nxP, cache, index)
    return step_logits(params, cfg, hidden), cache


def _decode_step(params, state: DecodeState, cfg: ModelConfig, sampling: SamplingConfig) -> DecodeState:
    """Feeds `last` at its cache slot, draws tokens[:, step] for rows not done."""
    t = state.step
    z, cache = decode_logits(params, cfg, state.last, state.positions, state.prompt_mask, state.cache, t - 1)
    z = modify_logits(z, sampling)
    token, logp, ent = choose_tokens(z, jax.random.fold_in(state.rng, t), sampling, state.row_ids, state.total_rows)
    live = ~state.done
    token = jnp.where(live, token, sampling.pad_token_id)
    put = lambda buf, col: jax.lax.dynamic_update_slice_in_dim(buf, col[:, None].astype(buf.dtype), t, axis=1)
    return state.replace(
        step=t + 1,
        tokens=put(state.tokens, token),
        mask=put(state.mask, live),
        logprobs=put(state.logprobs, jnp.where(live, logp, 0.)),
        entropies=put(state.entropies, jnp.where(live, ent, 0.)),
        done=state.done | is_stop(token, sampling),
        last=token,
        positions=state.positions + 1,
        cache=cache,
    )


# The state is donated: its KV cache (30 layers of prompt [n, KVH, P, Dh] and generated
# [n, KVH, G, N, Dh] keys and values) is the loop carry, and donation lets XLA write the
# while_loop's carry, and so every per-step `dynamic_update_slice`, into the
# buffers prefill returned instead of first copying them (and holding two caches).
@functools.partial(jax.jit, static_argnames=("cfg", "sampling"), donate_argnums=(1,))
def decode(params, state: DecodeState, min_live=0, *, cfg: ModelConfig, sampling: SamplingConfig) -> DecodeState:
    """Decodes until every row is done or max_new_tokens tokens exist (early exit), or until at most
    `min_live` rows are still live (a traced scalar: `sample` then compacts the batch).

    `params` are `decode_weights_for(params, cfg)`: the kernel's `decode_cpu.PackedWeights` or
    `decode_step.decode_weights(params, cfg, transpose)` (see there)."""
    def cond(s: DecodeState):
        return (s.step < s.max_new_tokens) & (jnp.sum(~s.done) > min_live)

    return jax.lax.while_loop(cond, lambda s: _decode_step(params, s, cfg, sampling), state)


# the smallest batch `sample` compacts to. A SmolLM2 float32 decode step on the 2-core CPU: B = 32 147 ms,
# 16 118 ms, 8 80 ms, 4 56 ms, 2 53 ms (one row would save little more)
COMPACT_MIN_ROWS = 2


@jax.jit
def compact(state: DecodeState, keep_b) -> DecodeState:
    """The decode state of rows `keep_b` [b] (indices into the state's rows), one row per prompt slot.

    Row r of an (n prompts x G samples) state is sample r % G of prompt r // G;
    the compacted state has b prompts of one sample each: row j's prompt
    keys/values, prompt mask and generated keys/values are row keep[j]'s (its
    prompt's, copied per row). Every row array and `row_ids` follow, so the
    rows' later tokens, log-probs and random draws are the ones they would
    have had in the full batch.
    """
    G = state.cache[0].gen_k_t.shape[3]
    prompt, sample = keep_b // G, keep_b % G
    rows = lambda x: x[keep_b]
    cache = [select_rows(c, prompt, sample) for c in state.cache]
    return state.replace(tokens=rows(state.tokens), mask=rows(state.mask), logprobs=rows(state.logprobs),
                         entropies=rows(state.entropies), done=rows(state.done), last=rows(state.last),
                         positions=rows(state.positions), prompt_mask=state.prompt_mask[prompt], cache=cache,
                         row_ids=rows(state.row_ids))


@jax.jit
def _write_rows(out: SampleOutput, state: DecodeState) -> SampleOutput:
    """The state's rows written at their `row_ids` of the full [total_rows, N] output."""
    put = lambda full, part: full.at[state.row_ids].set(part)
    return SampleOutput(put(out.tokens, state.tokens), put(out.mask, state.mask),
                        put(out.logprobs, state.logprobs), put(out.entropies, state.entropies))


def _keep_live_first(done_B: np.ndarray, rows: int) -> np.ndarray:
    """`rows` row indices: every live row, then finished rows to fill the bucket (they stay finished)."""
    order = np.concatenate([np.flatnonzero(~done_B), np.flatnonzero(done_B)])
    return order[:rows].astype(np.int32)


def decode_weights_for(params, cfg: ModelConfig, kv_dtype: str = "auto"):
    """The weights `decode` reads on this backend: the native kernel's packed copy on CPU where it
    applies (`decode_cpu.use_kernel`, which keeps a float32 cache), else the feature-major copy on CPU,
    else the params as they are."""
    if decode_cpu.use_kernel(cfg) and cache_dtype(cfg, kv_dtype) == jnp.float32:
        return decode_cpu.packed_weights(params, cfg)
    return jit_decode_weights(params, cfg=cfg, transpose=jax.default_backend() == "cpu")


def sample(params, prompt_ids_NxP, prompt_mask_NxP, rng, *, cfg: ModelConfig, sampling: SamplingConfig,
           max_new_tokens: int, num_samples: int = 1, compact_min_rows: int = COMPACT_MIN_ROWS,
           decode_slots: int = 0) -> SampleOutput:
    """Samples `num_samples` completions per left-padded prompt. Pure; returns device arrays [n * G, N].

    Recorded log-probs/entropies: see `gpg_em.rollout.sampling` (equal to
    `gpg_em.models.completion_logprobs(..., temperature)` for plain sampling).

    Finished rows are dropped mid-decode: once at most half the rows are live
    (and half is at least `compact_min_rows`; 0 turns this off), the live
    rows move to a batch of half the size (`compact`), and so on. A decode
    step's cost grows with its rows, and RL completions are uneven (at
    4 x 8 rows and 128 tokens, most stop after 20-60 tokens while a few run
    to 128). The results are those of the uncompacted run (each row's draws
    follow its original index); the batch sizes are B, B/2, B/4, ... down to
    `compact_min_rows`: a bounded set of compiled shapes.

    `decode_slots` (config `rollout.decode_slots`): 0 decodes all rows at once as above; S >= 1 decodes
    them S at a time with continuous batching (`slots.sample_in_slots`: the same draws, tokens equal up
    to float rounding of the logits),
    -1 chooses S from free memory (`slots.resolve_slots`).
    """
    if decode_slots:
        from gpg_em.rollout import slots  # (slots builds on this module's prefill pieces)
        S = slots.resolve_slots(decode_slots, cfg, prompt_ids_NxP.shape[0] * num_samples,
                                prompt_ids_NxP.shape[1], max_new_tokens)
        return slots.sample_in_slots(params, prompt_ids_NxP, prompt_mask_NxP, rng, cfg=cfg, sampling=sampling,
                                     max_new_tokens=max_new_tokens, num_samples=num_samples, slots=S)
    state = prefill(params, prompt_ids_NxP, prompt_mask_NxP, rng, cfg=cfg, sampling=sampling,
                    max_new_tokens=max_new_tokens, num_samples=num_samples)
    if max_new_tokens == 1:  # (saves compiling a loop that would not run)
        return SampleOutput(state.tokens, state.mask, state.logprobs, state.entropies)
    weights = decode_weights_for(params, cfg, sampling.kv_dtype)
    out, rows = None, state.tokens.shape[0]
    while True:
        half = rows // 2
        shrink = compact_min_rows > 0 and half >= compact_min_rows and rows % 2 == 0
        state = decode(weights, state, half if shrink else 0, cfg=cfg, sampling=sampling)
        done = np.asarray(state.done)
        if not shrink or done.all() or int(state.step) >= max_new_tokens:
            break
        rows_so_far = SampleOutput(state.tokens, state.mask, state.logprobs, state.entropies)
        out = rows_so_far if out is None else _write_rows(out, state)  # the first state holds every row
        state, rows = compact(state, _keep_live_first(done, half)), half
    final = SampleOutput(state.tokens, state.mask, state.logprobs, state.entropies)
    return final if out is None else _write_rows(out, state)
