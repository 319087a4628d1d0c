"""Runs in a subprocess with 8 fake CPU devices (XLA_FLAGS set by tests/test_parallel.py) and prints one
JSON object: per mesh, the largest difference from the single-device run of the update step (loss,
gradients, updated params) and whether greedy sampler tokens match, plus where params live."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from gpg_em.models import ModelConfig, init_params
from gpg_em.parallel import make_mesh
from gpg_em.rollout import SamplingConfig, sample
from gpg_em.rollout.sharded import ShardedSampler
from gpg_em.train.objective import make_objective
from gpg_em.train.optim import OptimConfig, make_optimizer
from gpg_em.train.state import create_state
from gpg_em.train.step import StepConfig, jit_loss_and_grad, jit_update_step

# Dimensions divide 8 where the table shards them: vocab and MLP (tensor), embed (fsdp), q/k/v columns.
CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=8,
                  num_kv_heads=4, head_dim=8)
MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)]
B, P, N, G = 8, 6, 5, 2


def make_batch(seed=0):
    rng = np.random.RandomState(seed)
    prompt_mask = np.ones((B, P), np.int32)
    prompt_mask[1, :3] = 0
    completion_mask = np.ones((B, N), np.int32)
    completion_mask[0, 3:] = 0
    return {"prompt_ids": rng.randint(0, 64, (B, P)).astype(np.int32), "prompt_mask": prompt_mask,
            "completion_ids": rng.randint(0, 64, (B, N)).astype(np.int32), "completion_mask": completion_mask,
            "rewards": rng.randint(0, 2, B).astype(np.float32)}


def run_update(shape, devices, params, batch):
    """(loss, grads, params after 2 steps) as numpy, on a mesh of `shape` over `devices`."""
    mesh = make_mesh(shape, devices)
    tx, schedule = make_optimizer(OptimConfig(learning_rate=1e-3, total_steps=10))
    sc = StepConfig(make_objective("gpg", G, age=True), chunk_size=4)
    state, shardings = create_state(jax.tree.map(jnp.array, params), CFG, tx, mesh)
    (loss, _), grads = jit_loss_and_grad(CFG, sc, mesh, shardings.params, tuple(batch))(state.params, batch)
    step = jit_update_step(CFG, sc, tx, schedule, mesh, shardings, tuple(batch))
    for i in range(2):
        state, _ = step(state, batch, jax.random.PRNGKey(i))
    return float(loss), jax.tree.map(np.asarray, grads), jax.tree.map(np.asarray, state.params), state


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def placement(state):
    """Spec and per-device shard shape of a few parameters and an Adam moment."""
    layer = state.params["layers_0"]
    adam = state.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState, over the layers stacked
    leaves = {"q_proj": layer["attn"]["q_proj"]["kernel"], "down_proj": layer["mlp"]["down_proj"]["kernel"],
              "embed": state.params["embed"], "adam_mu_q_proj": adam.mu["layers"]["attn"]["q_proj"]["kernel"]}
    return {k: {"spec": [str(a) for a in v.sharding.spec], "shape": list(v.shape),
                "shard_shape": list(v.addressable_shards[0].data.shape), "n_shards": len(v.addressable_shards)}
            for k, v in leaves.items()}


def greedy_tokens(params, shape, devices):
    rng = np.random.RandomState(1)
    ids, mask = rng.randint(3, 64, (8, P)).astype(np.int32), np.ones((8, P), np.int32)
    mask[2, :2] = 0
    sampling = SamplingConfig(greedy=True, stop_token_ids=())
    if shape is None:
        out = sample(params, ids, mask, jax.random.PRNGKey(0), cfg=CFG, sampling=sampling, max_new_tokens=12,
                     num_samples=G)
        return np.asarray(out.tokens)
    mesh = make_mesh(shape, devices)
    state, shardings = create_state(jax.tree.map(jnp.array, params), CFG, make_optimizer(OptimConfig())[0], mesh)
    sampler = ShardedSampler(CFG, mesh, shardings.params)
    out = sampler(state.params, ids, mask, jax.random.PRNGKey(0), sampling=sampling, max_new_tokens=12,
                  num_samples=G)
    weights = sampler.decode_weights(state.params)  # on CPU devices: the feature-major copy
    q_t, head_t = weights["layers_0"]["attn"]["q_proj"]["kernel_t"], weights["lm_head_t"]
    layout = {"q_t": [list(q_t.shape), [str(a) for a in q_t.sharding.spec]],
              "head_t": [list(head_t.shape), [str(a) for a in head_t.sharding.spec]],
              "q_t_equal": bool(np.array_equal(np.asarray(q_t),
                                               np.asarray(params["layers_0"]["attn"]["q_proj"]["kernel"]).T))}
    return np.asarray(out.tokens), str(out.tokens.sharding.spec), layout


def main():
    assert len(jax.devices()) == 8, jax.devices()
    params = jax.tree.map(np.asarray, init_params(CFG, jax.random.PRNGKey(0)))
    params["lm_head"] = params["lm_head"] * 20  # sharp next-token distributions: distinct greedy paths
    batch = make_batch()
    ref_loss, ref_grads, ref_params, _ = run_update((1, 1, 1), jax.devices()[:1], params, batch)
    ref_tokens = greedy_tokens(params, None, None)
    out = {"moved": max_diff(ref_params, params),
           "grad_max": max(float(np.abs(g).max()) for g in jax.tree.leaves(ref_grads)),
           "tokens_distinct_rows": len({tuple(r) for r in ref_tokens}), "meshes": {}}
    for shape in MESHES:
        loss, grads, new_params, state = run_update(shape, jax.devices(), params, batch)
        tokens, token_spec, decode_layout = greedy_tokens(params, shape, jax.devices())
        out["meshes"][",".join(map(str, shape))] = {
            "loss": abs(loss - ref_loss), "grads": max_diff(grads, ref_grads),
            "params": max_diff(new_params, ref_params),
            "tokens_equal": bool(np.array_equal(tokens, ref_tokens)), "token_spec": token_spec,
            "decode_layout": decode_layout,
            "placement": placement(state)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
