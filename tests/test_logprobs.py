"""Chunked log-probs/entropies against a naive full-logits numpy/JAX computation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.models import ModelConfig, Model, chunked_logprobs, completion_logprobs, forward, init_params


def naive(h, w, y, temperature):
    z = np.asarray(h, np.float64) @ np.asarray(w, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    logz = np.log(np.exp(z).sum(-1))
    logp_all = z - logz[..., None]
    logp = np.take_along_axis(logp_all, y[..., None], -1)[..., 0]
    ent = -(np.exp(logp_all) * logp_all).sum(-1)
    return logp, ent


@pytest.mark.parametrize("T,chunk", [(7, 3), (8, 8), (5, 16)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_match_naive(T, chunk, temperature):
    rng = np.random.RandomState(0)
    h = rng.randn(3, T, 16).astype(np.float32)
    w = rng.randn(16, 50).astype(np.float32)
    y = rng.randint(0, 50, (3, T))
    logp, ent = chunked_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(y), temperature=temperature,
                                 chunk_size=chunk)
    ref_logp, ref_ent = naive(h, w, y, temperature)
    np.testing.assert_allclose(logp, ref_logp, atol=1e-4)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-4)


def test_gradients_match_naive_jax():
    rng = np.random.RandomState(1)
    h = jnp.asarray(rng.randn(2, 9, 8), jnp.float32)
    w = jnp.asarray(rng.randn(8, 30), jnp.float32)
    y = jnp.asarray(rng.randint(0, 30, (2, 9)))
    c = jnp.asarray(rng.randn(2, 9), jnp.float32)

    def full(h, w):
        z = jax.nn.log_softmax(h @ w, -1)
        logp = jnp.take_along_axis(z, y[..., None], -1)[..., 0]
        return jnp.sum(c * logp) + jnp.sum(-(jnp.exp(z) * z).sum(-1))

    def chunked(h, w):
        logp, ent = chunked_logprobs(h, w, y, chunk_size=4)
        return jnp.sum(c * logp) + jnp.sum(ent)

    for a, b in zip(jax.grad(full, (0, 1))(h, w), jax.grad(chunked, (0, 1))(h, w)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_vocab_major_head_matches_naive_values_and_gradients():
    """A [V, D] head (the tied embedding, contracted as it is) gives the [D, V] head's values and the
    transposed gradient."""
    rng = np.random.RandomState(3)
    h = jnp.asarray(rng.randn(2, 7, 8), jnp.float32)
    w_VxD = jnp.asarray(rng.randn(30, 8), jnp.float32)
    y = jnp.asarray(rng.randint(0, 30, (2, 7)))
    logp, ent = chunked_logprobs(h, w_VxD, y, chunk_size=3, temperature=0.7, vocab_major=True)
    ref_logp, ref_ent = naive(h, np.asarray(w_VxD).T, np.asarray(y), 0.7)
    np.testing.assert_allclose(logp, ref_logp, atol=1e-4)
    np.testing.assert_allclose(ent, ref_ent, atol=1e-4)
    loss = lambda w, major: jnp.sum(sum(chunked_logprobs(h, w, y, chunk_size=3, vocab_major=major)))
    np.testing.assert_allclose(jax.grad(loss)(w_VxD, True), jax.grad(loss)(w_VxD.T, False).T, atol=1e-5)


def test_completion_logprobs_match_full_forward():
    cfg = ModelConfig(vocab_size=41, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=8)
    model = Model(init_params(cfg, jax.random.PRNGKey(0)), cfg)
    rng = np.random.RandomState(2)
    prompt = rng.randint(0, 41, (2, 5)); pmask = np.ones((2, 5), np.int32); pmask[1, :2] = 0  # left pad
    comp = rng.randint(0, 41, (2, 4)); cmask = np.ones((2, 4), np.int32); cmask[0, 3:] = 0  # right pad
    logp, ent = completion_logprobs(model.params, cfg, prompt, pmask, comp, cmask, temperature=0.7, chunk_size=3)
    logits = np.asarray(forward(model, np.concatenate([prompt, comp], 1), np.concatenate([pmask, cmask], 1)))
    z = logits[:, 4:8] / 0.7
    z = z - z.max(-1, keepdims=True)
    lp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(logp, np.take_along_axis(lp_all, comp[..., None], -1)[..., 0], atol=1e-5)
    np.testing.assert_allclose(ent, -(np.exp(lp_all) * lp_all).sum(-1), atol=1e-5)


def test_peak_memory_far_below_full_logits():
    """Compiled temp memory of forward+grad at V=151,936 and B*T=16,384 (XLA's own accounting).

    Only compiled, never run: the naive version would need ~10 GB of logits.
    """
    B, T, D, V = 8, 2048, 64, 151_936
    h = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
    w = jax.ShapeDtypeStruct((D, V), jnp.float32)
    y = jax.ShapeDtypeStruct((B, T), jnp.int32)

    def loss_chunked(h, w, y):
        logp, ent = chunked_logprobs(h, w, y, chunk_size=32)
        return logp.sum() + ent.sum()

    def loss_naive(h, w, y):
        z = jax.nn.log_softmax(h @ w, -1)
        return jnp.take_along_axis(z, y[..., None], -1).sum() - (jnp.exp(z) * z).sum()

    mem = lambda f: jax.jit(jax.grad(f, (0, 1))).lower(h, w, y).compile().memory_analysis().temp_size_in_bytes
    logits_bytes = B * T * V * 4
    assert mem(loss_naive) >= logits_bytes
    assert mem(loss_chunked) < logits_bytes / 10
