"""The native CPU decode step (gpg_em/kernels/decode_cpu.cc) against the XLA decode step, which the
sampler tests hold to the decoder and to transformers; its weight packing; its cache of packed
weights; its errors; and the switch back to the XLA step."""
import dataclasses
import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.kernels import build, decode_kernel_available
from gpg_em.models import Model, ModelConfig, init_params
from gpg_em.rollout import decode_cpu, decode_step, generate, sampler
from gpg_em.rollout.decode_step import KVCache
from test_decode_attention import blocks_k, blocks_v

needs_kernel = pytest.mark.skipif(not decode_kernel_available(), reason="the CPU decode kernel needs a C++ compiler "
                                  "and AVX-512 or AVX2 + FMA (warning says which)")

BASE = ModelConfig(vocab_size=203, hidden_size=40, intermediate_size=72, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=8)
VARIANTS = {
    "llama": {},
    "qwen2-bias-tied": {"qkv_bias": True, "tie_embeddings": True, "model_type": "qwen2"},
    "qwen3-qk-norm": {"qk_norm": True, "model_type": "qwen3", "rms_norm_eps": 1e-6},
    # SmolLM2's head shape (Dh 64, 3 query heads per kv head), 2 kv heads
    "dh64-q3": {"hidden_size": 96, "num_heads": 6, "num_kv_heads": 2, "head_dim": 64, "intermediate_size": 160},
    # 8 query heads per kv head (two groups of 4 in the kernel), Dh 24 (masked vectors)
    "q8-dh24": {"num_heads": 8, "num_kv_heads": 1, "head_dim": 24},
}


def _params(cfg):
    """Random params with non-trivial biases and norm scales."""
    noise = lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype)  # noqa: E731
    return jax.tree.map(noise, dict(init_params(cfg, jax.random.PRNGKey(0))))


def _random_step(cfg, n, G, P, N, seed=0, block=6):
    """A KV cache of random keys/values (N generated slots in blocks of `block`, the last one part-used when
    `block` does not divide N), prompt masks with left padding, tokens and positions."""
    rng = np.random.default_rng(seed)
    K, Dh = cfg.num_kv_heads, cfg.head_dim
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    cache = [KVCache(*map(jnp.asarray, (f(n, K, Dh, P), f(n, K, P, Dh), blocks_k(f(n, K, G, Dh, N), block),
                                        blocks_v(f(n, K, G, N, Dh), block))))
             for _ in range(cfg.num_layers)]
    lengths = rng.integers(1, P + 1, n)
    mask = jnp.asarray(np.arange(P)[None, :] >= P - lengths[:, None])
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, n * G), jnp.int32)
    positions = jnp.asarray(np.repeat(lengths, G) + rng.integers(0, N, n * G), jnp.int32)
    return cache, mask, tokens, positions


@needs_kernel
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("n,G,index", [(1, 1, 0), (3, 4, 5), (2, 5, 8), (1, 13, 3), (4, 8, 15)])
def test_kernel_step_equals_xla_step(variant, n, G, index):
    """Logits and the updated cache of one step, for row counts that use every row tile (8, 4, 2, 1)."""
    cfg = dataclasses.replace(BASE, **VARIANTS[variant])
    params = _params(cfg)
    P, N = 6, 16
    cache, mask, tokens, positions = _random_step(cfg, n, G, P, N, seed=n * 100 + G)
    weights = decode_step.decode_weights(params, cfg, transpose=True)
    hidden, want_cache = decode_step.step_hidden(weights, cfg, tokens, positions, mask, cache, index)
    want = decode_step.step_logits(weights, cfg, hidden)
    got, got_cache = jax.jit(lambda p, c: decode_cpu.step(p, cfg, tokens, positions, mask, c, index))(
        decode_cpu.pack_weights(params, cfg=cfg), cache)
    assert got.shape == (n * G, cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5 * float(jnp.abs(want).max()), rtol=0)
    for g, w in zip(got_cache, want_cache):
        for a, b in zip(g, w):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernel_step_with_an_index_per_row_equals_xla_step(variant):
    """Continuous batching's step: each row reads its own generated slots < index[b] and writes at index[b]."""
    cfg = dataclasses.replace(BASE, **VARIANTS[variant])
    params = _params(cfg)
    n, G, P, N = 6, 1, 6, 16
    cache, mask, tokens, positions = _random_step(cfg, n, G, P, N, seed=7)
    index = jnp.asarray([0, 15, 3, 8, 1, 15], jnp.int32)
    weights = decode_step.decode_weights(params, cfg, transpose=True)
    hidden, want_cache = decode_step.step_hidden(weights, cfg, tokens, positions, mask, cache, index)
    want = decode_step.step_logits(weights, cfg, hidden)
    got, got_cache = jax.jit(lambda p, c: decode_cpu.step(p, cfg, tokens, positions, mask, c, index))(
        decode_cpu.pack_weights(params, cfg=cfg), cache)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5 * float(jnp.abs(want).max()), rtol=0)
    for g, w in zip(got_cache, want_cache):
        for a, b in zip(g, w):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
    # a row at its own index differs from the same row at another: the per-row index is read
    shifted, _ = decode_cpu.step(decode_cpu.pack_weights(params, cfg=cfg), cfg, tokens, positions, mask, cache,
                                 index.at[1].set(2))
    assert not np.allclose(np.asarray(shifted)[1], np.asarray(got)[1])
    np.testing.assert_array_equal(np.asarray(shifted)[0], np.asarray(got)[0])


