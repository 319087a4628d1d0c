"""Orbax checkpoints of the train state plus a JSON record of the host-side loop state.

A checkpoint holds params, optimizer state and step (sharded arrays, restored
directly onto their target shardings) and `loop`: a JSON dict with the data
iterator position, the base seed and anything else the loop needs to continue
exactly. Saves are atomic (orbax writes to a temporary folder and renames), so
a run killed mid-save resumes from the previous complete checkpoint.

`restore_intact` restores the newest checkpoint that reads back whole with
finite parameters; a broken one (truncated or missing files, an empty step
folder, NaN arrays) is moved to `<workdir>/checkpoints_corrupt/` with a
warning and the next older one is tried. A checkpoint whose arrays (paths or
shapes) differ from the run's state is not broken but another model's or
optimizer's: that stops with one line naming the array and the dimension.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from gpg_em.errors import UserError
from gpg_em.train import layer_stack


def manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    if max_to_keep < 1:  # orbax reads 0 as "delete every checkpoint"
        raise UserError(f"keep_checkpoints={max_to_keep}: must be >= 1 (the newest checkpoints kept)")
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


def _path(keys) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keys)


def _leaf_shapes(tree) -> dict[str, tuple]:
    return {_path(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def shape_mismatch(step_dir: str, abstract_state) -> str | None:
    """The first array whose saved path or shape differs from `abstract_state`, described; None if all match.

    Raises when the checkpoint's metadata cannot be read (a broken checkpoint, not another model's).
    """
    # The handler reads the item's own _METADATA; a StandardCheckpointer would also look for a step-level
    # metadata file inside the item folder and warn on every resume that it is absent.
    saved = ocp.StandardCheckpointHandler().metadata(epath.Path(os.path.join(step_dir, "state")))
    saved = _leaf_shapes(getattr(saved, "item_metadata", saved))
    if not any(name.startswith("params/") for name in saved):
        raise FileNotFoundError(f"{step_dir}/state: no parameter metadata")
    wanted = _leaf_shapes(abstract_state)
    for name in sorted(set(saved) ^ set(wanted)):
        where = "the checkpoint" if name in saved else "this run's state"
        return f"only {where} has the array {name}"
    for name, new in wanted.items():
        old = saved[name]
        if old != new:
            dims = [i for i in range(min(len(old), len(new))) if old[i] != new[i]]
            where = f"dim {dims[0]}: {old[dims[0]]} vs {new[dims[0]]}" if dims else f"rank {len(old)} vs {len(new)}"
            return f"{name} is {old} in the checkpoint but {new} in this run ({where})"
    return None


def quarantine(workdir: str, step: int) -> str:
    """Moves checkpoints/<step> to checkpoints_corrupt/<step>-<unix time>; returns the new path."""
    dest = os.path.join(os.path.abspath(workdir), "checkpoints_corrupt", f"{step}-{int(time.time())}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(os.path.join(os.path.abspath(workdir), "checkpoints", str(step)), dest)
    return dest


def _holds_per_layer_optimizer(step_dir: str, abstract_state) -> bool:
    """Whether the checkpoint matches `abstract_state` once its optimizer state is per layer (the layout before
    `layer_stack`)."""
    return hasattr(abstract_state, "opt_state") and \
        shape_mismatch(step_dir, layer_stack.per_layer_abstract(abstract_state)) is None


def _read_per_layer(mngr, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
    """(state, loop) of a checkpoint holding the optimizer state per layer, its optimizer state stacked."""
    state, loop = restore(mngr, step, layer_stack.per_layer_abstract(abstract_state))
    print(f"gpg-em: checkpoint step {step} holds the optimizer state per layer (an earlier layout); stacked on "
          "restore", file=sys.stderr, flush=True)
    return layer_stack.stacked_state(state, abstract_state), loop


def _restore_per_layer(mngr, step: int, abstract_state, finite) -> tuple[Any, dict] | str:
    """`_read_per_layer`, or why the checkpoint is unusable."""
    try:
        state, loop = _read_per_layer(mngr, step, abstract_state)
    except Exception as e:  # noqa: BLE001 - any read failure marks the checkpoint broken
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return (state, loop) if finite(state.params) else "non-finite parameters"


def restore_any_layout(mngr: ocp.CheckpointManager, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
    """`restore`, also of a checkpoint holding the optimizer state per layer (stacked on restore)."""
    step_dir = os.path.join(str(mngr.directory), str(step))
    if shape_mismatch(step_dir, abstract_state) and _holds_per_layer_optimizer(step_dir, abstract_state):
        return _read_per_layer(mngr, step, abstract_state)
    return restore(mngr, step, abstract_state)


def _try_restore(mngr, workdir: str, step: int, abstract_state, finite) -> tuple[Any, dict] | str:
    """(state, loop) of `step`, or why it is unusable; raises UserError on a shape mismatch."""
    step_dir = os.path.join(os.path.abspath(workdir), "checkpoints", str(step))
    try:
        mismatch = shape_mismatch(step_dir, abstract_state)
    except Exception as e:  # noqa: BLE001 - unreadable metadata: a broken checkpoint
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if mismatch and _holds_per_layer_optimizer(step_dir, abstract_state):
        return _restore_per_layer(mngr, step, abstract_state, finite)
    if mismatch:
        raise UserError(f"{step_dir}: {mismatch}; this run's model or optimizer differs from the ones this "
                        "workdir was trained with: use another --workdir, or the original settings")
    try:
        state, loop = restore(mngr, step, abstract_state)
    except Exception as e:  # noqa: BLE001 - any read failure marks the checkpoint broken
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not finite(state.params):
        return "non-finite parameters"
    return state, loop


def restore_intact(mngr: ocp.CheckpointManager, workdir: str, abstract_state, finite, move: bool = True
                   ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, loop) of the newest usable checkpoint, broken newer ones quarantined; None if none.

    `finite(params) -> bool` vets the restored parameters. `move`: quarantine broken ones (multi-host:
    process 0 only; the others skip the same steps, as every process reads the same files).
    """
    for step in sorted(mngr.all_steps(), reverse=True):
        got = _try_restore(mngr, workdir, step, abstract_state, finite)
        if not isinstance(got, str):
            return step, got[0], got[1]
        if not move:
            continue
        dest = quarantine(workdir, step)
        print(f"gpg-em: checkpoint step {step} is {got}; moved to {dest}, trying the previous one",
              file=sys.stderr, flush=True)
        mngr.reload()
    return None


def available_steps(mngr: ocp.CheckpointManager) -> list[int]:
    return sorted(mngr.all_steps())
