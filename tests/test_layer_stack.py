"""The optimizer over the stacked layers (gpg_em.train.layer_stack) against optax on the per-layer tree."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from gpg_em.train import layer_stack
from gpg_em.train.optim import OptimConfig, make_optimizer


def tree(seed: int, n: int = 3):
    rng = np.random.RandomState(seed)
    layer = lambda: {"attn": {"q": rng.randn(4, 6).astype(np.float32)}, "norm": rng.randn(4).astype(np.float32)}
    return {"embed": rng.randn(5, 4).astype(np.float32), **{f"layers_{i}": layer() for i in range(n)},
            "final_norm": rng.randn(4).astype(np.float32)}


def test_stack_puts_layer_i_at_index_i_and_unstack_inverts_it():
    t = tree(0)
    s = layer_stack.stack(t)
    assert sorted(s) == ["embed", "final_norm", "layers"]
    assert s["layers"]["attn"]["q"].shape == (3, 4, 6)
    np.testing.assert_array_equal(s["layers"]["norm"][2], t["layers_2"]["norm"])
    back = layer_stack.unstack(s)
    assert jax.tree.structure(back) == jax.tree.structure(t)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(t)):
        np.testing.assert_array_equal(a, b)


def test_a_tree_without_layers_is_left_alone_and_gaps_are_refused():
    t = {"w": np.ones(3)}
    assert layer_stack.stack(t) is t and layer_stack.unstack(t) is t
    with pytest.raises(ValueError, match="layers_0 ... layers_1"):
        layer_stack.stack({"layers_0": 1.0, "layers_2": 2.0})


@pytest.mark.parametrize("config", [OptimConfig(learning_rate=1e-2, weight_decay=0.1, max_grad_norm=0.5),
                                    OptimConfig(learning_rate=1e-2, max_grad_norm=0.0, skip_nonfinite_updates=2)])
def test_three_steps_match_optax_on_the_per_layer_tree(config):
    tx, _ = make_optimizer(config)
    params = jax.tree.map(jnp.asarray, tree(1))
    ref_params, ref_state = params, tx.init(params)
    ours_params, ours_state = params, layer_stack.init(tx, params)
    for step in range(3):
        grads = jax.tree.map(jnp.asarray, tree(10 + step))
        updates, ref_state = tx.update(grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
        ours_params, ours_state = layer_stack.update(tx, layer_stack.stack(grads), ours_state, ours_params)
    assert jax.tree.structure(ours_params) == jax.tree.structure(ref_params)
    for a, b in zip(jax.tree.leaves(ours_params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_stacked_shardings_put_the_layer_axis_first_unsharded():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("fsdp", "tensor"))
    spec = lambda *axes: NamedSharding(mesh, PartitionSpec(*axes))
    shard = {"embed": spec("tensor", None), "layers_0": {"q": spec("fsdp", "tensor")},
             "layers_1": {"q": spec("fsdp", "tensor")}}
    out = layer_stack.stack_shardings(shard)
    assert out["layers"]["q"].spec == PartitionSpec(None, "fsdp", "tensor")
    assert out["embed"].spec == PartitionSpec("tensor", None)


def test_a_checkpoint_with_the_optimizer_state_per_layer_restores_stacked(tmp_path, capfd):
    """Checkpoints written before the stacked layout: restored, their Adam moments stacked, nothing lost."""
    from gpg_em.models import ModelConfig, init_params
    from gpg_em.parallel import make_mesh
    from gpg_em.train import checkpoint as ckpt
    from gpg_em.train.state import TrainState, create_state
    CFG = ModelConfig(vocab_size=37, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8)
    tx, _ = make_optimizer(OptimConfig(learning_rate=1e-2))
    params = init_params(CFG, jax.random.PRNGKey(0))
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
    _, old_opt = tx.update(grads, tx.init(params), params)  # per layer, as earlier versions saved it
    mngr = ckpt.manager(str(tmp_path))
    ckpt.save(mngr, 3, TrainState(step=jnp.int32(3), params=params, opt_state=old_opt), {"step": 3})
    state, _ = create_state(params, CFG, tx, make_mesh())
    want_mu = layer_stack.stack(old_opt[1][0].mu)
    for restore in (lambda a: ckpt.restore_intact(mngr, str(tmp_path), a, lambda p: True)[1],
                    lambda a: ckpt.restore_any_layout(mngr, 3, a)[0]):
        got = restore(ckpt.abstract_like(state))
        assert int(got.step) == 3
        mu = got.opt_state[1][0].mu
        assert jax.tree.structure(mu) == jax.tree.structure(want_mu)
        for a, b in zip(jax.tree.leaves(mu), jax.tree.leaves(want_mu)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert "checkpoint step 3 holds the optimizer state per layer" in capfd.readouterr().err  # resume says so
