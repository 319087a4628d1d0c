"""Multi-host runs: JAX's multi-controller runtime and moving rows between process-local and global arrays.

Every process runs the same program on its own devices. Batches are global
arrays whose leading (row) dimension is split over the mesh's batch axes; each
process holds, reads and scores only the rows its devices own
(`process_slice`); `global_batch` assembles global arrays from those rows and `all_rows` brings
sampled rows back to the host.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpg_em.parallel.mesh import batch_sharding, fit_sharding


def _setting(dc, key: str, env: str, cast):
    """The config value `distributed.<key>` when set, else the environment variable, else None."""
    value = None if dc is None else dc.get(key)
    if value in (None, "", -1) and os.environ.get(env):
        value = os.environ[env]
    return None if value in (None, "", -1) else cast(value)


def initialize_distributed(dc=None) -> bool:
    """Starts JAX's multi-controller runtime when the config or the environment asks for it.

    `dc` is the config's `distributed` block (coordinator "host:port", num_processes,
    process_id); unset keys fall back to GPG_EM_COORDINATOR, GPG_EM_NUM_PROCESSES,
    GPG_EM_PROCESS_ID. On TPU pod slices (TPU_WORKER_HOSTNAMES set) or with
    GPG_EM_DISTRIBUTED=1, `jax.distributed.initialize()` discovers everything itself.
    CPU processes exchange collectives over gloo (JAX's default). Returns True when initialised.
    """
    coordinator = _setting(dc, "coordinator", "GPG_EM_COORDINATOR", str)
    if coordinator:
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=_setting(dc, "num_processes", "GPG_EM_NUM_PROCESSES", int),
                                   process_id=_setting(dc, "process_id", "GPG_EM_PROCESS_ID", int))
        return True
    if os.environ.get("TPU_WORKER_HOSTNAMES") or os.environ.get("GPG_EM_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False


def is_primary() -> bool:
    """Process 0: the one that writes metrics, configs and logs."""
    return jax.process_index() == 0


def process_slice(mesh: Mesh, rows: int) -> slice:
    """The rows of a [rows, ...] batch that this process's devices hold (all rows when the batch
    is replicated because `rows` does not divide the batch axes)."""
    sharding = batch_sharding(mesh, 1)
    if rows % (mesh.shape["data"] * mesh.shape["fsdp"]):
        return slice(0, rows)
    spans = [idx[0].indices(rows)[:2] for idx in sharding.addressable_devices_indices_map((rows,)).values()]
    return slice(min(s for s, _ in spans), max(e for _, e in spans))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, global_rows: int) -> dict[str, jax.Array]:
    """Process-local rows [rows_p, ...] -> global arrays [global_rows, ...] split over the batch axes.

    When the local arrays already hold every row (one process, or a replicated batch) they are
    placed directly."""
    def one(x):
        x = np.asarray(x)
        sharding = fit_sharding((global_rows,) + x.shape[1:], batch_sharding(mesh, x.ndim))
        if x.shape[0] == global_rows:
            return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
        return jax.make_array_from_process_local_data(sharding, x, (global_rows,) + x.shape[1:])
    return {k: one(v) for k, v in local.items()}


def all_rows(x: jax.Array) -> np.ndarray:
    """Every row of a global array on the host of every process (a small gather for sampled tokens)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def left_pad_to(x: np.ndarray, width: int) -> np.ndarray:
    """[rows, P] -> [rows, width], zeros on the left (left-padded prompts stay right-aligned)."""
    return np.pad(x, ((0, 0), (width - x.shape[1], 0))) if x.shape[1] < width else x


def agree_max(value: int) -> int:
    """The largest `value` over all processes (e.g. a padded prompt width every process must share)."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.max(multihost_utils.process_allgather(np.asarray([value], np.int64))))


def agree_any(flag: bool) -> bool:
    """True on every process when it is True on any (keeps data-dependent loops in step)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def gather_host_rows(x: np.ndarray) -> np.ndarray:
    """Every process's rows of a host array, in process order (the array itself with one process)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))


def replicated_array(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array every process holds identically, placed whole on every device of the mesh."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, PartitionSpec()), lambda idx: x[idx])
