"""Export a run's trained policy (a checkpoint in its workdir) as a Hugging Face folder."""
from __future__ import annotations

import os

import ml_collections

from gpg_em.models import Model, save_pretrained
from gpg_em.train import checkpoint as ckpt
from gpg_em.train.setup import build_run


def export_workdir(workdir: str, out_dir: str, step: int | None = None) -> str:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; expected a gpg-em run folder (made by `gpg-em train`)")
    with open(path, encoding="utf-8") as f:
        c = ml_collections.ConfigDict(__import__("json").load(f))
    run = build_run(c)
    mngr = ckpt.manager(workdir)
    step = ckpt.latest_step(mngr) if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to export")
    state, _ = ckpt.restore(mngr, step, ckpt.abstract_like(run.state))
    tokenizer = run.model.tokenizer
    save_pretrained(Model(state.params, run.model.config, tokenizer), out_dir)
    return out_dir