def test_pack_panels_layout():
    """packed[p, k, c] = w[k, 48 p + c], zero beyond the last column (checked against numpy indexing)."""
    w = np.random.default_rng(0).normal(size=(5, 100)).astype(np.float32)
    packed = np.asarray(decode_cpu.pack_panels(jnp.asarray(w)))
    assert packed.shape == (3, 5, 48)
    for p in range(3):
        for c in range(48):
            col = 48 * p + c
            np.testing.assert_array_equal(packed[p, :, c], w[:, col] if col < 100 else 0.0)


def test_packed_weights_reused_for_the_same_params_and_dropped_with_them():
    cfg = BASE
    params = _params(cfg)
    first = decode_cpu.packed_weights(params, cfg)
    assert decode_cpu.packed_weights(params, cfg) is first
    other = jax.tree.map(lambda x: x + 0, params)  # equal values, new arrays
    assert decode_cpu.packed_weights(other, cfg) is not first
    del other
    gc.collect()
    assert decode_cpu._LastPacked.entry is None  # the packed copy went with its params
    decode_cpu.packed_weights(params, cfg)
    decode_cpu.release_packed_weights()
    assert decode_cpu._LastPacked.entry is None


@needs_kernel
def test_kernel_reports_a_bad_index():
    cfg = BASE
    cache, mask, tokens, positions = _random_step(cfg, 2, 2, 4, 8, block=4)  # 2 blocks of 4: 8 slots
    packed = decode_cpu.pack_weights(_params(cfg), cfg=cfg)
    with pytest.raises(Exception, match="index outside the generated slots"):
        jax.block_until_ready(decode_cpu.step(packed, cfg, tokens, positions, mask, cache, 8))
    with pytest.raises(Exception, match="index outside the generated slots"):  # one row's index past N
        jax.block_until_ready(decode_cpu.step(packed, cfg, tokens, positions, mask, cache,
                                              jnp.asarray([0, 8, 1, 2], jnp.int32)))
    with pytest.raises(Exception, match="index must hold 1 or B values"):
        jax.block_until_ready(decode_cpu.step(packed, cfg, tokens, positions, mask, cache, jnp.zeros(3, jnp.int32)))


@needs_kernel
def test_kernel_reports_weights_of_another_model():
    """Packed weights of a model with another MLP width: an error naming the array, not a crash."""
    cfg = BASE
    cache, mask, tokens, positions = _random_step(cfg, 2, 2, 4, 8)
    wider = dataclasses.replace(cfg, intermediate_size=cfg.intermediate_size + 48)
    packed = decode_cpu.pack_weights(_params(wider), cfg=wider)
    with pytest.raises(Exception, match="w_gu has .* elements, expected"):
        jax.block_until_ready(decode_cpu.step(packed, cfg, tokens, positions, mask, cache, 1))


@needs_kernel
@pytest.mark.parametrize("variant", ["llama", "qwen3-qk-norm"])
def test_sampler_same_tokens_with_kernel_and_with_xla_step(monkeypatch, variant):
    """Greedy completions agree token for token; recorded log-probs and entropies within 1e-5."""
    cfg = dataclasses.replace(BASE, **VARIANTS[variant])
    model = Model(_params(cfg), cfg)
    prompts = [[5, 17, 33, 8, 9, 120], [7], [40, 41, 42, 43, 44, 45, 46, 47]]
    assert isinstance(sampler.decode_weights_for(model.params, cfg), decode_cpu.PackedWeights)
    fast = generate(model, prompts, max_new_tokens=12, greedy=True, num_samples=2)
    monkeypatch.setenv("GPG_EM_CPU_KERNEL", "0")
    assert not decode_cpu.use_kernel(cfg)
    assert isinstance(sampler.decode_weights_for(model.params, cfg), dict)
    slow = generate(model, prompts, max_new_tokens=12, greedy=True, num_samples=2)
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    np.testing.assert_array_equal(fast.mask, slow.mask)
    np.testing.assert_allclose(fast.logprobs, slow.logprobs, atol=1e-5)
    np.testing.assert_allclose(fast.entropies, slow.entropies, atol=1e-5)


