"""The rollout sampler: greedy parity with transformers, recorded log-probs = training path,
sampling distribution, reproducibility, stop tokens, prompt-length bucketing."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import PROMPTS, chat_ids
from gpg_em.models import Model, ModelConfig, completion_logprobs, forward, init_params
from gpg_em.rollout import SamplingConfig, choose_tokens, decode, generate, prefill, prompt_bucket

TINY = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, eos_token_ids=(2,))


@functools.cache
def tiny(scale: float = 20.0) -> Model:
    """A random 2-layer model; `scale` on the head sharpens its next-token distributions (H ~ 4.3 nats at 20)."""
    params = dict(init_params(TINY, jax.random.PRNGKey(0)))
    params["lm_head"] = params["lm_head"] * scale
    return Model(params, TINY)


PROMPT_IDS = [[5, 17, 33, 8, 9, 120], [7], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57]]


def _recorded_vs_training(model, result, temperature):
    logp, ent = completion_logprobs(model.params, model.config, jnp.asarray(result.prompt_ids),
                                    jnp.asarray(result.prompt_mask), jnp.asarray(result.tokens),
                                    jnp.asarray(result.mask), temperature=temperature)
    m = result.mask.astype(bool)
    ent = np.asarray(ent)[m]
    # Entropy error relative to max(1, H). The two paths order float32 sums differently (the decode step
    # multiplies transposed weights); a logit error dz moves H by -Cov_p(dz, log p) / T, which is not
    # bounded by max|dz| alone, so entropies get 3x the log-prob tolerance (asserted by the callers).
    return (np.abs(np.asarray(logp)[m] - result.logprobs[m]).max(),
            (np.abs(ent - result.entropies[m]) / np.maximum(1.0, ent)).max())


# ---------------------------------------------------------------- SmolLM2 against transformers

def test_greedy_matches_transformers(smollm2, smollm2_torch):
    import torch
    ids = chat_ids(smollm2.tokenizer)  # 3 prompts of different lengths, left-padded below
    ours = generate(smollm2, ids, max_new_tokens=64, greedy=True)
    width = max(map(len, ids))
    pad = smollm2.tokenizer.pad_token_id
    hf_ids = torch.tensor([[pad] * (width - len(p)) + p for p in ids])
    hf_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    with torch.no_grad():
        hf = smollm2_torch.generate(input_ids=hf_ids, attention_mask=hf_mask, do_sample=False, max_new_tokens=64,
                                    eos_token_id=2, pad_token_id=pad)[:, width:].numpy()
    for b in range(len(ids)):
        ref = list(hf[b])
        ref = ref[:ref.index(2) + 1] if 2 in ref else ref
        assert ours.tokens[b][ours.mask[b].astype(bool)].tolist() == ref, b
    assert ours.texts[0] == smollm2.tokenizer.decode(ours.tokens[0][ours.mask[0] > 0], skip_special_tokens=True)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_smollm2_recorded_logprobs_equal_training_path(smollm2, temperature):
    result = generate(smollm2, PROMPTS[:2], max_new_tokens=24, num_samples=2, temperature=temperature, seed=3)
    assert result.tokens.shape == (4, 24) and result.prompt_ids.shape[0] == 4
    dlogp, dent = _recorded_vs_training(smollm2, result, temperature)
    assert dlogp <= 1e-4 and dent <= 3e-4, (dlogp, dent)


# ---------------------------------------------------------------- recorded values, tiny model

@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 1.0, 0), (0.7, 0.9, 20)])
def test_recorded_logprobs_equal_training_path(temperature, top_p, top_k):
    """Also under truncation: the record is the untruncated tempered log-prob (see rollout.sampling)."""
    model = tiny()
    result = generate(model, PROMPT_IDS, max_new_tokens=20, num_samples=3, temperature=temperature,
                      top_p=top_p, top_k=top_k, seed=1)
    assert result.tokens.shape == (9, 20) and result.mask.sum() > 20
    dlogp, dent = _recorded_vs_training(model, result, temperature)
    assert dlogp <= 1e-4 and dent <= 1e-4, (dlogp, dent)


def test_seed_reproducible_and_varies():
    model = tiny()
    a, b = (generate(model, PROMPT_IDS, max_new_tokens=12, num_samples=2, seed=7) for _ in range(2))
    c = generate(model, PROMPT_IDS, max_new_tokens=12, num_samples=2, seed=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (a.tokens != c.tokens).mean() > 0.5
    assert (a.tokens[0] != a.tokens[1]).any()  # two samples of one prompt differ


@pytest.mark.parametrize("kernel", ["1", "0"])
@pytest.mark.parametrize("variant", [{}, {"qkv_bias": True, "tie_embeddings": True}, {"qk_norm": True}])
def test_greedy_follows_teacher_forced_argmax(variant, kernel, monkeypatch):
    """The decode step (its own code: the native CPU kernel, or with GPG_EM_CPU_KERNEL=0 the XLA
    feature-major step) agrees with the decoder for the Llama, Qwen2 (q/k/v bias, tied head) and
    Qwen3 (q/k RMSNorm) variants."""
    import dataclasses
    monkeypatch.setenv("GPG_EM_CPU_KERNEL", kernel)
    if variant:
        cfg = dataclasses.replace(TINY, **variant)
        params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype),
                              dict(init_params(cfg, jax.random.PRNGKey(0))))  # non-trivial biases / norm scales
        model = Model(params, cfg)
    else:
        model = tiny()
    result = generate(model, PROMPT_IDS, max_new_tokens=10, greedy=True, stop_token_ids=[])
    logits = forward(model, np.concatenate([result.prompt_ids, result.tokens], 1),
                     np.concatenate([result.prompt_mask, result.mask], 1))
    P = result.prompt_ids.shape[1]
    np.testing.assert_array_equal(np.asarray(logits[:, P - 1:-1]).argmax(-1), result.tokens)


# ---------------------------------------------------------------- the sampling distribution

N_DRAWS = 20000


def _frequencies(tokens, vocab):
    return np.bincount(np.asarray(tokens).ravel(), minlength=vocab) / tokens.size


def _assert_freqs_match(freq, probs, n=N_DRAWS):
    """Each token's frequency within 5 standard errors (+1e-4) of its probability; no draw outside the support."""
    tol = 5 * np.sqrt(probs * (1 - probs) / n) + 1e-4
    assert np.all(np.abs(freq - probs) <= tol), np.max(np.abs(freq - probs) - tol)
    assert freq[probs == 0].sum() == 0


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.8), (50, 0.9)])
def test_one_step_frequencies_match_softmax(top_k, top_p):
    """20k first tokens of one prompt (prefill shared, 20k rows) against the model's own softmax at T=0.8."""
    model, T = tiny(), 0.8
    result = generate(model, [PROMPT_IDS[0]], max_new_tokens=1, num_samples=N_DRAWS, temperature=T,
                      top_k=top_k, top_p=top_p, seed=11)
    z = np.asarray(forward(model, [PROMPT_IDS[0]])[0, -1], np.float64) / T
    probs = np.exp(z - z.max()); probs /= probs.sum()
    keep = np.ones_like(probs, bool)
    order = np.argsort(-probs)
    if top_k:
        keep[order[top_k:]] = False
    if top_p < 1:
        p = np.where(keep, probs, 0); p /= p.sum()
        before = np.cumsum(p[order]) - p[order]
        keep[order[before >= top_p]] = False
    target = np.where(keep, probs, 0); target /= target.sum()
    assert 1 < keep.sum() < TINY.vocab_size or (top_k, top_p) == (0, 1.0)
    _assert_freqs_match(_frequencies(result.tokens, TINY.vocab_size), target)


