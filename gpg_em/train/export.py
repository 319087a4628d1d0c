"""Export a run's trained policy (a checkpoint in its workdir) as a Hugging Face folder."""
from __future__ import annotations

from gpg_em.eval.policy import restore_policy
from gpg_em.models import save_pretrained


def export_workdir(workdir: str, out_dir: str, step: int | None = None) -> str:
    model, _, _ = restore_policy(workdir, step)
    save_pretrained(model, out_dir)
    return out_dir
