"""The shared update step against a naive full-logits computation of the loss formula."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpg_em.models import ModelConfig, Model, forward, init_params
from gpg_em.parallel import make_mesh
from gpg_em.train.objective import make_objective
from gpg_em.train.state import create_state
from gpg_em.train.step import StepConfig, jit_update_step, loss_and_grad

CFG = ModelConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8)


def make_batch():
    rng = np.random.RandomState(0)
    B, P, N = 4, 5, 6
    prompt_mask = np.ones((B, P), np.int32); prompt_mask[1, :2] = 0
    completion_mask = np.ones((B, N), np.int32); completion_mask[0, 4:] = 0; completion_mask[3, 2:] = 0
    return {
        "prompt_ids": rng.randint(0, 37, (B, P)).astype(np.int32), "prompt_mask": prompt_mask,
        "completion_ids": rng.randint(0, 37, (B, N)).astype(np.int32), "completion_mask": completion_mask,
        # group 0 = rows 0,1 valid (rewards 1, 0); group 1 = rows 2,3 invalid (both 1)
        "rewards": np.array([1.0, 0.0, 1.0, 1.0], np.float32),
    }


def naive_gpg_loss(params, batch, temperature):
    """The GPG formula on full logits: -sum(logp*A*mask)/sum(mask)/inverse_alpha, A and alpha by hand."""
    ids = jnp.concatenate([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = jnp.concatenate([batch["prompt_mask"], batch["completion_mask"]], 1)
    logits = forward(Model(params, CFG), ids, mask)[:, 4:10] / temperature  # positions P-1 .. P+N-2
    logp_all = jax.nn.log_softmax(logits, -1)
    logp = jnp.take_along_axis(logp_all, batch["completion_ids"][..., None], -1)[..., 0]
    adv = jnp.array([0.5, -0.5, 0.0, 0.0])  # r - group mean; group 1 invalid
    inverse_alpha = 0.5  # 1 valid group of 2
    m = batch["completion_mask"].astype(jnp.float32)
    return jnp.sum(-logp * adv[:, None] * m) / jnp.sum(m) / inverse_alpha


@pytest.mark.parametrize("micro_batch_size", [0, 2, 1])
def test_gpg_gradient_equals_naive_formula(micro_batch_size):
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = jax.tree.map(jnp.asarray, make_batch())
    sc = StepConfig(make_objective("gpg", 2, age=True), micro_batch_size=micro_batch_size, temperature=0.8,
                    chunk_size=4)
    (loss, aux), grads = loss_and_grad(params, CFG, sc, batch)
    ref_loss, ref_grads = jax.value_and_grad(naive_gpg_loss)(params, batch, 0.8)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux["inverse_alpha"], 0.5)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("micro_batch_size,scan_layers,remat", [(0, True, True), (2, True, True), (2, False, False)])
def test_grouped_packed_gradient_equals_naive_formula(micro_batch_size, scan_layers, remat):
    """Prompts shared per group, completions packed, layers scanned or unrolled:
    the same loss and gradient, in the params' layout, as the naive full-logits formula."""
    from gpg_em.models.shared_prefix import packed_width, packing_index
    params = init_params(CFG, jax.random.PRNGKey(0))
    host = make_batch()
    for k in ("prompt_ids", "prompt_mask"):  # rows 2i and 2i+1 share their prompt
        host[k][1::2] = host[k][0::2]
    sc = StepConfig(make_objective("gpg", 2, age=True), micro_batch_size=micro_batch_size, temperature=0.8,
                    chunk_size=4, prompt_group_size=2, pack=True, scan_layers=scan_layers, remat=remat)
    mask, B = host["completion_mask"], host["completion_mask"].shape[0]
    lanes = sc.pack_lanes(B)  # whole batch: every group in one lane; micro-batches of one group: one a lane
    assert lanes == (B // 2 if micro_batch_size else 1)
    index = packing_index(mask, 2, packed_width(mask, 2, 4, lanes), lanes)
    batch = jax.tree.map(jnp.asarray, {**host, "pack_index": index})
    (loss, _), grads = jax.jit(lambda p, b: loss_and_grad(p, CFG, sc, b))(params, batch)
    ref_loss, ref_grads = jax.value_and_grad(naive_gpg_loss)(params, batch, 0.8)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_update_step_applies_the_gradient_and_donates():
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = jax.tree.map(jnp.asarray, make_batch())
    _, ref_grads = jax.value_and_grad(naive_gpg_loss)(params, batch, 1.0)
    tx, schedule = optax.sgd(0.1), optax.constant_schedule(0.1)
    mesh = make_mesh()
    state, shardings = create_state(params, CFG, tx, mesh)
    before = jax.tree.map(np.asarray, state.params)
    sc = StepConfig(make_objective("gpg", 2, age=True), micro_batch_size=2)
    step = jit_update_step(CFG, sc, tx, schedule, mesh, shardings, tuple(batch))
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    assert int(state.step) == 1 and float(metrics["lr"]) == pytest.approx(0.1)
    for b, a, g in zip(jax.tree.leaves(before), jax.tree.leaves(state.params), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b - 0.1 * np.asarray(g), rtol=1e-4, atol=1e-6)
    state, _ = step(state, batch, jax.random.PRNGKey(1))
    assert int(state.step) == 2
    assert step._cache_size() == 1  # jitted once


def test_micro_batching_bounds_memory():
    """XLA's compiled temp memory of the gradient: micro-batches of 2 rows use less than 16 rows at once."""
    cfg = CFG.replace(vocab_size=4096, hidden_size=128, intermediate_size=256)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    B, P, N = 16, 16, 64
    spec = lambda *s, d=jnp.int32: jax.ShapeDtypeStruct(s, d)
    batch = {"prompt_ids": spec(B, P), "prompt_mask": spec(B, P), "completion_ids": spec(B, N),
             "completion_mask": spec(B, N), "rewards": spec(B, d=jnp.float32)}

    def temp_bytes(mb):
        sc = StepConfig(make_objective("gpg", 4), micro_batch_size=mb, chunk_size=32)
        g = jax.jit(lambda p, b: loss_and_grad(p, cfg, sc, b)[1])
        return g.lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(2) < 0.5 * temp_bytes(16)


@pytest.mark.parametrize("loss,options", [("grpo", dict(clip_eps=0.2, kl_coef=0.1)), ("dr_grpo", dict(max_completion_length=6)),
                                          ("rloo", dict()), ("em_ft", dict(reduction="seq_sum")),
                                          ("rloo", dict(aggregation="token_mean", kl_coef=0.1, kl_clamp=1.0,
                                                        entropy_coef=0.01)),
                                          ("gpg", dict(std_normalize=True, scale_batch=True, age_micro_steps=2))])
def test_micro_batched_gradient_equals_full_batch_for_every_loss(loss, options):
    """Ratio, clipping and KL included: old/ref log-probs far from the current ones so clipping is active."""
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch = jax.tree.map(jnp.asarray, make_batch())
    rng = np.random.RandomState(3)
    batch["old_logprobs"] = jnp.asarray(rng.uniform(-5, -2, (4, 6)), jnp.float32)
    batch["ref_logprobs"] = jnp.asarray(rng.uniform(-5, -2, (4, 6)), jnp.float32)
    batch["rewards"] = jnp.asarray([1.0, 0.0, 0.5, 1.0], jnp.float32)
    full = StepConfig(make_objective(loss, 2, **options), micro_batch_size=0)
    micro = StepConfig(make_objective(loss, 2, **options), micro_batch_size=1)
    (l_full, aux_full), g_full = loss_and_grad(params, CFG, full, batch)
    (l_micro, aux_micro), g_micro = loss_and_grad(params, CFG, micro, batch)
    np.testing.assert_allclose(l_micro, l_full, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_micro), jax.tree.leaves(g_full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    if loss == "grpo":
        assert float(aux_full["clip_fraction"]) > 0  # the clipped branch is exercised


def _ratio_batch(B=8):
    """B rows in groups of 2 with distinct rewards and old log-probs away from the current policy."""
    rng = np.random.RandomState(5)
    P, N = 5, 6
    completion_mask = np.ones((B, N), np.int32); completion_mask[0, 4:] = 0; completion_mask[5, 2:] = 0
    return jax.tree.map(jnp.asarray, {
        "prompt_ids": rng.randint(0, 37, (B, P)).astype(np.int32), "prompt_mask": np.ones((B, P), np.int32),
        "completion_ids": rng.randint(0, 37, (B, N)).astype(np.int32), "completion_mask": completion_mask,
        "rewards": np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.0, 0.2], np.float32)[:B],
        "old_logprobs": rng.uniform(-4.5, -3.0, (B, N)).astype(np.float32)})


