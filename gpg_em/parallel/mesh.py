"""Device mesh, the logical-axis table, and activation sharding constraints.

Parameters name their dimensions logically (`vocab`, `embed`, `heads`,
`kv_heads`, `mlp`, `head_dim`, `norm`); activations and the KV cache use
`batch`, `length`, `act_embed`, `act_heads`, `act_kv_heads`, `act_mlp`. One
table, `LOGICAL_RULES`, maps every name to the mesh axes `data`, `fsdp`,
`tensor`. A single CPU is the 1x1x1 special case of the same code path.
"""
from __future__ import annotations

import contextlib
import math
import threading

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes, or None = replicated). FSDP shards the
# embedding dimension of every weight and, with `data`, the batch; tensor
# parallelism splits heads, MLP and vocabulary (weights and activations).
LOGICAL_RULES: tuple[tuple[str, object], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    # activations, batches and the KV cache
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
)


def mesh_shape(shape, num_devices: int) -> tuple[int, int, int]:
    """Resolves `mesh.shape` (data, fsdp, tensor) against the device count; one -1 takes the rest."""
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else shape
    expected = f"expected 3 sizes over {MESH_AXES} whose product is {num_devices} (one may be -1), e.g. (-1, 1, 1)"
    if not isinstance(shape, tuple) or len(shape) != 3 or not all(isinstance(s, int) for s in shape):
        raise ValueError(f"mesh.shape={shape!r}: {expected}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape={shape!r}: {expected}")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh.shape={shape!r}: {num_devices} devices do not divide by {known}; {expected}")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh.shape={shape!r} has {math.prod(shape)} devices but there are {num_devices}; "
                         f"{expected}")
    return shape


def make_mesh(shape=(-1, 1, 1), devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices; see `mesh_shape`."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices).reshape(mesh_shape(shape, len(devices))), MESH_AXES)


def logical_to_sharding(logical_specs, mesh: Mesh, rules=LOGICAL_RULES):
    """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def logical_sharding(names: tuple, mesh: Mesh) -> NamedSharding:
    """NamedSharding of one array whose dimensions have logical `names`."""
    return NamedSharding(mesh, nn.logical_to_mesh_axes(names, list(LOGICAL_RULES)))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp, the rest replicated."""
    return logical_sharding(("batch",) + (None,) * (ndim - 1), mesh)


def batch_shards(mesh: Mesh) -> int:
    """How many pieces `batch_sharding` cuts the batch dimension into."""
    return _axes_size(mesh, batch_sharding(mesh, 1).spec[0])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _axes_size(mesh: Mesh, axes) -> int:
    return 1 if axes is None else int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))


def shardable(shape, sharding: NamedSharding) -> bool:
    """Whether every sharded dimension of `shape` divides by its mesh size."""
    return all(dim % _axes_size(sharding.mesh, axes) == 0 for dim, axes in zip(shape, sharding.spec))


def fit_sharding(shape, sharding: NamedSharding) -> NamedSharding:
    """`sharding` with the dimensions of `shape` that do not divide their mesh axes replicated instead."""
    if shardable(shape, sharding):
        return sharding
    spec = [axes if dim % _axes_size(sharding.mesh, axes) == 0 else None for dim, axes in zip(shape, sharding.spec)]
    return NamedSharding(sharding.mesh, PartitionSpec(*spec))


def fit_shardings(shapes, shardings, mesh: Mesh):
    """Per array, replicates the dimensions that do not divide their mesh axes (small models, odd head counts)."""
    del mesh  # (each sharding carries it)
    return jax.tree.map(lambda s, sh: fit_sharding(s.shape, sh), shapes, shardings)


# The mesh whose rules constrain activations while a step is being traced (see `constrain`), per thread:
# a step traced in a background thread (gpg_em.train.ahead) does not pin what another thread traces.
_TRACING = threading.local()


def _activation_meshes() -> list[Mesh]:
    if not hasattr(_TRACING, "meshes"):
        _TRACING.meshes = []
    return _TRACING.meshes


@contextlib.contextmanager
def activation_mesh(mesh: Mesh):
    """Within this context, `constrain` pins activations to `mesh` by the table (used while tracing)."""
    _activation_meshes().append(mesh)
    try:
        yield mesh
    finally:
        _activation_meshes().pop()


def constrain(x: jax.Array, names: tuple) -> jax.Array:
    """`x` constrained to the sharding its logical dimension `names` map to (dimensions that do not divide
    their mesh axes replicated); identity outside `activation_mesh` and on one device."""
    meshes = _activation_meshes()
    if not meshes or meshes[-1].size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, fit_sharding(x.shape, logical_sharding(names, meshes[-1])))


def active_batch_shards() -> int:
    """`batch_shards` of the mesh `constrain` pins activations to (1 outside `activation_mesh`)."""
    meshes = _activation_meshes()
    return batch_shards(meshes[-1]) if meshes else 1


def on_mesh(fn, mesh: Mesh):
    """`fn` traced with activations pinned to `mesh` by the logical-axis table (see `constrain`)."""
    def traced(*args):
        with activation_mesh(mesh):
            return fn(*args)
    return traced
