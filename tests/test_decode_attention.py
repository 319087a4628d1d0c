"""The decode step's blocked attention over filled generated slots equals a plain masked softmax (numpy)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.rollout import decode_step
from gpg_em.rollout.decode_step import KVCache


def numpy_attention(q, cache, prompt_mask, index):
    """softmax over [valid prompt slots ++ generated slots 0..index] of q.k / sqrt(Dh), times v, in float64."""
    q, pk, pv, gk, gv = (np.asarray(a, np.float64) for a in (q, *cache))
    n, K, G, Q, Dh = q.shape
    out = np.zeros_like(q)
    for i, k, g, h in np.ndindex(n, K, G, Q):
        keys = np.concatenate([pk[i, k].T[prompt_mask[i]], gk[i, k, g].T[:index + 1]])  # [S, Dh]
        values = np.concatenate([pv[i, k][prompt_mask[i]], gv[i, k, g][:index + 1]])
        s = keys @ q[i, k, g, h] / np.sqrt(Dh)
        p = np.exp(s - s.max())
        out[i, k, g, h] = (p / p.sum()) @ values
    return out


def random_case(N, seed=0, n=2, K=2, G=3, Q=2, Dh=8, P=5):
    r = np.random.default_rng(seed)
    f = lambda *shape: r.normal(size=shape).astype(np.float32) * 2
    cache = KVCache(f(n, K, Dh, P), f(n, K, P, Dh), f(n, K, G, Dh, N), f(n, K, G, N, Dh))
    prompt_mask = np.ones((n, P), bool)
    prompt_mask[0, :3] = False  # left padding
    return f(n, K, G, Q, Dh), cache, prompt_mask


@pytest.mark.parametrize("block,N", [(4, 10), (4, 12), (16, 10), (128, 7)])
def test_blocked_attention_equals_masked_softmax(monkeypatch, block, N):
    """Every index of budgets that are, and are not, a multiple of the block (the last block clamped)."""
    monkeypatch.setattr(decode_step, "GEN_BLOCK", block)
    q, cache, prompt_mask = random_case(N)
    attend = jax.jit(lambda q, c, m, t: decode_step._attend(q, c, m, t, jnp.float32))
    for index in range(N):
        got = attend(q, cache, prompt_mask, jnp.int32(index))
        np.testing.assert_allclose(got, numpy_attention(q, cache, prompt_mask, index), rtol=2e-5, atol=2e-5)


def test_unfilled_blocks_are_never_read(monkeypatch):
    """NaN in every block after the one holding `index`: the output is finite and unchanged (those blocks
    are not read; inside the last read block, slots past `index` are zero as the sampler leaves them)."""
    monkeypatch.setattr(decode_step, "GEN_BLOCK", 4)
    q, cache, prompt_mask = random_case(N=16, seed=1)
    index = 5  # blocks 0 and 1 (slots 0-7) are read
    poisoned = cache._replace(gen_k_t=cache.gen_k_t.copy(), gen_v=cache.gen_v.copy())
    poisoned.gen_k_t[..., 8:] = np.nan
    poisoned.gen_v[..., 8:, :] = np.nan
    got = np.asarray(decode_step._attend(q, poisoned, prompt_mask, jnp.int32(index), jnp.float32))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, numpy_attention(q, cache, prompt_mask, index), rtol=2e-5, atol=2e-5)
