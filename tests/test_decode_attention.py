"""The decode step's blocked attention over filled generated slots equals a plain masked softmax (numpy)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.rollout import decode_step
from gpg_em.rollout.decode_step import KVCache


def blocks_k(flat, T):
    """[n, K, G, Dh, N] keys -> the cache's [C, n, K, G, Dh, T] blocks (C = ceil(N / T), zero-padded)."""
    C = -(-flat.shape[-1] // T)
    pad = np.pad(flat, [(0, 0)] * 4 + [(0, C * T - flat.shape[-1])])
    return np.ascontiguousarray(pad.reshape(*flat.shape[:4], C, T).transpose(4, 0, 1, 2, 3, 5))


def blocks_v(flat, T):
    """[n, K, G, N, Dh] values -> [C, n, K, G, T, Dh] blocks."""
    return blocks_k(flat.swapaxes(-1, -2), T).swapaxes(-1, -2).copy()


def unblock_k(blocked):
    """[C, n, K, G, Dh, T] -> [n, K, G, Dh, C T]: generated slot t at position t."""
    C, n, K, G, Dh, T = blocked.shape
    return np.asarray(blocked).transpose(1, 2, 3, 4, 0, 5).reshape(n, K, G, Dh, C * T)


def unblock_v(blocked):
    """[C, n, K, G, T, Dh] -> [n, K, G, C T, Dh]."""
    return unblock_k(np.asarray(blocked).swapaxes(-1, -2)).swapaxes(-1, -2)


def numpy_attention(q, cache, prompt_mask, index):
    """softmax over [valid prompt slots ++ generated slots 0..index] of q.k / sqrt(Dh), times v, in float64."""
    q, pk, pv = (np.asarray(a, np.float64) for a in (q, cache.prompt_k_t, cache.prompt_v))
    gk, gv = unblock_k(np.asarray(cache.gen_k_t, np.float64)), unblock_v(np.asarray(cache.gen_v, np.float64))
    n, K, G, Q, Dh = q.shape
    out = np.zeros_like(q)
    for i, k, g, h in np.ndindex(n, K, G, Q):
        keys = np.concatenate([pk[i, k].T[prompt_mask[i]], gk[i, k, g].T[:index + 1]])  # [S, Dh]
        values = np.concatenate([pv[i, k][prompt_mask[i]], gv[i, k, g][:index + 1]])
        s = keys @ q[i, k, g, h] / np.sqrt(Dh)
        p = np.exp(s - s.max())
        out[i, k, g, h] = (p / p.sum()) @ values
    return out


def random_case(N, seed=0, n=2, K=2, G=3, Q=2, Dh=8, P=5, block=128):
    """(q, a cache of N generated slots in blocks of min(block, N), prompt mask), random."""
    r = np.random.default_rng(seed)
    f = lambda *shape: r.normal(size=shape).astype(np.float32) * 2
    T = min(block, N)
    cache = KVCache(f(n, K, Dh, P), f(n, K, P, Dh), blocks_k(f(n, K, G, Dh, N), T), blocks_v(f(n, K, G, N, Dh), T))
    prompt_mask = np.ones((n, P), bool)
    prompt_mask[0, :3] = False  # left padding
    return f(n, K, G, Q, Dh), cache, prompt_mask


@pytest.mark.parametrize("block,N", [(4, 10), (4, 12), (16, 10), (128, 7)])
def test_blocked_attention_equals_masked_softmax(block, N):
    """Every index of budgets that are, and are not, a multiple of the block (the last block part-filled)."""
    q, cache, prompt_mask = random_case(N, block=block)
    attend = jax.jit(lambda q, c, m, t: decode_step._attend(q, c, m, t, jnp.float32))
    for index in range(N):
        got = attend(q, cache, prompt_mask, jnp.int32(index))
        np.testing.assert_allclose(got, numpy_attention(q, cache, prompt_mask, index), rtol=2e-5, atol=2e-5)


def test_unfilled_blocks_are_never_read():
    """NaN in every block after the one holding `index`: the output is finite and unchanged (those blocks
    are not read; inside the last read block, slots past `index` are masked)."""
    q, cache, prompt_mask = random_case(N=16, seed=1, block=4)
    index = 5  # blocks 0 and 1 (slots 0-7) are read
    poisoned = cache._replace(gen_k_t=cache.gen_k_t.copy(), gen_v=cache.gen_v.copy())
    poisoned.gen_k_t[2:] = np.nan
    poisoned.gen_v[2:] = np.nan
    got = np.asarray(decode_step._attend(q, poisoned, prompt_mask, jnp.int32(index), jnp.float32))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, numpy_attention(q, cache, prompt_mask, index), rtol=2e-5, atol=2e-5)
