"""Prompt-shared forward (each group's prompt computed once) against the per-row forward.

The reference is `completion_logprobs` on the expanded [B, P + N] rows, which
tests/test_logprobs.py and tests/test_loading.py check against full logits and
transformers. Values and gradients of a masked loss must agree.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.models import ModelConfig, completion_logprobs, grouped_completion_logprobs, init_params
from gpg_em.models.shared_prefix import packed_width, packing_index, prompt_block

G, N, P = 3, 6, 7


def _cfg(**variant):
    return ModelConfig(vocab_size=53, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=8, **variant)


def _batch(seed=0, n=2):
    """n groups of G rows: prompts of different lengths (left-padded), completions stopping at different places."""
    rng = np.random.RandomState(seed)
    prompts = rng.randint(0, 53, (n, P))
    pmask = np.ones((n, P), np.int32)
    pmask[0, :3] = 0  # the first prompt is 4 tokens long
    comp = rng.randint(0, 53, (n * G, N))
    cmask = np.ones((n * G, N), np.int32)
    for b, stop in enumerate(rng.randint(1, N + 1, n * G)):
        cmask[b, stop:] = 0
    comp = comp * cmask  # pad id 0 after the stop, as the sampler writes
    return np.repeat(prompts, G, 0), np.repeat(pmask, G, 0), comp, cmask


@pytest.mark.parametrize("variant", [{}, {"qkv_bias": True, "tie_embeddings": True}, {"qk_norm": True}])
@pytest.mark.parametrize("remat,packed,scan", [(False, False, True), (True, False, True), (False, True, True),
                                               (True, True, True), (False, True, False), (True, True, False)])
def test_values_and_gradients_match_per_row_forward(variant, remat, packed, scan):
    cfg = _cfg(**variant)
    params = init_params(cfg, jax.random.PRNGKey(1))
    prompt, pmask, comp, cmask = _batch()
    index = packing_index(cmask, G, width=cmask.reshape(-1, G * N).sum(1).max() + 2) if packed else None
    _assert_grouped_matches_per_row(cfg, params, (prompt, pmask, comp, cmask), index, remat=remat, scan=scan)


def _assert_grouped_matches_per_row(cfg, params, batch, index, *, remat, scan):
    """Values and gradients of a masked loss of logp and entropy: grouped (packed by `index`) vs per-row."""
    prompt, pmask, comp, cmask = batch
    weights = jnp.asarray(np.random.RandomState(3).randn(*comp.shape) * cmask, jnp.float32)

    def loss(fn):
        def f(p):
            logp, ent = fn(p)
            return jnp.sum(weights * logp) + 0.3 * jnp.sum(weights * ent), (logp, ent)
        return f

    ref = loss(lambda p: completion_logprobs(p, cfg, prompt, pmask, comp, cmask, temperature=0.7, chunk_size=4))
    ours = loss(lambda p: grouped_completion_logprobs(p, cfg, prompt, pmask, comp, index, group_size=G,
                                                      temperature=0.7, chunk_size=4, remat=remat,
                                                      scan_layers=scan))
    (l_ref, (lp_ref, h_ref)), g_ref = jax.value_and_grad(ref, has_aux=True)(params)
    (l_ours, (lp_ours, h_ours)), g_ours = jax.value_and_grad(ours, has_aux=True)(params)
    m = cmask.astype(bool)
    np.testing.assert_allclose(np.asarray(lp_ours)[m], np.asarray(lp_ref)[m], atol=1e-5)
    np.testing.assert_allclose(np.asarray(h_ours)[m], np.asarray(h_ref)[m], atol=1e-5)
    np.testing.assert_allclose(float(l_ours), float(l_ref), rtol=1e-5)
    flat_ref, flat_ours = jax.tree.leaves(g_ref), jax.tree.leaves(g_ours)
    assert len(flat_ref) == len(flat_ours)
    for a, b in zip(flat_ref, flat_ours):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("lanes", [1, 2])
def test_lanes_of_several_groups_match_per_row_forward(lanes):
    """Four groups packed into one or two lanes: each group starts on a prompt block, reads its own prompt."""
    cfg = _cfg()
    params = init_params(cfg, jax.random.PRNGKey(1))
    batch = _batch(seed=2, n=4)
    index = packing_index(batch[3], G, packed_width(batch[3], G, 4, lanes=lanes), lanes=lanes)
    assert index.shape[0] == lanes and prompt_block(N) == 2
    _assert_grouped_matches_per_row(cfg, params, batch, index, remat=True, scan=True)


def test_only_the_first_row_of_each_group_prompt_is_read():
    """Rows of a group must share a prompt; the grouped function reads row i * G (documented)."""
    cfg = _cfg()
    params = init_params(cfg, jax.random.PRNGKey(1))
    prompt, pmask, comp, _ = _batch()
    other = prompt.copy()
    other[1:G] = (other[1:G] + 1) % 53  # corrupt the non-first rows of group 0
    a = grouped_completion_logprobs(params, cfg, prompt, pmask, comp, group_size=G)[0]
    b = grouped_completion_logprobs(params, cfg, other, pmask, comp, group_size=G)[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_packing_index_lays_rows_end_to_end():
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])  # 2 groups of 2 rows, N = 3
    np.testing.assert_array_equal(packing_index(mask, 2, width=4), [[0, 1, 3, -1], [0, 1, 2, -1]])
    with pytest.raises(ValueError, match="packing width 2 < 3"):
        packing_index(mask, 2, width=2)


def test_packing_index_lanes_align_groups_to_prompt_blocks():
    # 4 groups of 2 rows, N = 4 (prompt blocks of 4 slots), 2 lanes of 2 groups
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0],   # group 0: 3 tokens
                     [1, 1, 1, 1], [1, 1, 0, 0],   # group 1: 6 tokens
                     [1, 0, 0, 0], [0, 0, 0, 0],   # group 2: 1 token
                     [1, 1, 1, 0], [1, 1, 1, 1]])  # group 3: 7 tokens
    assert prompt_block(4) == 4 and packed_width(mask, 2, 1, lanes=2) == 4 + 7
    assert packed_width(mask, 2, 4, lanes=2) == 12 and packed_width(mask, 2, 1, lanes=1) == 4 + 8 + 4 + 7
    index = packing_index(mask, 2, width=12, lanes=2)
    np.testing.assert_array_equal(index, [[0, 1, 4, -1, 8, 9, 10, 11, 12, 13, -1, -1],
                                          [0, -1, -1, -1, 8, 9, 10, 12, 13, 14, 15, -1]])
    with pytest.raises(ValueError, match="packing width 10 < 11"):
        packing_index(mask, 2, width=10, lanes=2)
    with pytest.raises(ValueError, match="4 groups do not split into 3 lanes"):
        packing_index(mask, 2, width=12, lanes=3)
