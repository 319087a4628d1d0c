"""Continuous batching (`rollout.decode_slots`): R rows decoded in S slots, finished slots refilled, give the
tokens, masks and log-probs of the all-rows sampler (decode_slots=0) with the same seed."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.configuration import ConfigError, load_config, validate
from gpg_em.errors import UserError
from gpg_em.models import ModelConfig, init_params
from gpg_em.rollout import SamplingConfig, decode_step, left_pad, sampler, slots
from gpg_em.train.resume import refused
from test_decode_attention import numpy_attention, random_case, unblock_k, unblock_v

TINY = ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, eos_token_ids=(2,))
# 3 prompts of 6, 1 and 18 tokens (two prompt buckets' worth of padding) x 4 samples = 12 rows
PROMPTS = [[5, 17, 33, 8, 9, 120], [7], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57]]
STOPS = tuple(range(100, 140))  # 40 of 300 tokens stop a row: rows end after 1 to ~30 tokens
MODES = {"greedy": dict(greedy=True), "t1": dict(temperature=1.0), "t1_top_p": dict(temperature=1.0, top_p=0.8)}


@functools.cache
def params():
    p = dict(init_params(TINY, jax.random.PRNGKey(0)))
    p["lm_head"] = p["lm_head"] * 5.0
    return p


def run(mode: str, decode_slots: int, max_new_tokens: int = 40, seed: int = 3, step: str = "default"):
    """The rollout on the default decode step (the native kernel where it builds) or, step="xla", the XLA step."""
    ids, mask = left_pad(PROMPTS, pad_id=0)
    sampling = SamplingConfig(stop_token_ids=STOPS, **MODES[mode])
    with pytest.MonkeyPatch.context() as m:
        if step == "xla":
            m.setenv("GPG_EM_CPU_KERNEL", "0")
        return jax.device_get(sampler.sample(params(), ids, mask, jax.random.PRNGKey(seed), cfg=TINY,
                                             sampling=sampling, max_new_tokens=max_new_tokens, num_samples=4,
                                             decode_slots=decode_slots))


@functools.cache
def reference(mode: str, max_new_tokens: int = 40, step: str = "default"):
    return run(mode, 0, max_new_tokens, step=step)


def assert_same(got, want):
    """Tokens and masks identical; log-probs and entropies to float32 rounding (the slot batch multiplies
    matrices of other shapes than the all-rows batch, as dropping finished rows does)."""
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got.entropies, want.entropies, atol=1e-5, rtol=0)


@pytest.mark.parametrize("step", ["default", "xla"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("S", [4, 5])
def test_slots_equal_all_rows(monkeypatch, mode, S, step):
    """12 rows in S slots: rows end at different steps, so slots are refilled mid-rollout, and every row's
    tokens and log-probs are those of the all-rows sampler on the same decode step (the CPU kernel with
    one generated-slot index per row, or the XLA step)."""
    calls = []
    refill = slots.refill
    monkeypatch.setattr(slots, "refill", lambda state, store, new_row, **kw: calls.append(
        int((np.asarray(new_row) < 12).sum())) or refill(state, store, new_row, **kw))
    want = reference(mode, step=step)
    lengths = want.mask.sum(1)
    if mode != "greedy":
        assert lengths.min() <= 3 and lengths.max() >= 15, lengths  # uneven: refills happen mid-decode
    assert_same(run(mode, S, step=step), want)
    started = int((lengths > 1).sum())  # rows whose token 0 is not a stop token take a slot
    assert calls[0] == min(S, started) and sum(calls) == started and len(calls) > 1, calls


@pytest.mark.parametrize("mode", ["greedy", "t1"])
def test_slots_equal_rows_is_the_same(mode):
    """S = R (and S > R, clipped to R): every row in its own slot from the start, nothing to refill."""
    assert_same(run(mode, 12), reference(mode))
    assert_same(run(mode, 50), reference(mode))


def test_one_slot():
    """Rows one after another."""
    assert_same(run("t1", 1), reference("t1"))


def test_rows_past_a_generated_block(monkeypatch):
    """GEN_BLOCK = 8 and a 37-token budget: slots at different lengths read different numbers of blocks (the
    last one part-used); each row still reads exactly its own filled slots."""
    monkeypatch.setattr(decode_step, "GEN_BLOCK", 8)  # 37 tokens: a shape no other test compiles
    want = run("t1", 0, max_new_tokens=37, seed=5, step="xla")
    assert want.mask.sum(1).max() > 16 and want.mask.sum(1).min() < 8
    assert_same(run("t1", 3, max_new_tokens=37, seed=5, step="xla"), want)


def test_compiled_programs_per_shape():
    """One prefill, one refill and one decode loop per shape, however many refills a rollout makes."""
    before = [f._cache_size() for f in (slots.prefill_slots, slots.refill, slots.decode_slots)]
    run("t1", 2, seed=11)
    run("t1", 2, seed=12)
    after = [f._cache_size() for f in (slots.prefill_slots, slots.refill, slots.decode_slots)]
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]


def test_per_row_index_attention():
    """`_attend` with one generated index per row equals numpy's masked softmax row by row."""
    q, cache, prompt_mask = random_case(N=13, block=4)  # n=2 prompts x G=3 rows, 4 blocks
    index = np.array([0, 12, 5, 3, 4, 9], np.int32)
    got = np.asarray(decode_step._attend(q, cache, prompt_mask, jnp.asarray(index), jnp.float32))
    for b, t in enumerate(index):
        want = numpy_attention(q, cache, prompt_mask, int(t))
        np.testing.assert_allclose(got[b // 3, :, b % 3], want[b // 3, :, b % 3], rtol=2e-5, atol=2e-5)


def test_put_generated_per_row():
    """Row b's key/value lands at its own generated slot index[b] (block index[b] // 4); nothing else changes."""
    _, cache, _ = random_case(N=10, block=4)  # gen_k_t [3, 2, 2, 3, 8, 4]
    r = np.random.default_rng(1)
    k, v = r.normal(size=(2, 2, 3, 8)).astype(np.float32), r.normal(size=(2, 2, 3, 8)).astype(np.float32)
    index = np.array([0, 9, 2, 2, 5, 4], np.int32)
    got = decode_step.put_generated(type(cache)(*map(jnp.asarray, cache)), jnp.asarray(k), jnp.asarray(v),
                                    jnp.asarray(index))
    want_k, want_v = unblock_k(cache.gen_k_t), unblock_v(cache.gen_v)
    for b, t in enumerate(index):
        i, j = divmod(b, 3)
        want_k[i, :, j, :, t] = k[i, :, j]
        want_v[i, :, j, t, :] = v[i, :, j]
    np.testing.assert_array_equal(unblock_k(got.gen_k_t), want_k)
    np.testing.assert_array_equal(unblock_v(got.gen_v), want_v)


def test_slots_for_memory():
    """Bytes per slot = 2 * layers * KVH * Dh * (P + N) * itemsize = 2 * 2 * 2 * 8 * (16 + 48) * 4 = 16384."""
    assert slots.slot_bytes(TINY, 16, 48) == 16384
    # 200 new tokens are held in 2 blocks of 128 slots: 2 * 2 * 2 * 8 * (16 + 256) * 4 = 69632
    assert slots.slot_bytes(TINY, 16, 200) == 69632
    assert slots.slots_for_memory(TINY, 12, 16, 48, free_bytes=100_000) == 3  # 50_000 // 16384
    assert slots.slots_for_memory(TINY, 12, 16, 48, free_bytes=100) == 1
    assert slots.slots_for_memory(TINY, 12, 16, 48, free_bytes=10 ** 12) == 12
    assert slots.resolve_slots(0, TINY, 12, 16, 48) == 12 and slots.resolve_slots(5, TINY, 12, 16, 48) == 5
    assert 1 <= slots.resolve_slots(-1, TINY, 12, 16, 48) <= 12


@pytest.mark.parametrize("bad", [-2, 2.5])
def test_bad_decode_slots_to_the_sampler(bad):
    with pytest.raises(UserError, match=r"^rollout\.decode_slots=.*expected 0 \(all rows at once\)") as e:
        run("t1", bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [-2, 33])
def test_bad_decode_slots_in_the_config(bad):
    c = load_config("configs/base.py")
    c.rollout.prompts_per_step, c.rollout.group_size = 4, 8  # 32 rows
    c.rollout.decode_slots = bad
    with pytest.raises(ConfigError, match=r"^config key rollout\.decode_slots: .*1\.\.32") as e:
        validate(c)
    assert "\n" not in str(e.value)
    c.rollout.decode_slots = 32
    validate(c)


def test_resume_accepts_a_new_decode_slots():
    assert refused([("rollout.decode_slots", 0, 16)], "") == []


def test_trainer_and_eval_pass_decode_slots_on(monkeypatch):
    """The trainer's sampler (`process_sampler`) and `gpg-em eval`'s chunks (`generate_all`) call `sample`
    with decode_slots; a mesh of several devices refuses it in one line naming the key."""
    import types
    from gpg_em.eval import harness
    from gpg_em.rollout.sharded import process_sampler
    one = process_sampler(types.SimpleNamespace(mesh=types.SimpleNamespace(size=1)), 4, decode_slots=6)
    assert one.func is sampler.sample and one.keywords == {"decode_slots": 6}
    with pytest.raises(UserError, match=r"^rollout\.decode_slots=6: .*one device"):
        process_sampler(types.SimpleNamespace(mesh=types.SimpleNamespace(size=2)), 4, decode_slots=6)
    seen = []

    def fake_generate(model, chunk, **kw):
        seen.append(kw["sampler"])
        n = len(chunk) * kw["num_samples"]
        return types.SimpleNamespace(texts=[""] * n, mask=np.ones((n, 2)), entropies=np.zeros((n, 2)))
    monkeypatch.setattr(harness, "generate", fake_generate)
    decoding = harness.decoding_for("avg", 2)
    harness.generate_all(types.SimpleNamespace(tokenizer=None), [[1, 2]] * 3, decoding, max_new_tokens=2, seed=0,
                         rows_per_call=4, decode_slots=3)
    assert len(seen) == 2 and all(s.func is sampler.sample and s.keywords == {"decode_slots": 3} for s in seen)


def test_slots_decode_with_the_cpu_kernel_where_it_applies(monkeypatch):
    """On a CPU with the native kernel, the slot loop's step is the kernel's, with one index per slot."""
    from gpg_em.kernels import decode_kernel_available
    from gpg_em.rollout import decode_cpu
    if not decode_kernel_available():
        pytest.skip("the native CPU decode kernel does not build here")
    traced = []
    real = decode_cpu.step
    monkeypatch.setattr(decode_cpu, "step", lambda *a: traced.append(jnp.ndim(a[-1])) or real(*a))
    run("t1", 4, max_new_tokens=23, seed=2)  # 23 tokens: a shape no other test compiles, so it is traced here
    assert 1 in traced, traced  # the slot step, per-row index [S]
