"""Export a run's trained policy (a checkpoint in its workdir) as a Hugging Face folder."""
from __future__ import annotations

import os

from gpg_em.errors import UserError
from gpg_em.eval.policy import is_workdir, restore_policy
from gpg_em.models import save_pretrained


def check_out_dir(out_dir: str, force: bool) -> None:
    """A non-empty `out_dir` is only written into with `force` (files of the same name are replaced)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir}: exists and is not a folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise UserError(f"--out {out_dir}: folder exists and is not empty; choose another or pass --force "
                        "to overwrite the files exported there")


def export_workdir(workdir: str, out_dir: str, step: int | None = None, force: bool = False) -> str:
    if not is_workdir(workdir):
        raise UserError(f"--workdir {workdir}: not a training run folder (no config.json beside checkpoints/)")
    check_out_dir(out_dir, force)
    model, _, _ = restore_policy(workdir, step)
    save_pretrained(model, out_dir)
    return out_dir
