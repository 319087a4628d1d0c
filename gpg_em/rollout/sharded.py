"""The sampler on a device mesh: prefill and decode jitted with explicit in/out shardings.

Same functions as `sampler.sample` (prefill, then the `while_loop` decode with
the state donated), placed by the logical-axis table: params as the train
state holds them, prompts and every [B, ...] row array over the batch axes,
and the KV cache over the batch axes (prompts) and `tensor` (KV heads):

    prompt_k_t [n, KVH, Dh, P]   ("batch", "act_kv_heads", "head_dim", "length")
    gen_v      [C, n, KVH, G, T, Dh] (None, "batch", "act_kv_heads", None, "length", "head_dim")

Dimensions that do not divide their mesh axes are replicated. On
accelerators the decode reads the kernels as stored. On a mesh of CPU
devices it reads the feature-major copy `decode_weights(transpose=True)`
(made once per call, each kernel's sharding transposed with it), as the
single-CPU sampler does: XLA:CPU runs the decode's products about 2x faster
that way (`--xla_force_host_platform_device_count=K` gives one host K CPU
devices; `benchmarks/sampler.py --cpu-devices K` measures the sampler so).
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpg_em.errors import UserError
from gpg_em.models.config import ModelConfig
from gpg_em.models.model import init_params
from gpg_em.parallel import (agree_max, all_rows, batch_sharding, fit_sharding, fit_shardings, global_batch,
                             left_pad_to, logical_sharding, on_mesh, process_slice, replicated)
from gpg_em.rollout import sampler
from gpg_em.rollout.decode_step import KVCache, decode_weights, to_decode_layout
from gpg_em.rollout.sampling import SamplingConfig
from gpg_em.rollout.state import DecodeState, SampleOutput

_CACHE_AXES = KVCache(prompt_k_t=("batch", "act_kv_heads", "head_dim", "length"),
                      prompt_v=("batch", "act_kv_heads", "length", "head_dim"),
                      gen_k_t=(None, "batch", "act_kv_heads", None, "head_dim", "length"),
                      gen_v=(None, "batch", "act_kv_heads", None, "length", "head_dim"))


def state_shardings(abstract: DecodeState, mesh: Mesh) -> DecodeState:
    """NamedShardings of a decode state: rows and prompts over the batch axes, the KV cache as `_CACHE_AXES`."""
    rows = lambda x: batch_sharding(mesh, x.ndim)
    cache = [KVCache(*(logical_sharding(names, mesh) for names in _CACHE_AXES)) for _ in abstract.cache]
    wanted = abstract.replace(
        step=replicated(mesh), tokens=rows(abstract.tokens), mask=rows(abstract.mask),
        logprobs=rows(abstract.logprobs), entropies=rows(abstract.entropies), done=rows(abstract.done),
        last=rows(abstract.last), positions=rows(abstract.positions), prompt_mask=rows(abstract.prompt_mask),
        cache=cache, rng=replicated(mesh), row_ids=rows(abstract.row_ids))
    return fit_shardings(abstract, wanted, mesh)


def _transposed(sharding: NamedSharding) -> NamedSharding:
    """The sharding of a 2-D kernel's transpose: its partition spec reversed."""
    spec = tuple(sharding.spec) + (None,) * (2 - len(sharding.spec))
    return NamedSharding(sharding.mesh, PartitionSpec(*spec[::-1]))


def _decode_layout(cfg: ModelConfig, mesh: Mesh, param_shardings):
    """(params -> the weights the decode reads, their shardings): on CPU devices the feature-major copy
    (`decode_weights(transpose=True)`), elsewhere the params as they are."""
    if not all(d.platform == "cpu" for d in mesh.devices.flat):
        return (lambda params: params), param_shardings
    shardings = to_decode_layout(param_shardings, cfg, _transposed)
    to_decode = jax.jit(functools.partial(decode_weights, cfg=cfg, transpose=True),
                        in_shardings=(param_shardings,), out_shardings=shardings)
    return to_decode, shardings


