"""Orbax checkpoints of the train state plus a JSON record of the host-side loop state.

A checkpoint holds params, optimizer state and step (sharded arrays, restored
directly onto their target shardings) and `loop`: a JSON dict with the data
iterator position, the base seed and anything else the loop needs to continue
exactly. Saves are atomic (orbax writes to a temporary folder and renames), so
a run killed mid-save resumes from the previous complete checkpoint.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options,
                                 item_names=("state", "loop"))


def save(mngr: ocp.CheckpointManager, step: int, state, loop: dict[str, Any]) -> None:
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop)))
    mngr.wait_until_finished()


def latest_step(mngr: ocp.CheckpointManager) -> int | None:
    return mngr.latest_step()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
    """(state, loop) at `step`; `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings."""
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                     loop=ocp.args.JsonRestore()))
    return out["state"], out["loop"]


def abstract_like(state):
    """ShapeDtypeStructs carrying each array's sharding: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
