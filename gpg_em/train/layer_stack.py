"""The optimizer's view of the parameters: the decoder layers stacked on a leading [num_layers] axis.

The model keeps one subtree per layer (`layers_0` ... `layers_{n-1}`), which
the checkpoints, the sampler and the exporters read. The optimizer state is
kept over the stacked view instead,

    stack(params) = {"layers": {leaf: [n, ...]}, every other key as it is},

so AdamW, the global-norm clip and the finiteness check are a dozen array
programs rather than one per layer and leaf (30 x 9 for SmolLM2-135M). The
results are those of the per-leaf optimizer: Adam is elementwise and the
global norm sums the same squares (in another order, so the last bits of the
norm may differ). The update compiles faster with it: SmolLM2-135M's RL
update on a 2-core CPU went from 2106 to 746 fused kernels and from ~23 to
~11 s of XLA compile (benchmarks/results/train_step_cpu.md).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

_LAYER = re.compile(r"layers_(\d+)$")


def num_layers(tree) -> int:
    """How many `layers_i` subtrees `tree` has (0 for a tree without them, or not a dict)."""
    if not isinstance(tree, dict):
        return 0
    found = sorted(int(m.group(1)) for m in map(_LAYER.match, tree) if m)
    if found != list(range(len(found))):
        raise ValueError(f"layer subtrees {found} are not layers_0 ... layers_{len(found) - 1}")
    return len(found)


def _apply(tree, combine):
    n = num_layers(tree)
    if n == 0:
        return tree
    rest = {k: v for k, v in tree.items() if not _LAYER.match(k)}
    return {**rest, "layers": jax.tree.map(combine, *[tree[f"layers_{i}"] for i in range(n)])}


def stack(tree):
    """`layers_0` ... `layers_{n-1}` -> one `layers` subtree of [n, ...] leaves (a tree without them as is)."""
    return _apply(tree, lambda *xs: jnp.stack(xs))


def unstack(tree):
    """The inverse of `stack`: `layers` [n, ...] -> `layers_0` ... `layers_{n-1}`."""
    if not isinstance(tree, dict) or "layers" not in tree:
        return tree
    n = jax.tree.leaves(tree["layers"])[0].shape[0]
    rest = {k: v for k, v in tree.items() if k != "layers"}
    return {**rest, **{f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], tree["layers"]) for i in range(n)}}


def stack_shardings(shardings):
    """The shardings of `stack(params)` from the per-layer NamedShardings: each layer leaf's spec with the
    layer axis in front, unsharded (every layer of a leaf is placed alike)."""
    def lead(*xs: NamedSharding) -> NamedSharding:
        return NamedSharding(xs[0].mesh, PartitionSpec(None, *xs[0].spec))
    return _apply(shardings, lead)


def init(tx, params):
    """The optimizer state of `params`: `tx.init` on the stacked view."""
    return tx.init(stack(params))


def update(tx, stacked_grads, opt_state, params):
    """(new params, new optimizer state): one `tx` step on the stacked view (`stacked_grads` = stack(grads)),
    the params given back per layer."""
    stacked = stack(params)
    updates, opt_state = tx.update(stacked_grads, opt_state, stacked)
    return unstack(optax.apply_updates(stacked, updates)), opt_state


# ------------------------------------------------------- checkpoints written with the optimizer state per layer

def _is_stacked(x) -> bool:
    return isinstance(x, dict) and "layers" in x


def _is_per_layer(x) -> bool:
    return isinstance(x, dict) and "layers_0" in x


def per_layer_abstract(abstract_state):
    """`abstract_state` (ShapeDtypeStructs with shardings) with its optimizer state per layer, as checkpoints
    written before the stacked layout hold it: each stacked leaf [n, ...] -> n leaves [...]."""
    def split(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        sharding = x.sharding
        if isinstance(sharding, NamedSharding):
            sharding = NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)

    def convert(node):
        if not _is_stacked(node):
            return node
        n = jax.tree.leaves(node["layers"])[0].shape[0]
        rest = {k: v for k, v in node.items() if k != "layers"}
        return {**rest, **{f"layers_{i}": jax.tree.map(split, node["layers"]) for i in range(n)}}
    return abstract_state.replace(opt_state=jax.tree.map(convert, abstract_state.opt_state, is_leaf=_is_stacked))


def stacked_state(state, abstract_state):
    """A state restored with its optimizer state per layer, stacked onto `abstract_state`'s shardings."""
    shardings = jax.tree.map(lambda x: x.sharding, abstract_state.opt_state)
    convert = lambda tree: jax.tree.map(lambda x: stack(x) if _is_per_layer(x) else x, tree, is_leaf=_is_per_layer)
    return state.replace(opt_state=jax.jit(convert, out_shardings=shardings)(state.opt_state))
