"""The XLA decode step's time against the filled length, at several cache budgets.

    python benchmarks/decode_step_length.py [--prompts 2] [--samples 4] [--budgets 128,1024,4096]
                                            [--fills 128,1024,4096] [--steps 8] [--repeats 5]

SmolLM2-135M's dimensions (random float32 weights: the time does not depend on
them), a 128-slot prompt cache, `prompts x samples` rows. Each measurement runs
`--steps` decode steps from generated index `fill - steps` inside one jitted
`fori_loop` (the cache is the loop's carry, updated in place as in the sampler)
and reports milliseconds per step.

Two forms of the same step, in one process, timed alternately:
  blocked  the step as shipped: attention reads only the blocks of generated
           slots filled so far (`decode_step.GEN_BLOCK` slots each);
  whole    one block as long as the budget, i.e. every step reads the whole
           [rows, budget] generated cache (what a static cache costs).
The figure of merit: blocked step at fill f of budget N over blocked step at
fill f of budget f (1.0 = the budget costs nothing).
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpg_em.models.loading import pretrained_config
from gpg_em.models.model import init_params
from gpg_em.rollout import decode_step
from gpg_em.rollout.decode_step import KVCache, empty_generated, jit_decode_weights, step_hidden, step_logits


def compiled_steps(cfg, weights, cache, mask, n: int):
    """(weights, cache, first index, mask) -> (cache, logits sum) after `n` decode steps from `first`,
    compiled for the cache's shape (its block length is that of the form); the cache is donated."""
    @functools.partial(jax.jit, donate_argnums=(1,))
    def run(weights, cache, first, mask):
        B = cache[0].gen_k_t.shape[1] * cache[0].gen_k_t.shape[3]

        def body(i, carry):
            cache, acc = carry
            token, pos = jnp.full((B,), 7, jnp.int32), jnp.full((B,), 128, jnp.int32) + first + i
            hidden, cache = step_hidden(weights, cfg, token, pos, mask, cache, first + i)
            return cache, acc + step_logits(weights, cfg, hidden).sum()
        return jax.lax.fori_loop(0, n, body, (cache, jnp.float32(0)))
    return run.lower(weights, cache, jnp.int32(0), mask).compile()


def empty_cache(cfg, n, G, N, block, P=128):
    """Zeroed cache of `cfg.num_layers` layers: an n-prompt P-slot prompt part, N generated slots per
    row in blocks of `block`."""
    K, Dh = cfg.num_kv_heads, cfg.head_dim
    z = lambda *s: jnp.zeros(s, jnp.float32)
    return [KVCache(z(n, K, Dh, P), z(n, K, P, Dh), *empty_generated(n, K, G, Dh, N, jnp.float32, block))
            for _ in range(cfg.num_layers)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--budgets", default="128,1024,4096")
    p.add_argument("--fills", default="128,1024,4096")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    cfg = pretrained_config("smollm2-135m-instruct")
    weights = jit_decode_weights(init_params(cfg, jax.random.PRNGKey(0)), cfg=cfg, transpose=True)
    mask = jnp.ones((a.prompts, 128), bool)
    budgets, fills = [int(x) for x in a.budgets.split(",")], [int(x) for x in a.fills.split(",")]
    print(f"{jax.devices()[0].device_kind}; {a.prompts} x {a.samples} rows, GEN_BLOCK {decode_step.GEN_BLOCK}, "
          f"{a.steps} steps per call, median of {a.repeats}")
    results = {}
    for N in budgets:
        blocks = {"blocked": decode_step.GEN_BLOCK, "whole": N}
        forms = {name: compiled_steps(cfg, weights, empty_cache(cfg, a.prompts, a.samples, N, block), mask, a.steps)
                 for name, block in blocks.items()}
        for fill in [f for f in fills if f <= N]:
            first = jnp.int32(fill - a.steps)
            times = {k: [] for k in forms}
            for r in range(a.repeats + 1):  # the first call warms up
                for name, fn in forms.items():
                    cache = empty_cache(cfg, a.prompts, a.samples, N, blocks[name])
                    t = time.perf_counter()
                    jax.block_until_ready(fn(weights, cache, first, mask))
                    if r:
                        times[name].append((time.perf_counter() - t) / a.steps * 1e3)
            results[N, fill] = {k: float(np.median(v)) for k, v in times.items()}
            print(f"budget {N:5d} fill {fill:5d}: blocked {results[N, fill]['blocked']:7.1f} ms/step, "
                  f"whole budget {results[N, fill]['whole']:7.1f} ms/step", flush=True)
    for N in budgets:
        for fill in fills:
            if fill < N and (fill, fill) in results and (N, fill) in results:
                print(f"fill {fill} of budget {N} / fill {fill} of budget {fill}: blocked "
                      f"{results[N, fill]['blocked'] / results[fill, fill]['blocked']:.2f}x, whole-budget "
                      f"{results[N, fill]['whole'] / results[fill, fill]['whole']:.2f}x")


if __name__ == "__main__":
    main()