def test_inverse_cdf_sampler_on_a_known_distribution():
    """Vocabulary not a multiple of the block size, mass in separate blocks and zeros in between."""
    V = 1000
    probs = np.zeros(V); probs[[0, 3, 255, 256, 511, 700, 999]] = [0.3, 0.1, 0.05, 0.2, 0.15, 0.19, 0.01]
    logits = jnp.asarray(np.where(probs > 0, np.log(np.maximum(probs, 1e-30)), -1e9), jnp.float32)
    z = jnp.broadcast_to(logits, (N_DRAWS, V))
    tokens, logp, _ = jax.jit(choose_tokens, static_argnums=2)(z, jax.random.PRNGKey(0), SamplingConfig())
    _assert_freqs_match(_frequencies(tokens, V), probs)
    np.testing.assert_allclose(logp, np.log(probs[np.asarray(tokens)]), atol=1e-5)


# ---------------------------------------------------------------- stopping and shapes

def test_stop_token_ends_row_and_mask_includes_it():
    model = tiny()
    free = generate(model, PROMPT_IDS, max_new_tokens=8, greedy=True, stop_token_ids=[])
    stop = int(free.tokens[0, 2])  # the third greedy token of row 0 becomes a stop token
    result = generate(model, PROMPT_IDS, max_new_tokens=8, greedy=True, stop_token_ids=[stop])
    for b in range(len(PROMPT_IDS)):
        row = free.tokens[b].tolist()
        n = row.index(stop) + 1 if stop in row else 8
        np.testing.assert_array_equal(result.mask[b], np.arange(8) < n)
        np.testing.assert_array_equal(result.tokens[b, :n], free.tokens[b, :n])
        # padded with the first stop id (no tokenizer, so no pad token)
        assert (result.tokens[b, n:] == stop).all() and (result.logprobs[b, n:] == 0).all()


