"""Train state and its sharded creation without a host copy of the optimizer state."""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from gpg_em.models import ModelConfig, logical_axes
from gpg_em.parallel import fit_shardings, logical_to_sharding, replicated
from gpg_em.train import layer_stack


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied
    params: Any
    opt_state: Any


def param_shardings(cfg: ModelConfig, params, mesh: Mesh):
    """NamedShardings for `params` from the logical-axis table (replicated where a dim does not divide)."""
    return fit_shardings(params, logical_to_sharding(logical_axes(cfg), mesh), mesh)


def opt_shardings(tx: optax.GradientTransformation, abstract_params, p_shard, mesh: Mesh):
    """Optimizer-state shardings (the state is over `layer_stack.stack(params)`): Adam moments follow their
    parameter's sharding, a stacked layer leaf's with the layer axis unsharded; counters are replicated."""
    abstract = jax.eval_shape(functools.partial(layer_stack.init, tx), abstract_params)
    return optax.tree_map_params(tx, lambda _, s: s, abstract, layer_stack.stack_shardings(p_shard),
                                 transform_non_params=lambda _: replicated(mesh))


def state_shardings(cfg: ModelConfig, tx: optax.GradientTransformation, params, mesh: Mesh) -> TrainState:
    """The train state's NamedShardings for `params` (arrays or ShapeDtypeStructs)."""
    p_shard = param_shardings(cfg, params, mesh)
    return TrainState(step=replicated(mesh), params=p_shard, opt_state=opt_shardings(tx, params, p_shard, mesh))


def create_state(params, cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh):
    """(state, state_shardings): params placed per the table, optimizer state built on device.

    The optimizer state's shardings are derived with `jax.eval_shape` and it
    is initialised inside `jax.jit(..., out_shardings=...)` (Adam moments
    follow their parameter's sharding; counters are replicated).
    """
    shardings = state_shardings(cfg, tx, params, mesh)
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(functools.partial(layer_stack.init, tx), out_shardings=shardings.opt_state)(params)
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated(mesh)), params=params,
                       opt_state=opt_state)
    return state, shardings
