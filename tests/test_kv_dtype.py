"""rollout.kv_dtype: the sampler's KV cache stored in float32 or bfloat16, whatever the model's dtype.

A bfloat16 cache under a float32 model rounds every stored key (after RoPE) and value to bfloat16 and
nothing else: the greedy tokens and recorded log-probs equal a float64 numpy forward whose keys and
values are rounded so. "auto" is the compute dtype, bit for bit.
"""
import functools
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from gpg_em.configuration import ConfigError, get
from gpg_em.models import ModelConfig, init_params
from gpg_em.rollout import SamplingConfig, decode, prefill
from gpg_em.rollout import decode_step
from gpg_em.rollout.sampler import decode_weights_for, left_pad, sample
from gpg_em.train import resume
from test_decode_attention import numpy_attention, random_case

TINY = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, eos_token_ids=(2,))
PROMPTS = [[5, 17, 33, 8, 9, 120], [7], [40, 41, 42, 43, 44, 45, 46, 47, 48]]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def tiny_params(dtype: str = "float32"):
    """Random params; the head scaled by 20 so next-token distributions are sharp (no near-ties)."""
    cfg = TINY.replace(dtype=dtype)
    params = dict(init_params(cfg, jax.random.PRNGKey(0)))
    params["lm_head"] = params["lm_head"] * 20
    return cfg, params


