"""Completion attention in query blocks (train.attention_block) against the unblocked form and the per-row forward.

Completions of N = 48 tokens in query blocks of 8, 16 and 20 slots (20: not a
divisor of N or of the packed width, so the slots are padded), rows of varied
lengths with empty slots between groups. The references are the per-row
forward `completion_logprobs` on the expanded [B, P + N] rows (checked against
transformers elsewhere) and the unblocked packed form (`attention_block=0`).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.configuration import ConfigError, get
from gpg_em.models import ModelConfig, completion_logprobs, grouped_completion_logprobs, init_params
from gpg_em.models.shared_prefix import packed_width, packing_index, shared_prefix_hidden

G, N, P = 3, 48, 7


def _cfg():
    return ModelConfig(vocab_size=53, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, qkv_bias=True)


def _batch(n=4, seed=0):
    """n groups of G rows: prompts of different lengths, completions of 1 ... N tokens (one row full)."""
    rng = np.random.RandomState(seed)
    prompts = rng.randint(1, 53, (n, P))
    pmask = np.ones((n, P), np.int32)
    pmask[0, :3] = 0
    pmask[2, :5] = 0
    stops = rng.randint(1, N + 1, n * G)
    stops[4] = N
    cmask = (np.arange(N)[None] < stops[:, None]).astype(np.int32)
    comp = rng.randint(1, 53, (n * G, N)) * cmask
    return np.repeat(prompts, G, 0), np.repeat(pmask, G, 0), comp, cmask


def _loss(fn, weights):
    def f(p):
        logp, ent = fn(p)
        return jnp.sum(weights * logp) + 0.3 * jnp.sum(weights * ent), (logp, ent)
    return f


@pytest.mark.parametrize("query_block,lanes", [(8, 1), (16, 2), (20, 0)])
def test_blocked_values_and_gradients_match_unblocked_and_per_row(query_block, lanes):
    cfg = _cfg()
    params = init_params(cfg, jax.random.PRNGKey(1))
    prompt, pmask, comp, cmask = _batch()
    index = None if lanes == 0 else packing_index(cmask, G, packed_width(cmask, G, 8, lanes=lanes), lanes=lanes)
    weights = jnp.asarray(np.random.RandomState(3).randn(*comp.shape) * cmask, jnp.float32)
    grouped = lambda block: _loss(lambda p: grouped_completion_logprobs(
        p, cfg, prompt, pmask, comp, index, group_size=G, temperature=0.7, chunk_size=16, remat=True,
        attention_block=block), weights)
    per_row = _loss(lambda p: completion_logprobs(p, cfg, prompt, pmask, comp, cmask, temperature=0.7,
                                                  chunk_size=16), weights)
    (l_b, (lp_b, h_b)), g_b = jax.value_and_grad(grouped(query_block), has_aux=True)(params)
    m = cmask.astype(bool)
    for ref in (grouped(0), per_row):
        (l_r, (lp_r, h_r)), g_r = jax.value_and_grad(ref, has_aux=True)(params)
        np.testing.assert_allclose(np.asarray(lp_b)[m], np.asarray(lp_r)[m], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(h_b)[m], np.asarray(h_r)[m], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(l_b), float(l_r), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(g_r), jax.tree.leaves(g_b), strict=True):
            # float32 sums in another order: errors follow the array's scale (an AVX-512 XLA build moved one
            # element of a gradient with entries up to ~4 by 1.9e-6)
            scale = max(float(np.abs(np.asarray(a)).max()), 1.0)
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6 * scale)


def test_blocked_hidden_states_match_unblocked_at_packed_tokens():
    """shared_prefix_hidden's completion hidden states at every packed token, two lanes, no remat, unrolled."""
    cfg = _cfg()
    params = init_params(cfg, jax.random.PRNGKey(2))
    prompt, pmask, comp, cmask = _batch(seed=1)
    index = packing_index(cmask, G, packed_width(cmask, G, N, lanes=2), lanes=2)  # whole windows of N slots
    m = index.shape[0]
    safe = np.maximum(index, 0)
    tokens = np.take_along_axis(comp.reshape(m, -1), safe, axis=1)
    row, pos = np.where(index >= 0, index // N, -1), safe % N
    hidden = lambda block: shared_prefix_hidden(params, cfg, prompt[::G], pmask[::G], tokens, row, pos, window=N,
                                                group_size=G, scan_layers=False, attention_block=block)
    (last_b, h_b), (last_r, h_r) = hidden(8), hidden(0)
    valid = index >= 0
    assert valid.sum() == cmask.sum() and not valid.all()
    np.testing.assert_allclose(np.asarray(h_b)[valid], np.asarray(h_r)[valid], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(last_b), np.asarray(last_r), rtol=1e-5, atol=1e-6)


def test_negative_attention_block_is_refused_with_the_key():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with pytest.raises(ConfigError, match="train.attention_block"):
        get(os.path.join(root, "configs", "tiny.py"), [("train.attention_block", "-1")])
    assert get(os.path.join(root, "configs", "tiny.py"), []).train.attention_block == 512