def test_early_exit_when_all_rows_stopped():
    model = tiny()
    free = generate(model, [PROMPT_IDS[0]], max_new_tokens=6, greedy=True, stop_token_ids=[])
    stop = int(free.tokens[0, 1])
    sampling = SamplingConfig(greedy=True, stop_token_ids=(stop,))
    ids, mask = np.asarray([[0] * 10 + PROMPT_IDS[0]]), np.asarray([[0] * 10 + [1] * 6])
    state = prefill(model.params, ids, mask, jax.random.PRNGKey(0), cfg=TINY, sampling=sampling,
                    max_new_tokens=50, num_samples=2)
    state = decode(model.params, state, cfg=TINY, sampling=sampling)
    n = free.tokens[0].tolist().index(stop) + 1
    assert int(state.step) == n  # the loop exits instead of running 50 steps
    np.testing.assert_array_equal(state.mask.sum(1), [n, n])


def test_prompt_bucket():
    assert [prompt_bucket(n) for n in (1, 15, 16, 17, 32, 33, 100, 129, 1000)] == \
        [16, 16, 16, 32, 32, 64, 128, 256, 1024]
    assert [prompt_bucket(n, 128) for n in (1, 100, 128, 129, 300)] == [128, 128, 128, 256, 512]
    with pytest.raises(ValueError):
        prompt_bucket(0)


def test_wider_prompt_padding_changes_nothing():
    """min_prompt_width pads prompts further left: the same greedy tokens and log-probs (pads are masked)."""
    model = tiny()
    base = generate(model, PROMPT_IDS, max_new_tokens=8, greedy=True, stop_token_ids=[])
    wide = generate(model, PROMPT_IDS, max_new_tokens=8, greedy=True, stop_token_ids=[], min_prompt_width=64)
    assert base.prompt_ids.shape[1] == 32 and wide.prompt_ids.shape[1] == 64
    np.testing.assert_array_equal(base.tokens, wide.tokens)
    np.testing.assert_allclose(base.logprobs, wide.logprobs, atol=1e-5)


def test_bucketing_bounds_compiled_shapes():
    """Prompt lengths 3..60 in batches of 2 -> buckets {16, 32, 64}: exactly 3 prefill and 3 decode programs."""
    model = tiny()
    before = prefill._cache_size(), decode._cache_size()
    for lengths in [(3, 9), (16, 1), (17, 30), (25, 32), (33, 60), (40, 2)]:
        prompts = [list(range(10, 10 + n)) for n in lengths]
        generate(model, prompts, max_new_tokens=3, num_samples=2, temperature=0.9, seed=sum(lengths))
    assert (prefill._cache_size() - before[0], decode._cache_size() - before[1]) == (3, 3)


@pytest.mark.parametrize("greedy", [False, True])
def test_dropping_finished_rows_changes_nothing(monkeypatch, greedy):
    """4 prompts x 8 samples with 30 stop tokens (rows stop after 1 to ~40 tokens): the
    sampler compacts 32 -> 16 -> 8 rows, and every row's tokens, mask, log-probs and entropies are
    those of the uncompacted run (each row keeps its own uniform draws)."""
    from gpg_em.rollout import left_pad, sampler
    model = tiny(scale=5.0)
    ids, mask = left_pad(PROMPT_IDS + [[3, 4]], pad_id=0)
    sampling = SamplingConfig(temperature=1.0, greedy=greedy, stop_token_ids=tuple(range(100, 130)))
    run = lambda min_rows: sampler.sample(model.params, ids, mask, jax.random.PRNGKey(3), cfg=TINY,
                                          sampling=sampling, max_new_tokens=48, num_samples=8,
                                          compact_min_rows=min_rows)
    full = jax.device_get(run(0))
    sizes, compact = [], sampler.compact
    monkeypatch.setattr(sampler, "compact", lambda state, keep: sizes.append(len(keep)) or compact(state, keep))
    dropped = jax.device_get(run(8))
    lengths = full.mask.sum(1)
    if not greedy:
        assert sizes == [16, 8] and lengths.min() < 5 and lengths.max() > 30, (sizes, lengths)
    np.testing.assert_array_equal(dropped.tokens, full.tokens)
    np.testing.assert_array_equal(dropped.mask, full.mask)
    np.testing.assert_allclose(dropped.logprobs, full.logprobs, atol=1e-5)
    np.testing.assert_allclose(dropped.entropies, full.entropies, atol=1e-5)
