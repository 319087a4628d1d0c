"""Per-token log-probs and entropies without materialising [B, T, V] logits.

The head projection, log-softmax and entropy are computed over chunks of the
sequence inside a `lax.scan`; each chunk's body is wrapped in
`jax.checkpoint`, so the backward pass recomputes that chunk's logits instead
of storing them. Peak memory is O(B * chunk * V) rather than O(B * T * V).

Definitions (shared with the sampler, which records the same quantities):
  z = h @ W_head / temperature                  (float32)
  logp[b, t]    = z[target] - logsumexp(z)       log-prob under the tempered policy
  entropy[b, t] = logsumexp(z) - sum_v p_v z_v   = -sum_v p_v log p_v,  p = softmax(z)
Top-p / top-k truncation is a sampling-time filter only: it is not part of
these definitions (see gpg_em.rollout for why).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gpg_em.models.config import ModelConfig
from gpg_em.models.model import hidden_states
from gpg_em.models.shared_prefix import gather_groups, identity_packing, shared_prefix_hidden, slot_groups


def logprob_entropy_from_logits(logits_NxV: jnp.ndarray, targets_N: jnp.ndarray):
    """(logp [N], entropy [N]) of float32 logits (already temperature-scaled)."""
    logits = logits_NxV.astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets_N[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logits - logz[..., None])
    entropy = logz - jnp.sum(probs * logits, axis=-1)
    return target_logit - logz, entropy


def chunked_logprobs(hidden_BxTxD, head, targets_BxT, *, temperature: float = 1.0, chunk_size: int = 128,
                     vocab_major: bool = False):
    """(logp [B, T], entropy [B, T]) of `targets` given final hidden states.

    `head` is the output projection [D, V], or [V, D] with `vocab_major` (a
    tied embedding, contracted on D as it is: no transposed copy of it, and
    its gradient comes out in the embedding's layout). Scans over
    ceil(T / chunk_size) chunks; only one chunk's [B, C, V] float32 logits
    exist at a time, in the forward and (rematerialised) backward pass.
    """
    B, T, D = hidden_BxTxD.shape
    C = min(chunk_size, T)
    n = -(-T // C)
    pad = n * C - T
    h = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0))).reshape(B, n, C, D).swapaxes(0, 1)
    y = jnp.pad(targets_BxT, ((0, 0), (0, pad))).reshape(B, n, C).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(h_BxCxD, y_BxC):
        w = head.astype(h_BxCxD.dtype)
        z = jax.lax.dot_general(h_BxCxD.reshape(B * C, D), w, (((1,), (1 if vocab_major else 0,)), ((), ())),
                                preferred_element_type=jnp.float32)  # 2-D: XLA:CPU's rank-3 dot is slower
        logp, ent = logprob_entropy_from_logits(z / temperature, y_BxC.reshape(B * C))
        return logp.reshape(B, C), ent.reshape(B, C)

    _, (logp, ent) = jax.lax.scan(lambda c, xs: (c, chunk(*xs)), None, (h, y))
    unchunk = lambda a: a.swapaxes(0, 1).reshape(B, n * C)[:, :T]
    return unchunk(logp), unchunk(ent)


@functools.partial(jax.jit, static_argnames=("cfg", "temperature", "chunk_size"))
def completion_logprobs(params, cfg: ModelConfig, prompt_ids_BxP, prompt_mask_BxP, completion_ids_BxN,
                        completion_mask_BxN, *, temperature: float = 1.0, chunk_size: int = 128):
    """Teacher-forced (logp, entropy), each [B, N], of completion tokens after their prompts.

    Prompts are left-padded [B, P], completions right-padded [B, N]; the
    sequence is their concatenation and hidden state P-1+j predicts
    completion token j. Values at masked completion positions are defined
    but meaningless: multiply by the mask.
    """
    ids = jnp.concatenate([prompt_ids_BxP, completion_ids_BxN], axis=1)
    mask = jnp.concatenate([prompt_mask_BxP, completion_mask_BxN], axis=1)
    hidden = hidden_states(params, cfg, ids, mask)
    P, N = prompt_ids_BxP.shape[1], completion_ids_BxN.shape[1]
    h = jax.lax.dynamic_slice_in_dim(hidden, P - 1, N, axis=1)
    head, vocab_major = _head(params, cfg)
    return chunked_logprobs(h, head, completion_ids_BxN, vocab_major=vocab_major,
                            temperature=temperature, chunk_size=chunk_size)


def _head(params, cfg: ModelConfig):
    """(output projection, vocab_major): the tied embedding [V, D] as it is, else lm_head [D, V]."""
    return (params["embed"], True) if cfg.tie_embeddings else (params["lm_head"], False)


def _unpack_slots(pack_index_mxL, width: int):
    """slot [m, width]: the packed slot of each lane position (positions not packed read slot 0: mask them).
    One scatter per lane (vmapped): lanes stay independent, so a lane-sharded batch needs no gather."""
    m, L = pack_index_mxL.shape
    target = jnp.where(pack_index_mxL >= 0, pack_index_mxL, width)  # empty slots scatter out of bounds: dropped
    lane = lambda t: jnp.zeros((width,), jnp.int32).at[t].set(jnp.arange(L, dtype=jnp.int32), mode="drop")
    return jax.vmap(lane)(target)


@functools.partial(jax.jit, static_argnames=("cfg", "group_size", "temperature", "chunk_size", "remat",
                                                  "scan_layers", "attention_block"))
def grouped_completion_logprobs(params, cfg: ModelConfig, prompt_ids_BxP, prompt_mask_BxP, completion_ids_BxN,
                                pack_index_mxL=None, *, group_size: int, temperature: float = 1.0,
                                chunk_size: int = 128, remat: bool = False, scan_layers: bool = True,
                                attention_block: int = 0):
    """`completion_logprobs` for rows in groups of `group_size` sharing a prompt, each prompt computed once.

    Rows b = i * G + g (prompt-major, as the sampler orders them); only row
    i * G of each group's prompt is read. With `pack_index` [m, L]
    (`shared_prefix.packing_index`) only the packed tokens are computed, the
    rows of each lane's groups end to end without their padding; without it
    every position is, one group per lane. Same (logp, entropy) [B, N] as the
    per-row function at the valid positions, up to float rounding
    (gpg_em.models.shared_prefix). `attention_block` as in `shared_prefix_hidden`.
    """
    B, N = completion_ids_BxN.shape
    G = group_size
    index = identity_packing(B // G, G, N) if pack_index_mxL is None else pack_index_mxL
    index = jnp.pad(index, ((0, 0), (0, -index.shape[1] % N)), constant_values=-1)  # whole attention windows
    m = index.shape[0]
    safe = jnp.maximum(index, 0)
    tokens = jnp.take_along_axis(completion_ids_BxN.reshape(m, B // m * N), safe, axis=1)
    row, pos = jnp.where(index >= 0, index // N, -1), safe % N
    h_last, h_c = shared_prefix_hidden(params, cfg, prompt_ids_BxP[::G], prompt_mask_BxP[::G], tokens, row, pos,
                                       window=N, group_size=G, remat=remat, scan_layers=scan_layers,
                                       attention_block=attention_block)
    # slot t is predicted by slot t-1 of its row, a row's first token by its group's last prompt slot
    prev = jnp.concatenate([h_c[:, :1], h_c[:, :-1]], axis=1)
    h = jnp.where((pos == 0)[..., None], gather_groups(h_last, slot_groups(row, G)), prev)
    head, vocab_major = _head(params, cfg)
    # chunks of n/m * chunk_size slots a lane: the head's product has n * chunk_size rows, as the
    # per-row path's [n, chunk_size] chunks, whatever the number of lanes (which stay the batch axis)
    logp, ent = chunked_logprobs(h, head, tokens, temperature=temperature, chunk_size=chunk_size * (B // G // m),
                                 vocab_major=vocab_major)
    slot = _unpack_slots(index, B // m * N)
    unpack = lambda values_mxL: jnp.take_along_axis(values_mxL, slot, axis=1).reshape(B, N)
    return unpack(logp), unpack(ent)
