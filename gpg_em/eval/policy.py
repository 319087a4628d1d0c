"""The model to evaluate: a pretrained spec, or a training workdir's checkpointed policy.

A workdir is recognised by its `config.json` beside a `checkpoints/` folder
(a Hugging Face folder has a config.json too, but no checkpoints/). Its policy
is restored the way `gpg_em.train.export` does: rebuild the run from the
stored config (`build_run`, so the checkpoint's tree and shardings are known),
then restore the state at the latest (or a given) step.
"""
from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from gpg_em.errors import UserError
from gpg_em.models import Model, load_pretrained


def is_workdir(spec: str) -> bool:
    return os.path.isfile(os.path.join(spec, "config.json")) and os.path.isdir(os.path.join(spec, "checkpoints"))


def overlay(defaults: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` with every key it lacks taken from `defaults`, recursively (saved values win)."""
    out = dict(defaults)
    for k, v in saved.items():
        out[k] = overlay(defaults[k], v) if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
    return out


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's stored config; keys added to the project since the run was made take configs/base.py's
    defaults (which keep the earlier behaviour), so older runs stay readable."""
    from configs.base import get_config as base
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found; expected a gpg-em run folder (made by `gpg-em train`)")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    return ml_collections.ConfigDict(overlay(json.loads(base().to_json()), saved))


def restore_policy(workdir: str, step: int | None = None) -> tuple[Model, ml_collections.ConfigDict, int]:
    """(policy at `step` (default: latest checkpoint), the run's config, the step restored)."""
    from gpg_em.train import checkpoint as ckpt
    from gpg_em.train.setup import build_run
    c = read_run_config(workdir)
    run = build_run(c)
    mngr = ckpt.manager(workdir)
    steps = ckpt.available_steps(mngr)
    if not steps:
        raise UserError(f"{workdir}/checkpoints: no checkpoint to restore")
    if step is not None and step not in steps:
        raise UserError(f"--step {step}: {workdir} has no checkpoint of that step; it has steps {steps}")
    step = steps[-1] if step is None else step
    state, _ = ckpt.restore_any_layout(mngr, step, ckpt.abstract_like(run.state))
    return Model(state.params, run.model.config, run.model.tokenizer), c, int(step)


def load_model(spec: str, dtype: str = "float32", step: int | None = None) -> tuple[Model, dict[str, Any]]:
    """(Model, description) of a workdir or a pretrained spec (built-in name, HF folder, .gguf)."""
    if is_workdir(spec):
        model, c, step = restore_policy(spec, step)
        return model, {"kind": "workdir", "spec": spec, "step": step, "run_config": c}
    if step is not None:
        raise ValueError(f"--step {step}: only a training workdir has checkpoint steps; {spec!r} is not one")
    return load_pretrained(spec, dtype=dtype), {"kind": "pretrained", "spec": spec}
