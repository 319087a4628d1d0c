"""One process of a multi-process training run (or the one-process reference), for tests/test_parallel.py.

    python tests/parallel_worker.py MESH WORKDIR OUT.npz

With GPG_EM_COORDINATOR / GPG_EM_NUM_PROCESSES / GPG_EM_PROCESS_ID set, joins the run; each process
feeds only its own rows of every global batch. Three update steps on fixed batches, with a collective
orbax save after step 2 and a restore onto the sharded target before step 3; process 0 writes the
final parameters (gathered) to OUT.npz.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from gpg_em.models import init_params
from gpg_em.parallel import global_batch, initialize_distributed, is_primary, make_mesh, process_slice
from gpg_em.train import checkpoint as ckpt
from gpg_em.train.objective import make_objective
from gpg_em.train.optim import OptimConfig, make_optimizer
from gpg_em.train.state import create_state
from gpg_em.train.step import StepConfig, jit_update_step
from parallel_checks import B, CFG, G, make_batch


def main(mesh_arg: str, workdir: str, out: str):
    initialize_distributed()
    mesh = make_mesh(tuple(int(s) for s in mesh_arg.split(",")))
    tx, schedule = make_optimizer(OptimConfig(learning_rate=1e-3, total_steps=10))
    state, shardings = create_state(init_params(CFG, jax.random.PRNGKey(0)), CFG, tx, mesh)
    sc = StepConfig(make_objective("gpg", G, age=True), chunk_size=4)
    keys = tuple(make_batch())
    step = jit_update_step(CFG, sc, tx, schedule, mesh, shardings, keys)
    rows = process_slice(mesh, B)
    mngr = ckpt.manager(workdir)
    for i in range(3):
        local = {k: v[rows] for k, v in make_batch(seed=i).items()}  # this process's rows only
        state, metrics = step(state, global_batch(local, mesh, B), jax.random.PRNGKey(i))
        if i == 1:
            ckpt.save(mngr, 2, state, {"step": 2})
            state, loop = ckpt.restore(mngr, 2, ckpt.abstract_like(state))
            assert loop["step"] == 2
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if is_primary():
        flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(params)}
        np.savez(out, loss=float(metrics["loss"]), **flat)
    print(f"process {jax.process_index()}/{jax.process_count()} rows {rows} devices {len(jax.devices())} "
          f"spec {state.params['layers_0']['attn']['q_proj']['kernel'].sharding.spec}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
