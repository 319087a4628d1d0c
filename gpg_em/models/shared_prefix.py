"""Teacher-forced forward of G completions per prompt, the prompt computed once per group.

An RL batch holds n groups of G rows that share one prompt. Computing the
prompt's hidden states, keys and values once per group instead of once per
row is exact: every completion token attends to the same prompt keys/values
it would see in its own row, and the backward pass sums the gradients that
flow into the shared prompt activations from the G completions, which is what
the G separate rows would add up to. It removes (G - 1) / G of the prompt
tokens' forward and backward work.

Layout: prompts [n, P] (left-padded); completions are packed end to end into
m lanes of L slots ([m, L]). Lane k holds the R = B / m rows of groups
k * n/m ... (k+1) * n/m - 1; slot t holds token `pos[t]` of lane row
`row[t]` (-1: an empty slot). With `packing_index` only valid tokens are
packed, so the padding after each row's stop token costs nothing, and the
groups of a lane follow each other, each starting at a multiple of
`prompt_block(N)` slots (so a block of that many slots reads one group's
prompt); `identity_packing` packs all G * N positions of one group per lane.
Prompt slot s has position cumsum(prompt_mask)[s] - 1; completion token j has
position L_p + j, L_p the group's prompt length, as `positions_from_mask`
gives over the concatenated row. A completion token attends to its group's
valid prompt slots and to the earlier tokens of its own row: for blocks of N
slots against the window of 2N slots ending with the block
(`_completion_attention`, O(N^2) scores a block), or with `attention_block`
= Cq < N in query blocks of Cq slots with an online softmax over key blocks
(gpg_em.models.blocked_attention, O(Cq * (P + Cq)) a step), the same values.

The layer maths is the one definition in `gpg_em.models.layer` (as the
decoder and the decode step run it), on prompts and packed completions as two
token-major streams; `block` supplies the attention strategy above.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gpg_em.models.blocked_attention import blocked_completion_attention
from gpg_em.models.config import ModelConfig
from gpg_em.models.decoder import _dtype
from gpg_em.models.layer import Streams, TokenMajor, layer
from gpg_em.models.model import positions_from_mask

_NEG = -1e30
PROMPT_BLOCK = 32  # largest block of packed slots that reads one prompt (prompt_block)


def _prompt_attention(q, k, v, allowed_nxPxP, dt):
    """Causal masked attention within the prompts: q [n,P,K,g,Dh], k/v [n,P,K,Dh] -> [n,P,K,g,Dh]."""
    s = jnp.einsum("ntkgd,nskd->nkgts", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    p = jax.nn.softmax(jnp.where(allowed_nxPxP[:, None, None], s, _NEG), axis=-1)
    return jnp.einsum("nkgts,nskd->ntkgd", p.astype(dt), v.astype(dt))


def _blocks_with_previous(x_nxLx, C: int, fill):
    """[n, L, ...] -> [n, L/C, 2C, ...]: each block of C slots preceded by the block before it."""
    n, L = x_nxLx.shape[:2]
    b = x_nxLx.reshape(n, L // C, C, *x_nxLx.shape[2:])
    prev = jnp.concatenate([jnp.full_like(b[:, :1], fill), b[:, :-1]], axis=1)
    return jnp.concatenate([prev, b], axis=2)


def completion_window_mask(row_nxL, C: int):
    """allowed [n, L/C, C, 2C]: query slot t of a block sees window slot s when both hold the same row
    and s <= t. Rows are contiguous and at most C long, so a row's earlier tokens always lie in the
    query's block or the one before it."""
    n, L = row_nxL.shape
    t = jnp.arange(L).reshape(L // C, C)
    s = jnp.concatenate([t - C, t], axis=1)  # [L/C, 2C]
    rows_q = row_nxL.reshape(n, L // C, C)
    rows_k = _blocks_with_previous(row_nxL, C, -1)
    return ((rows_q[..., :, None] == rows_k[..., None, :]) & (rows_k[..., None, :] >= 0)
            & (s[None, :, None, :] <= t[None, :, :, None]))


def _to_blocks(x, m: int, blocks: int):
    """[m, L, K, ...] (L = blocks * c) -> [m, blocks, K, c, ...]: each block's heads leading."""
    return jnp.moveaxis(x.reshape(m, blocks, -1, *x.shape[2:]), 3, 2)


def _regroup(x, blocks: int):
    """[m, b, K, c, ...] -> [m, blocks, K, b * c / blocks, ...]: the same slots in blocks of another size."""
    m, b, K, c = x.shape[:4]
    x = jnp.moveaxis(x, 2, 3).reshape(m, blocks, b * c // blocks, K, *x.shape[4:])
    return jnp.moveaxis(x, 3, 2)


def _completion_attention(q, k_p, v_p, k_c, v_c, prompt_mask_mxbxP, allowed_mxcxCx2C, dt):
    """Packed completion queries q [m,L,K,g,Dh] over their group's prompt and their own row.

    k_p, v_p [m, L/Cp, P, K, Dh] and the prompt mask [m, L/Cp, P] hold, for
    each block of Cp slots, the prompt of the group that block belongs to.
    Blocks of C slots attend to a window of the 2C packed slots ending with
    their block (`completion_window_mask`). One softmax over both, with a
    shared maximum and denominator: O(L * (P + 2C)) work instead of O(L * (P
    + L)). Scores stay [m, blocks, K, C, g, keys], the layout the batched
    products write (XLA:CPU would otherwise transpose every score array).
    """
    m, L, K, g, Dh = q.shape
    Cp, C = L // k_p.shape[1], allowed_mxcxCx2C.shape[-2]
    k_w, v_w = _blocks_with_previous(k_c, C, 0), _blocks_with_previous(v_c, C, 0)  # [m, L/C, 2C, K, Dh]
    scale = Dh ** -0.5
    s_p = jnp.einsum("mbktgd,mbskd->mbktgs", _to_blocks(q, m, L // Cp), k_p,
                     preferred_element_type=jnp.float32) * scale
    s_c = jnp.einsum("mbktgd,mbskd->mbktgs", _to_blocks(q, m, L // C), k_w,
                     preferred_element_type=jnp.float32) * scale
    s_p = _regroup(jnp.where(prompt_mask_mxbxP[:, :, None, None, None, :], s_p, _NEG), L // C)
    s_c = jnp.where(allowed_mxcxCx2C[:, :, None, :, None, :], s_c, _NEG)
    top = jax.lax.stop_gradient(jnp.maximum(s_p.max(-1, keepdims=True), s_c.max(-1, keepdims=True)))
    e_p, e_c = jnp.exp(s_p - top), jnp.exp(s_c - top)
    total = e_p.sum(-1, keepdims=True) + e_c.sum(-1, keepdims=True)
    o_p = jnp.einsum("mbktgs,mbskd->mbktgd", _regroup(e_p, L // Cp).astype(dt), v_p.astype(dt))
    o_c = jnp.einsum("mbktgs,mbskd->mbktgd", e_c.astype(dt), v_w.astype(dt))
    out = (_regroup(o_p, L // C) + o_c) / total.astype(dt)  # [m, L/C, K, C, g, Dh]
    return jnp.moveaxis(out, 2, 3).reshape(m, L, K, g, Dh)


def gather_groups(x_nx, group_mxK):
    """[n, ...] per group -> [m, K, ...]: x of lane-local group `group[k, j]` of lane k (n/m groups a lane)."""
    m = group_mxK.shape[0]
    lanes = x_nx.reshape(m, x_nx.shape[0] // m, *x_nx.shape[1:])
    return jax.vmap(lambda xs, i: xs[i])(lanes, group_mxK)


def _lanes(x_nx, m: int):
    """[n, ...] per group -> [m, n/m, ...]: each lane's groups."""
    return x_nx.reshape(m, x_nx.shape[0] // m, *x_nx.shape[1:])


def _attend_completions(q_c, k_p, v_p, k_c, v_c, layout, dt, *, window: int, query_block: int):
    """Completion attention [m, L, K, g, Dh] in the form `layout` was made for (`completion_layout`)."""
    m = q_c.shape[0]
    if query_block:
        return blocked_completion_attention(q_c, _lanes(k_p, m), _lanes(v_p, m), k_c, v_c, layout["prompt_mask"],
                                            layout["row"], layout["group"], window=window, query_block=query_block,
                                            prompt_block=prompt_block(window), dt=dt)
    group = layout["block_group"]
    return _completion_attention(q_c, gather_groups(k_p, group), gather_groups(v_p, group), k_c, v_c,
                                 layout["block_prompt_mask"], layout["allowed"], dt)


def completion_layout(row_mxL, prompt_mask_nxP, *, group_size: int, window: int, query_block: int) -> dict:
    """What the completion attention reads besides q, k, v. query_block 0 (one block of `window` slots
    against a window of 2 * window: `_completion_attention`): block_group [m, L/Cp] the lane-local group
    of each prompt block, block_prompt_mask [m, L/Cp, P] its prompt mask, allowed the window mask.
    query_block > 0 (`blocked_completion_attention`): row, group [m, L] and prompt_mask [m, n/m, P]."""
    m, L = row_mxL.shape
    group = slot_groups(row_mxL, group_size)
    if query_block:
        return dict(row=row_mxL, group=group, prompt_mask=_lanes(prompt_mask_nxP, m))
    Cp = prompt_block(window)
    block_group = group.reshape(m, L // Cp, Cp).max(axis=-1)  # empty slots read group 0: max is the block's group
    return dict(block_group=block_group, block_prompt_mask=gather_groups(prompt_mask_nxP, block_group),
                allowed=completion_window_mask(row_mxL, window))


def block(lp, cfg: ModelConfig, x_p, x_c, pos_p, pos_c, allowed_p, layout, *, window: int, query_block: int = 0):
    """One decoder layer (`layer.layer`) over prompts x_p [n, P, D] and packed completions x_c [m, L, D] as two
    streams. The attention strategy: prompts attend causally within themselves (`_prompt_attention`),
    completions to their group's prompt and their own row (`_attend_completions`, in the form `layout`
    (`completion_layout`) was made for: query_block selects it)."""
    dt, K = _dtype(cfg), cfg.num_kv_heads
    grouped = lambda q: q.reshape(*q.shape[:2], K, q.shape[2] // K, q.shape[3])  # [.., H, Dh] -> [.., K, H/K, Dh]

    def attend(qs, ks, vs):
        (q_p, q_c), (k_p, k_c), (v_p, v_c) = (grouped(q) for q in qs), ks, vs
        o_p = _prompt_attention(q_p, k_p, v_p, allowed_p, dt)
        o_c = _attend_completions(q_c, k_p, v_p, k_c, v_c, layout, dt, window=window, query_block=query_block)
        return tuple(o.reshape(*o.shape[:2], -1, o.shape[-1]) for o in (o_p, o_c)), None
    ops = Streams(*(TokenMajor(cfg, pos, pin=False, flat=True) for pos in (pos_p, pos_c)))
    (x_p, x_c), _ = layer(lp, cfg, (x_p, x_c), ops, attend)
    return x_p, x_c


def prompt_block(N: int) -> int:
    """Cp: packed slots are read in blocks of Cp that share one group's prompt (a divisor of N)."""
    return math.gcd(PROMPT_BLOCK, N)


def identity_packing(n: int, G: int, N: int) -> jnp.ndarray:
    """pack_index [n, G*N]: one group per lane, its G rows end to end, padding included."""
    return jnp.broadcast_to(jnp.arange(G * N, dtype=jnp.int32), (n, G * N))


def _group_counts(mask_BxN, G: int, lanes: int):
    """Valid completion tokens of each group, [lanes, groups per lane]."""
    B, _ = mask_BxN.shape
    if (B // G) % lanes:
        raise ValueError(f"{B // G} groups do not split into {lanes} lanes")
    return mask_BxN.reshape(lanes, B // G // lanes, -1).sum(2)


def _lane_lengths(counts_mxg, align: int):
    """Slots each lane needs: every group but the last rounded up to `align`."""
    rounded = -(-counts_mxg // align) * align
    return rounded[:, :-1].sum(1) + counts_mxg[:, -1]


def packing_index(completion_mask_BxN, G: int, width: int, lanes: int = 0):
    """pack_index [lanes, width] (host numpy; lanes 0: one per group): valid completion tokens end to end.

    Lane k packs the rows of groups k * n/lanes ... in order; slot p holds
    flat token r * N + j of the lane's [R, N] completions (lane row r, token
    j), or -1 when empty. Each group starts at a multiple of
    `prompt_block(N)`. `width` must hold the longest lane (`packed_width`).
    """
    mask = np.asarray(completion_mask_BxN).astype(bool)
    B, N = mask.shape
    lanes = lanes or B // G
    counts = _group_counts(mask, G, lanes)
    align, need = prompt_block(N), _lane_lengths(counts, prompt_block(N))
    if need.max(initial=0) > width:
        raise ValueError(f"packing width {width} < {need.max()} slots needed by one lane")
    index = np.full((lanes, width), -1, np.int32)
    flat = mask.reshape(lanes, -1, G * N)  # [lanes, groups per lane, G * N]
    for k in range(lanes):
        start = 0
        for i, group in enumerate(flat[k]):
            valid = np.flatnonzero(group) + i * G * N
            index[k, start:start + valid.size] = valid
            start += -(-valid.size // align) * align
    return index


def lane_need(completion_mask_BxN, G: int, lanes: int = 0) -> int:
    """Slots the longest lane of `packing_index` needs (at least 1; at most its rows' R * N)."""
    mask = np.asarray(completion_mask_BxN).astype(bool)
    lanes = lanes or mask.shape[0] // G
    return int(_lane_lengths(_group_counts(mask, G, lanes), prompt_block(mask.shape[1])).max(initial=1))


def packed_width(completion_mask_BxN, G: int, multiple: int, lanes: int = 0) -> int:
    """Width holding the longest lane (`packing_index`), rounded up to `multiple`, at most its rows' R * N."""
    B, N = np.shape(completion_mask_BxN)
    lanes = lanes or B // G
    return min(B // lanes * N, -(-lane_need(completion_mask_BxN, G, lanes) // multiple) * multiple)


def stacked_layers(params, num_layers: int):
    """The layers' parameters stacked on a leading [num_layers] axis (a copy), for `lax.scan`."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"layers_{i}"] for i in range(num_layers)])


def slot_groups(row_mxL, G: int):
    """Lane-local group of each packed slot, [m, L] (0 for empty slots)."""
    return jnp.maximum(row_mxL, 0) // G


def shared_prefix_hidden(params, cfg: ModelConfig, prompt_ids_nxP, prompt_mask_nxP, tokens_mxL, row_mxL, pos_mxL,
                         *, window: int, group_size: int, remat: bool = False, scan_layers: bool = True,
                         attention_block: int = 0):
    """Final-norm hidden states: (last prompt slot [n, D], packed completion slots [m, L, D]).

    Packed slot t of lane k holds token `tokens[k, t]` of lane row `row[k, t]`
    (-1: empty; rows of lane k are its groups' rows, `group_size` a group) at
    completion position `pos[k, t]` (0 for a row's first token); a row's
    tokens are contiguous, in order and at most `window` long (L a multiple
    of `window`: the completion maximum N), and each block of
    `prompt_block(window)` slots holds one group's tokens. `remat` recomputes
    each layer's activations in the backward pass (`jax.checkpoint` per
    layer): memory O(one layer) instead of O(all layers). `scan_layers` runs
    the layers in a `lax.scan` over their stacked parameters: traced and
    compiled once instead of num_layers times, and with `remat` the backward
    pass recomputes one layer at a time (unrolled, XLA may schedule every
    layer's recomputation at once, which keeps most of the memory remat
    should save). Unrolled without remat is the fastest on a CPU (no stacked copy).
    `attention_block` = Cq with 0 < Cq < window: the completion attention runs in query blocks of Cq
    slots with an online softmax (`blocked_completion_attention`), memory O(Cq * (P + Cq)) a step
    instead of O(window * 2 * window) per block of window slots; 0 or >= window: the latter form.
    """
    dt = _dtype(cfg)
    P = prompt_ids_nxP.shape[1]
    pmask = prompt_mask_nxP.astype(bool)
    pos_p = positions_from_mask(pmask)
    pos_c = gather_groups(pmask.sum(axis=1).astype(jnp.int32), slot_groups(row_mxL, group_size)) + pos_mxL
    query_block = attention_block if 0 < attention_block < window else 0
    layout = completion_layout(row_mxL, pmask, group_size=group_size, window=window, query_block=query_block)
    allowed_p = jnp.tril(jnp.ones((P, P), bool))[None] & pmask[:, None, :]
    embed = lambda ids: jnp.take(params["embed"], ids, axis=0).astype(dt)
    x_p, x_c = embed(prompt_ids_nxP), embed(tokens_mxL)
    run_block = functools.partial(block, window=window, query_block=query_block)
    run_block = jax.checkpoint(run_block, static_argnums=(1,)) if remat else run_block

    def body(x, lp):
        return run_block(lp, cfg, *x, pos_p, pos_c, allowed_p, layout), None
    if scan_layers:
        (x_p, x_c), _ = jax.lax.scan(body, (x_p, x_c), stacked_layers(params, cfg.num_layers))
    else:
        for i in range(cfg.num_layers):
            (x_p, x_c), _ = body((x_p, x_c), params[f"layers_{i}"])
    final = TokenMajor(cfg, None, pin=False).norm
    scale = params["final_norm"]["scale"]
    return final(x_p[:, -1], scale), final(x_c, scale)