def test_library_name_follows_the_source(monkeypatch, tmp_path):
    """An edited source or header builds a new library instead of loading a stale one; the cache folder
    is settable."""
    monkeypatch.setenv("GPG_EM_KERNEL_CACHE", str(tmp_path))
    kernels = build._SOURCE.parent
    original = build._library_path("c++", "/include")
    assert original.parent == tmp_path and original.name.startswith("decode_cpu-")
    edited = tmp_path / "decode_cpu.cc"
    edited.write_text(build._SOURCE.read_text() + "\n// edited\n")
    monkeypatch.setattr(build, "_SOURCE", edited)
    assert build._library_path("c++", "/include") != original
    copy = tmp_path / "copy"  # all sources, then one header edited
    copy.mkdir()
    for f in [kernels / "decode_cpu.cc", *kernels.glob("*.h")]:
        (copy / f.name).write_text(f.read_text())
    monkeypatch.setattr(build, "_SOURCE", copy / "decode_cpu.cc")
    before = build._library_path("c++", "/include")
    (copy / "pool.h").write_text((copy / "pool.h").read_text() + "\n// edited\n")
    assert build._library_path("c++", "/include") != before


def test_kernel_unavailable_without_a_compiler(monkeypatch, tmp_path):
    """No compiler: a warning that says so, and the sampler keeps its XLA step."""
    if build._missing_vector_flags(build._cpu_flags().split()):
        pytest.skip("this CPU has neither AVX-512 nor AVX2 + FMA: the kernel is unavailable for that reason instead")
    monkeypatch.setenv("CXX", os.path.join("/nonexistent", "c++"))
    monkeypatch.setenv("GPG_EM_KERNEL_CACHE", str(tmp_path))  # nothing built there yet
    build.decode_kernel_available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="CPU decode kernel unavailable"):
            assert build.decode_kernel_available() is False
    finally:
        build.decode_kernel_available.cache_clear()


@pytest.mark.parametrize("flags,missing", [
    ("fpu avx avx2 fma avx512f avx512bw", []),  # AVX-512
    ("fpu avx avx2 fma", []),  # AVX2 + FMA
    ("fpu avx fma", ["avx512f", "avx2"]),
    ("fpu avx avx2", ["avx512f", "fma"]),
    ("", ["avx512f", "avx2", "fma"]),  # no x86 flags line (e.g. aarch64)
])
def test_vector_flags_the_kernel_accepts(flags, missing):
    assert build._missing_vector_flags(flags.split()) == missing


def test_kernel_unavailable_without_vector_flags(monkeypatch):
    """A CPU with neither AVX-512 nor AVX2 + FMA: a warning naming the missing flags, no build."""
    monkeypatch.setattr(build, "_cpu_flags", lambda: "flags\t\t: fpu sse2 avx fma")
    build.decode_kernel_available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=r"neither AVX-512 nor AVX2 \+ FMA \(no avx512f, avx2\)"):
            assert build.decode_kernel_available() is False
    finally:
        build.decode_kernel_available.cache_clear()


@needs_kernel
def test_kernel_calls_from_two_threads_agree_with_one():
    """Steps issued from two Python threads at once (the kernel serialises them over its one pool)."""
    import threading
    cfg = dataclasses.replace(BASE, **VARIANTS["dh64-q3"])
    cache, mask, tokens, positions = _random_step(cfg, 4, 8, 6, 16)
    packed = decode_cpu.pack_weights(_params(cfg), cfg=cfg)
    step = jax.jit(lambda p, c, i: decode_cpu.step(p, cfg, tokens, positions, mask, c, i)[0])
    want = {i: np.asarray(step(packed, cache, i)) for i in range(8)}
    got, errors = {}, []

    def worker(indices):
        try:
            for _ in range(5):
                for i in indices:
                    got.setdefault(i, []).append(np.asarray(step(packed, cache, i)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(range(k, 8, 2),)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    for i, outs in got.items():
        for out in outs:
            np.testing.assert_array_equal(out, want[i])