def to_bf16(a):
    """a rounded to bfloat16 (round to nearest even, from float32), back in float64."""
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def numpy_logits(params, cfg: ModelConfig, ids, round_kv: bool):
    """Logits [T, V] of one unpadded sequence, float64, causal; keys (after RoPE) and values rounded to
    bfloat16 when `round_kv`. Llama: RMSNorm, GQA attention, rotate-half RoPE, SiLU MLP, untied head."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    T, H, K, Dh = len(ids), cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    inv = 1.0 / cfg.rope_theta ** (np.arange(0, Dh, 2) / Dh)
    angles = np.arange(T)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([angles] * 2, -1))[:, None], np.sin(np.concatenate([angles] * 2, -1))[:, None]
    rope = lambda a: a * cos + np.concatenate([-a[..., Dh // 2:], a[..., :Dh // 2]], -1) * sin
    norm = lambda a, scale: a / np.sqrt((a * a).mean(-1, keepdims=True) + cfg.rms_norm_eps) * scale
    kv = to_bf16 if round_kv else (lambda a: a)
    x = p["embed"][np.asarray(ids)]
    for i in range(cfg.num_layers):
        lp = p[f"layers_{i}"]
        a, m = lp["attn"], lp["mlp"]
        h = norm(x, lp["input_norm"]["scale"])
        q = rope((h @ a["q_proj"]["kernel"]).reshape(T, H, Dh))
        k = np.repeat(kv(rope((h @ a["k_proj"]["kernel"]).reshape(T, K, Dh))), H // K, axis=1)  # head h: kv h // (H/K)
        v = np.repeat(kv((h @ a["v_proj"]["kernel"]).reshape(T, K, Dh)), H // K, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(Dh)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        x = x + np.einsum("hts,shd->thd", w / w.sum(-1, keepdims=True), v).reshape(T, H * Dh) @ a["o_proj"]["kernel"]
        h = norm(x, lp["post_attn_norm"]["scale"])
        g = h @ m["gate_proj"]["kernel"]
        x = x + (g / (1 + np.exp(-g)) * (h @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]
    return norm(x, p["final_norm"]["scale"]) @ p["lm_head"]


def numpy_greedy(params, cfg, prompt, steps, round_kv):
    """(tokens [steps], log-probs [steps]) of greedy decoding by full recomputation."""
    seq, tokens, logps = list(prompt), [], []
    for _ in range(steps):
        z = numpy_logits(params, cfg, seq, round_kv)[-1]
        logz = z.max() + np.log(np.exp(z - z.max()).sum())
        tokens.append(int(z.argmax()))
        logps.append(z.max() - logz)
        seq.append(tokens[-1])
    return np.array(tokens), np.array(logps)


def run_sampler(dtype, kv_dtype, greedy=True, steps=10, num_samples=1):
    cfg, params = tiny_params(dtype)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    sampling = SamplingConfig(greedy=greedy, kv_dtype=kv_dtype)  # no stop tokens: every row runs `steps`
    out = sample(params, ids, mask, jax.random.PRNGKey(3), cfg=cfg, sampling=sampling, max_new_tokens=steps,
                 num_samples=num_samples)
    return [np.asarray(a) for a in out]


def test_bf16_cache_equals_numpy_forward_with_rounded_keys_and_values():
    cfg, params = tiny_params()
    tokens, _, logps, _ = run_sampler("float32", "bfloat16")
    unrounded_gap = 0.0
    for row, prompt in enumerate(PROMPTS):
        want_tokens, want_logps = numpy_greedy(params, cfg, prompt, tokens.shape[1], round_kv=True)
        np.testing.assert_array_equal(tokens[row], want_tokens)
        np.testing.assert_allclose(logps[row], want_logps, atol=2e-5)
        _, exact_logps = numpy_greedy(params, cfg, prompt, tokens.shape[1], round_kv=False)
        unrounded_gap = max(unrounded_gap, np.abs(logps[row] - exact_logps).max())
    assert unrounded_gap > 1e-4  # the rounding is visible: the check above could fail


def test_float32_cache_equals_numpy_forward_without_rounding():
    cfg, params = tiny_params()
    tokens, _, logps, _ = run_sampler("float32", "float32")
    for row, prompt in enumerate(PROMPTS):
        want_tokens, want_logps = numpy_greedy(params, cfg, prompt, tokens.shape[1], round_kv=False)
        np.testing.assert_array_equal(tokens[row], want_tokens)
        np.testing.assert_allclose(logps[row], want_logps, atol=2e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_auto_is_the_compute_dtype_bit_for_bit(dtype):
    for greedy in (True, False):
        auto = run_sampler(dtype, "auto", greedy, num_samples=2)
        same = run_sampler(dtype, dtype, greedy, num_samples=2)
        for a, b in zip(auto, same):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype,kv_dtype,stored", [
    ("float32", "auto", jnp.float32), ("float32", "bfloat16", jnp.bfloat16),
    ("bfloat16", "auto", jnp.bfloat16), ("bfloat16", "float32", jnp.float32)])
def test_prompt_and_generated_caches_are_stored_in_the_dtype(dtype, kv_dtype, stored):
    cfg, params = tiny_params(dtype)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    sampling = SamplingConfig(kv_dtype=kv_dtype)
    state = prefill(params, ids, mask, jax.random.PRNGKey(0), cfg=cfg, sampling=sampling, max_new_tokens=6,
                    num_samples=2)
    state = decode(decode_weights_for(params, cfg, kv_dtype), state, cfg=cfg, sampling=sampling)
    assert int(state.step) == 6
    assert len(state.cache) == cfg.num_layers
    assert {a.dtype for layer in state.cache for a in layer} == {jnp.dtype(stored)}


def test_decode_attention_reads_a_bf16_cache_without_rounding_probabilities():
    """A float32 query over a bfloat16 cache equals numpy attention over the (exactly representable) bf16
    keys/values at float32 tolerance: the probabilities are not rounded to bfloat16 (that would cost ~1e-3)."""
    N = 10
    q, cache, prompt_mask = random_case(N)
    cache_bf16 = decode_step.KVCache(*(jnp.asarray(a, jnp.bfloat16) for a in cache))
    attend = jax.jit(lambda q, c, m, t: decode_step._attend(q, c, m, t, jnp.float32))
    for index in (0, 4, N - 1):
        got = attend(q, cache_bf16, prompt_mask, jnp.int32(index))
        assert got.dtype == jnp.float32
        want = numpy_attention(q, decode_step.KVCache(*(to_bf16(a) for a in cache)), prompt_mask, index)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_bad_kv_dtype_is_refused_with_the_key():
    with pytest.raises(ConfigError, match="rollout.kv_dtype"):
        get(os.path.join(ROOT, "configs", "tiny.py"), [("rollout.kv_dtype", "float16")])
    with pytest.raises(ValueError, match="kv_dtype"):
        SamplingConfig(kv_dtype="fp8")


def test_kv_dtype_changes_what_is_sampled_so_resuming_refuses_it():
    assert resume.refused([("rollout.kv_dtype", "auto", "bfloat16")], "") != []
    assert resume.refused([("rollout.kv_dtype", "auto", "bfloat16")], "rollout.kv_dtype") == []
