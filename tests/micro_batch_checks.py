"""Runs in a subprocess with 4 fake CPU devices (tests/test_micro_batches.py) and prints one JSON object:
per case (mesh, packed or not, mini-batches), the largest differences between the micro-batched update
step and the whole-batch one (micro_batch_size=0) on the same mesh -- metrics (loss, grad_norm, ...) and
the params after one SGD step of rate 1 (params - gradient: the gradients' difference) -- and the
collectives of both steps' compiled modules inside and outside while loops.

Batch: B = 64 rows in groups of G = 2, micro-batches of 16 rows: 4 micro-batches (4 rows, two groups,
per device of a (4,1,1) mesh), or 2 a mini-batch with 2 mini-batches; packed, 16 lanes of 2 groups."""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpg_em.models import ModelConfig, init_params
from gpg_em.models.shared_prefix import packed_width, packing_index
from gpg_em.parallel import batch_shards, make_mesh
from gpg_em.train.objective import make_objective
from gpg_em.train.state import create_state
from gpg_em.train.step import StepConfig, jit_update_step
from hlo_collectives import collectives

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=8,
                  num_kv_heads=4, head_dim=8)
B, P, N, G, MB = 64, 6, 5, 2, 16
CASES = [((4, 1, 1), False, 1), ((4, 1, 1), True, 1), ((2, 2, 1), False, 1), ((2, 2, 1), True, 1),
         ((4, 1, 1), True, 2)]


def make_batch(mini_batches: int) -> dict:
    """Groups of G rows sharing a prompt, ragged completions, distinct rewards; old log-probs for a ratio loss."""
    rng = np.random.RandomState(0)
    prompt_mask = np.ones((B, P), np.int32)
    prompt_mask[2:4, :2] = 0
    completion_mask = (np.arange(N)[None] < rng.randint(1, N + 1, (B, 1))).astype(np.int32)
    batch = {"prompt_ids": np.repeat(rng.randint(0, 64, (B // G, P)), G, 0).astype(np.int32),
             "prompt_mask": prompt_mask, "completion_ids": rng.randint(0, 64, (B, N)).astype(np.int32),
             "completion_mask": completion_mask, "rewards": rng.randint(0, 3, B).astype(np.float32)}
    if mini_batches > 1:
        batch["old_logprobs"] = rng.uniform(-4.5, -3.5, (B, N)).astype(np.float32)
    return batch


def step_config(mb: int, pack: bool, mini_batches: int) -> StepConfig:
    objective = make_objective("grpo", G, clip_eps=0.2) if mini_batches > 1 else make_objective("gpg", G, age=True)
    return StepConfig(objective, micro_batch_size=mb, chunk_size=4, prompt_group_size=G if pack else 0, pack=pack,
                      mini_batches=mini_batches)


def with_packing(batch: dict, sc: StepConfig, mesh) -> dict:
    if not sc.pack:
        return batch
    lanes = sc.pack_lanes(B, batch_shards(mesh))
    mask = batch["completion_mask"]
    return {**batch, "pack_index": packing_index(mask, G, packed_width(mask, G, 4, lanes), lanes)}


def run(shape, pack: bool, mini_batches: int, mb: int, params, devices=None):
    """(metrics, params after one SGD step of rate 1, the step's compiled HLO text), as numpy."""
    mesh = make_mesh(shape, devices)
    sc = step_config(mb, pack, mini_batches)
    batch = with_packing(make_batch(mini_batches), sc, mesh)
    tx, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    state, shardings = create_state(jax.tree.map(jnp.array, params), CFG, tx, mesh)
    compiled = jit_update_step(CFG, sc, tx, schedule, mesh, shardings, tuple(batch)).lower(
        state, batch, jax.random.PRNGKey(0)).compile()
    state, metrics = compiled(state, batch, jax.random.PRNGKey(0))
    return jax.tree.map(np.asarray, metrics), jax.tree.map(np.asarray, state.params), compiled.as_text()


def max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in pairs)


def main():
    assert len(jax.devices()) == 4, jax.devices()
    params = jax.tree.map(np.asarray, init_params(CFG, jax.random.PRNGKey(0)))
    out = {}
    for shape, pack, m in CASES:
        whole = run(shape, pack, m, 0, params)
        micro = run(shape, pack, m, MB, params)
        key = f"{','.join(map(str, shape))} pack={pack} mini={m}"
        out[key] = {"metrics": {k: abs(float(micro[0][k]) - float(whole[0][k])) for k in whole[0]},
                    "params": max_diff(micro[1], whole[1]), "moved": max_diff(whole[1], params),
                    "collectives": collectives(micro[2]), "whole_collectives": collectives(whole[2])}
        if m > 1:  # which rows form a mini-batch does not depend on the mesh
            one = run((1, 1, 1), pack, m, MB, params, devices=jax.devices()[:1])
            out[key]["one_device_params"] = max_diff(micro[1], one[1])
        print(key, json.dumps(out[key]["collectives"]), file=sys.stderr, flush=True)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
