"""What each train record says about the step beyond the loss: the sampler-vs-trainer log-prob mismatch
(logp_mismatch_max / logp_mismatch_mean) and the XLA compilations it paid for (compiles, compile_seconds)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpg_em.configuration import get
from gpg_em.models import Model, completion_logprobs, forward, init_params
from gpg_em.train import compiles
from gpg_em.train.loop import Trainer
from gpg_em.train.metrics import read_metrics
from gpg_em.train.objective import make_objective
from gpg_em.train.state import TrainState
from gpg_em.train.step import StepConfig, update_step
from test_update_step import CFG, make_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A per-token error added to the recorded log-probs: known, uneven over rows (rows 0, 1 then 2, 3 hold
# 4 + 6 and 6 + 2 tokens), so a wrong reduction (unmasked, or a mean of per-mini-batch means) shows.
ERROR_BxN = np.array([[0.1, 0.0, 0.2, 0.0, 9.0, 9.0], [0.0] * 6, [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],
                      [0.5, -0.7, 9.0, 9.0, 9.0, 9.0]], np.float32)


def naive_logprobs(params, batch, temperature):
    """log softmax(logits / T)[token] of each completion token, from the full-sequence forward."""
    ids = jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1)
    logits = forward(Model(params, CFG), ids, mask)[:, 4:10] / temperature  # positions P-1 .. P+N-2
    return np.asarray(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), batch["completion_ids"][..., None], -1)[..., 0])


def expected_mismatch(mask):
    m = mask.astype(bool)
    return np.abs(ERROR_BxN[m]).max(), np.abs(ERROR_BxN[m]).mean()


@pytest.mark.parametrize("loss,micro_batch_size,mini_batches", [("gpg", 0, 1), ("gpg", 2, 1), ("grpo", 0, 2)])
def test_update_step_reports_the_mismatch_of_the_pre_update_params(loss, micro_batch_size, mini_batches):
    """One forward (whole batch or micro-batches) or, with mini-batches, the recorded old log-probs."""
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = make_batch()
    logp = naive_logprobs(params, jax.tree.map(jnp.asarray, batch), 0.8)
    batch["sample_logprobs"] = logp + ERROR_BxN
    if mini_batches > 1:
        batch["old_logprobs"] = logp
    tx = optax.sgd(0.1)
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))
    sc = StepConfig(make_objective(loss, 2), micro_batch_size=micro_batch_size, temperature=0.8, chunk_size=4,
                    mini_batches=mini_batches)
    _, metrics = update_step(state, jax.tree.map(jnp.asarray, batch), None, cfg=CFG, sc=sc, tx=tx,
                             schedule=lambda s: 0.1)
    want_max, want_mean = expected_mismatch(batch["completion_mask"])
    np.testing.assert_allclose(metrics["logp_mismatch_max"], want_max, atol=1e-5)
    np.testing.assert_allclose(metrics["logp_mismatch_mean"], want_mean, atol=1e-5)


def test_no_sample_logprobs_no_mismatch_keys():
    params = init_params(CFG, jax.random.PRNGKey(0))
    tx = optax.sgd(0.1)
    state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params))
    sc = StepConfig(make_objective("gpg", 2), temperature=0.8, chunk_size=4)
    _, metrics = update_step(state, jax.tree.map(jnp.asarray, make_batch()), None, cfg=CFG, sc=sc, tx=tx,
                             schedule=lambda s: 0.1)
    assert not any(k.startswith("logp_mismatch") for k in metrics)


def test_compile_event_is_jaxs_and_each_new_executable_counts_once():
    from jax._src import dispatch
    assert compiles.BACKEND_COMPILE_EVENT == dispatch.BACKEND_COMPILE_EVENT
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.123456)  # a program no other test compiles
    x, y = np.ones(7, np.float32), np.zeros(7, np.float32)
    before = compiles.totals()
    f(x).block_until_ready()
    first = compiles.since(before)
    before = compiles.totals()
    f(y).block_until_ready()
    assert first["compiles"] == 1 and first["compile_seconds"] > 0
    assert compiles.since(before) == {"compiles": 0, "compile_seconds": 0.0, "compile_cache_hits": 0,
                                      "compiles_ahead": 0, "compile_ahead_seconds": 0.0}


def test_compiles_in_a_background_thread_count_apart():
    """Within compiles.background() a compile counts as compiles_ahead, in that thread only."""
    import threading
    f = jax.jit(lambda x: jnp.cos(x) * 5.0 - 0.654321)  # a program no other test compiles
    before = compiles.totals()

    def compile_it():
        with compiles.background():
            f.lower(jax.ShapeDtypeStruct((5,), jnp.float32)).compile()
    worker = threading.Thread(target=compile_it)
    worker.start()
    worker.join()
    got = compiles.since(before)
    assert got["compiles_ahead"] == 1 and got["compile_ahead_seconds"] > 0
    assert got["compiles"] == 0 and got["compile_seconds"] == 0


def test_train_records_hold_mismatch_and_compiles(tmp_path):
    """Three steps at fixed shapes (one prompt bucket, one packed width): step 1 compiles, step 3 nothing.
    Each step's mismatch equals an independent recompute (the plain per-row log-prob path at the params
    the step sampled with); step 2's recorded log-probs carry a known error, the others none (float32:
    the mean is ~1e-7)."""
    c = get(os.path.join(ROOT, "configs", "tiny.py"), [
        ("total_steps", "3"), ("eval_every", "100"), ("checkpoint_every", "100"), ("compilation_cache_dir", ""),
        ("rollout.min_prompt_width", "512"), ("rollout.max_new_tokens", "6")])
    trainer = Trainer(c, str(tmp_path))
    seen = []
    collect = trainer.collect

    def collect_and_keep(step):
        batch, info = collect(step)
        if step == 1:
            batch["sample_logprobs"] = batch["sample_logprobs"] + ERROR_BxN[:, :6].repeat(2, 0)
        seen.append((jax.tree.map(np.array, trainer.run.state.params), {k: np.array(v) for k, v in batch.items()}))
        return batch, info

    trainer.collect = collect_and_keep
    trainer.train()
    records = [r for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3] and len(seen) == 3
    for r, (params, batch) in zip(records, seen):
        logp, _ = completion_logprobs(params, trainer.run.model.config, batch["prompt_ids"], batch["prompt_mask"],
                                      batch["completion_ids"], batch["completion_mask"],
                                      temperature=c.rollout.temperature)
        m = batch["completion_mask"].astype(bool)
        diff = np.abs(batch["sample_logprobs"] - np.asarray(logp))[m]
        np.testing.assert_allclose(r["logp_mismatch_max"], diff.max(), atol=2e-5)
        np.testing.assert_allclose(r["logp_mismatch_mean"], diff.mean(), atol=2e-6)
    assert records[0]["logp_mismatch_mean"] < 1e-4 and records[2]["logp_mismatch_mean"] < 1e-4
    assert records[1]["logp_mismatch_max"] > 0.1  # the known error is seen
    assert records[0]["compiles"] > 0 and records[0]["compile_seconds"] > 0
    assert records[2]["compiles"] == 0 and records[2]["compile_seconds"] == 0, records