class ShardedSampler:
    """`sample` on `mesh` for params placed by `param_shardings`; one (prefill, decode) pair per shape."""

    def __init__(self, cfg: ModelConfig, mesh: Mesh, param_shardings):
        self.cfg, self.mesh, self.param_shardings = cfg, mesh, param_shardings
        self.abstract_params = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
        self.decode_weights, self.decode_shardings = _decode_layout(cfg, mesh, param_shardings)

    @functools.lru_cache(maxsize=64)
    def jitted(self, sampling: SamplingConfig, max_new_tokens: int, num_samples: int, n: int, P: int):
        """(prefill, decode, state shardings, prompt sharding) for n prompts of padded width P."""
        prefill = functools.partial(sampler.prefill, cfg=self.cfg, sampling=sampling,
                                    max_new_tokens=max_new_tokens, num_samples=num_samples)
        ids = jax.ShapeDtypeStruct((n, P), jnp.int32)
        s_shard = state_shardings(jax.eval_shape(prefill, self.abstract_params, ids, ids, jax.random.PRNGKey(0)),
                                  self.mesh)
        prompts = fit_sharding((n, P), batch_sharding(self.mesh, 2))
        pre = jax.jit(on_mesh(prefill, self.mesh), out_shardings=s_shard,
                      in_shardings=(self.param_shardings, prompts, prompts, replicated(self.mesh)))
        decode = functools.partial(sampler.decode, cfg=self.cfg, sampling=sampling)
        # The state (its KV cache) is donated: the loop carry reuses prefill's buffers (see sampler.decode).
        dec = jax.jit(on_mesh(decode, self.mesh), in_shardings=(self.decode_shardings, s_shard),
                      out_shardings=s_shard, donate_argnums=(1,))
        return pre, dec, s_shard, prompts

    def __call__(self, params, prompt_ids_NxP, prompt_mask_NxP, rng, *, sampling: SamplingConfig,
                 max_new_tokens: int, num_samples: int = 1) -> SampleOutput:
        """As `sampler.sample`: global arrays [n * G, N] (rows prompt-major), sharded over the batch axes."""
        n, P = prompt_ids_NxP.shape
        pre, dec, _, _ = self.jitted(sampling, max_new_tokens, num_samples, n, P)
        state = pre(params, prompt_ids_NxP, prompt_mask_NxP, rng)
        if max_new_tokens > 1:
            state = dec(self.decode_weights(params), state)
        return SampleOutput(state.tokens, state.mask, state.logprobs, state.entropies)


def process_sampler(sharded: ShardedSampler, global_n: int | None = None, decode_slots: int = 0):
    """A function with `sampler.sample`'s signature for this process's prompts on the mesh.

    Each process passes its own `process_slice` of `global_n` prompts (all of them when `global_n` is
    None, e.g. evaluation prompts every process holds) and gets its own rows back as host arrays. Prompt
    widths are padded to the widest over processes. On a 1-device mesh it is plain `sampler.sample`
    (which keeps the single-CPU decode layout) with `decode_slots` (continuous batching); on a larger
    mesh continuous batching is not available and `decode_slots` must be 0."""
    if sharded.mesh.size == 1:
        return functools.partial(sampler.sample, decode_slots=decode_slots) if decode_slots else sampler.sample
    if decode_slots:
        raise UserError(f"rollout.decode_slots={decode_slots}: continuous batching runs on one device; this "
                        f"mesh has {sharded.mesh.size} (set rollout.decode_slots=0)")

    def sample(params, prompt_ids_NxP, prompt_mask_NxP, rng, *, cfg, sampling, max_new_tokens, num_samples=1):
        del cfg  # the sharded sampler's
        n = global_n or prompt_ids_NxP.shape[0]
        width = agree_max(prompt_ids_NxP.shape[1])
        local = {"ids": left_pad_to(np.asarray(prompt_ids_NxP), width),
                 "mask": left_pad_to(np.asarray(prompt_mask_NxP), width)}
        arrays = global_batch(local, sharded.mesh, n)
        out = sharded(params, arrays["ids"], arrays["mask"], rng, sampling=sampling, max_new_tokens=max_new_tokens,
                      num_samples=num_samples)
        mine = process_slice(sharded.mesh, n) if global_n else slice(0, n)
        rows = slice(mine.start * num_samples, mine.stop * num_samples)
        return SampleOutput(*(all_rows(x)[rows] for x in out))
    return sample
