"""`gpg-em plan`: per-device memory of a config's update step and sampler on a mesh, before launch.

Nothing is loaded or run: params are `jax.eval_shape` structures (a pretrained
model contributes only its config), the update step and the sampler's prefill
and decode are lowered with their real in/out shardings and compiled, and the
figures come from XLA's `memory_analysis()` of each per-device program plus
each input's shard shape:

    update step  params + optimizer state + batch (arguments), temps (activations,
                 gradients), outputs not aliased to the donated state
    sampler      params + KV cache + other decode state (arguments), prefill and
                 decode temps

Fake CPU devices (`--devices N`) give the partitioning of an N-device job;
temps are XLA:CPU's, which differ somewhat from a TPU's or GPU's.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from gpg_em.models import init_params
from gpg_em.parallel import batch_shards, make_mesh
from gpg_em.rollout.sampler import prompt_bucket
from gpg_em.rollout.sampling import SamplingConfig
from gpg_em.rollout.sharded import ShardedSampler
from gpg_em.train import layer_stack
from gpg_em.train.optim import OptimConfig, make_optimizer
from gpg_em.train.setup import batch_keys, build_objective, model_config
from gpg_em.train.state import TrainState, state_shardings
from gpg_em.train.step import StepConfig, jit_update_step

GiB = 2 ** 30


def device_bytes(abstract, shardings) -> int:
    """Bytes one device holds of a tree of arrays placed by `shardings` (the largest shard)."""
    sizes = jax.tree.map(lambda a, s: math.prod(s.shard_shape(a.shape)) * jnp.dtype(a.dtype).itemsize,
                         abstract, shardings)
    return int(sum(jax.tree.leaves(sizes)))


def _batch(c, keys, sc: StepConfig, mesh):
    """Abstract training batch: B = prompts_per_step * group_size rows, prompts at the longest bucket,
    completions packed at the widest width (every completion at its maximum length)."""
    G, N = c.rollout.group_size, c.rollout.max_new_tokens
    B, P = c.rollout.prompts_per_step * G, prompt_bucket(c.data.max_prompt_tokens, c.rollout.min_prompt_width)
    lanes = sc.pack_lanes(B, batch_shards(mesh)) if sc.pack else 1
    widths = {"rewards": (B,), "pack_index": (lanes, B // lanes * N)}
    shape = lambda k: widths.get(k, (B, P) if k.startswith("prompt") else (B, N))
    dtype = lambda k: jnp.int32 if k.endswith(("_ids", "_mask", "_index")) else jnp.float32
    return {k: jax.ShapeDtypeStruct(shape(k), dtype(k)) for k in keys}


def plan_update(c, cfg, params, mesh) -> dict[str, int]:
    """Per-device bytes of the update step's program."""
    tx, schedule = make_optimizer(OptimConfig(total_steps=c.total_steps, **c.optim.to_dict()))
    objective = build_objective(c)
    shardings = state_shardings(cfg, tx, params, mesh)
    state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                       opt_state=jax.eval_shape(functools.partial(layer_stack.init, tx), params))
    sc = StepConfig.from_config(c, objective)
    keys = batch_keys(c, objective, sc)
    step = jit_update_step(cfg, sc, tx, schedule, mesh, shardings, keys)
    m = step.lower(state, _batch(c, keys, sc, mesh), jax.random.PRNGKey(0)).compile().memory_analysis()
    p, o = device_bytes(params, shardings.params), device_bytes(state.opt_state, shardings.opt_state)
    return {"params": p, "optimizer": o, "batch": m.argument_size_in_bytes - p - o,
            "activations": m.temp_size_in_bytes, "outputs": m.output_size_in_bytes - m.alias_size_in_bytes,
            "total": m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
            + m.temp_size_in_bytes}


def plan_sampler(c, cfg, params, mesh) -> dict[str, int]:
    """Per-device bytes of a rollout: prefill then the decode loop (the larger of the two programs)."""
    p_shard = state_shardings(cfg, make_optimizer(OptimConfig())[0], params, mesh).params
    sampler = ShardedSampler(cfg, mesh, p_shard)
    n, G, N = c.rollout.prompts_per_step, c.rollout.group_size, c.rollout.max_new_tokens
    sampling = SamplingConfig(temperature=c.rollout.temperature, top_p=c.rollout.top_p, top_k=c.rollout.top_k,
                              stop_token_ids=cfg.eos_token_ids, kv_dtype=c.rollout.kv_dtype)
    ids = jax.ShapeDtypeStruct((n, prompt_bucket(c.data.max_prompt_tokens, c.rollout.min_prompt_width)), jnp.int32)
    pre, dec, s_shard, _ = sampler.jitted(sampling, N, G, *ids.shape)
    rng = jax.random.PRNGKey(0)
    state = jax.eval_shape(pre, params, ids, ids, rng)
    m_pre = pre.lower(params, ids, ids, rng).compile().memory_analysis()
    weights = jax.eval_shape(sampler.decode_weights, params)  # the layout the decode reads (same bytes)
    m_dec = dec.lower(weights, state).compile().memory_analysis()
    p, cache = device_bytes(params, p_shard), device_bytes(state.cache, s_shard.cache)
    total = lambda m: m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
    return {"params": p, "kv_cache": cache, "decode_state_other": device_bytes(state, s_shard) - cache,
            "prefill_activations": m_pre.temp_size_in_bytes, "decode_activations": m_dec.temp_size_in_bytes,
            "total": max(total(m_pre), total(m_dec))}


def plan(c, shape) -> dict:
    """{"mesh", "devices", "model", "update": {...}, "sampler": {...}} with per-device bytes."""
    cfg = model_config(c)
    mesh = make_mesh(shape)
    params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    return {"mesh": dict(mesh.shape), "devices": mesh.size, "platform": jax.default_backend(),
            "model": f"{c.model.name}: {cfg.num_params() / 1e9:.3f}B params, {cfg.dtype}",
            "update": plan_update(c, cfg, params, mesh), "sampler": plan_sampler(c, cfg, params, mesh)}


def format_plan(result: dict) -> str:
    """The plan as a table of GiB per device."""
    lines = [f"model    {result['model']}",
             f"mesh     {result['mesh']} on {result['devices']} {result['platform']} devices",
             f"per-device memory {'GiB':>23s} {'MiB':>10s}"]
    for part in ("update", "sampler"):
        for k, v in result[part].items():
            lines.append(f"  {part:8s} {k:20s} {v / GiB:10.3f} {v / 2 ** 20:10.1f}")
    return "\n".join(lines)