def _run_step(sc, batch, tx, params):
    mesh = make_mesh()
    state, shardings = create_state(jax.tree.map(jnp.copy, params), CFG, tx, mesh)  # the state is donated
    step = jit_update_step(CFG, sc, tx, optax.constant_schedule(1e-2), mesh, shardings, tuple(batch))
    return step(state, batch, jax.random.PRNGKey(0))


@pytest.mark.parametrize("loss,options", [("grpo", dict(clip_eps=0.2)), ("rloo", dict(clip_eps=0.2))])
def test_one_mini_batch_is_the_plain_update(loss, options):
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch, tx = _ratio_batch(), optax.adam(1e-2)
    obj = make_objective(loss, 2, **options)
    s1, m1 = _run_step(StepConfig(obj, mini_batches=1), batch, tx, params)
    # The plain update by hand: one gradient of the whole batch, one Adam step.
    (_, _), g = loss_and_grad(params, CFG, StepConfig(obj), batch)
    upd, _ = tx.update(g, tx.init(params), params)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(optax.apply_updates(params, upd))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(s1.step) == 1


def test_two_mini_batches_equal_two_sequential_updates():
    """mini_batches=2 (micro-batches of one group): Adam steps on rows 0-3, then on rows 4-7 from the new
    params, each mini-batch's loss with its own normalisers, the old log-probs the rollout policy's:
    the first step has ratio 1, the second a ratio away from 1 and active clipping."""
    from gpg_em.train.step import batch_logprobs
    params = init_params(CFG, jax.random.PRNGKey(0))
    batch, tx = dict(_ratio_batch()), optax.adam(1e-2)
    batch["old_logprobs"] = batch_logprobs(params, CFG, batch, micro_batch_size=0, temperature=1.0,
                                           chunk_size=128)[0]  # the rollout policy's
    obj = make_objective("grpo", 2, clip_eps=0.01)
    state, metrics = _run_step(StepConfig(obj, mini_batches=2, micro_batch_size=2), batch, tx, params)
    grad = jax.jit(lambda p, b: loss_and_grad(p, CFG, StepConfig(obj), b))
    p, opt, auxes = params, tx.init(params), []
    for rows in (slice(0, 4), slice(4, 8)):
        (loss, aux), g = grad(p, jax.tree.map(lambda x: x[rows], batch))
        upd, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, upd)
        auxes.append({"loss": float(loss), **{k: float(v) for k, v in aux.items()}})
    assert int(state.step) == 2
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)  # Adam divides by sqrt(v): float noise grows
    for key in ("loss", "ratio_mean", "clip_fraction"):
        np.testing.assert_allclose(metrics[key], (auxes[0][key] + auxes[1][key]) / 2, rtol=1e-4, atol=1e-6)
    assert auxes[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and auxes[0]["clip_fraction"] == 0
    assert abs(auxes[1]["ratio_mean"] - 1) > 1e-3 and auxes[1]["clip_fraction"] > 0


def test_mini_batches_must_hold_whole_rows():
    batch = _ratio_batch()
    with pytest.raises(ValueError, match="ppo.mini_batches=3 does not divide the 8 rows"):
        from gpg_em.train.step import split_mini_batches
        split_mini_batches(batch, 3)
