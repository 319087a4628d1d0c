"""Device mesh, the logical-axis table, and multi-host initialisation.

Parameters name their dimensions logically (`vocab`, `embed`, `heads`,
`kv_heads`, `mlp`, `head_dim`, `norm`); batches use `batch`. One table,
`LOGICAL_RULES`, maps those names to the mesh axes `data`, `fsdp`, `tensor`.
A single CPU is the 1x1x1 special case of the same code path.
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or axes, or None = replicated). FSDP shards the
# embedding dimension of every weight; tensor parallelism splits heads and MLP.
LOGICAL_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all (or the given) devices; -1 takes the rest."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    if data == -1:
        if n % (fsdp * tensor):
            raise ValueError(f"mesh: {n} devices are not divisible by fsdp*tensor={fsdp * tensor}")
        data = n // (fsdp * tensor)
    if data * fsdp * tensor != n:
        raise ValueError(f"mesh: data*fsdp*tensor = {data * fsdp * tensor} but there are {n} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp, tensor), MESH_AXES)


def logical_to_sharding(logical_specs, mesh: Mesh, rules=LOGICAL_RULES):
    """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dimension split over data and fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shardable(shape, sharding: NamedSharding) -> bool:
    """Whether every sharded dimension of `shape` divides by its mesh size."""
    for dim, axes in zip(shape, sharding.spec):
        if axes is None:
            continue
        size = int(np.prod([sharding.mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
        if dim % size:
            return False
    return True


def fit_shardings(shapes, shardings, mesh: Mesh):
    """Replaces shardings that do not divide their array (tiny models) by replication."""
    return jax.tree.map(lambda s, sh: sh if shardable(s.shape, sh) else replicated(mesh), shapes, shardings)


def initialize_distributed() -> bool:
    """Starts JAX's multi-controller runtime when the environment asks for it.

    On TPU pod slices `jax.distributed.initialize()` discovers everything; on
    GPU clusters and for local multi-process tests set
    GPG_EM_COORDINATOR=host:port, GPG_EM_NUM_PROCESSES and GPG_EM_PROCESS_ID.
    Returns True when initialised.
    """
    coordinator = os.environ.get("GPG_EM_COORDINATOR")
    if coordinator:
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=int(os.environ["GPG_EM_NUM_PROCESSES"]),
                                   process_id=int(os.environ["GPG_EM_PROCESS_ID"]))
        return True
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("GPG_EM_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False
