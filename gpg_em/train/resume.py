"""A resumed run must be the run that wrote the workdir: its config is compared with the saved one.

Keys that change only how the run is executed or recorded (how long it runs,
when it checkpoints and evaluates, memory layout, devices) may change freely;
any other difference (algorithm, learning rate, model, data, rewards, ...)
refuses the resume, naming each key, unless `resume.allow_config_changes`
names it (a comma list of keys or key prefixes, or "*"). Allowed changes are
returned so the loop records them in metrics.jsonl (kind "config_change").
A key the saved config lacks is accepted at configs/base.py's default value (a
key added to the project since the run started; its default keeps the earlier
behaviour), and refused at any other value.
"""
from __future__ import annotations

import json
import os
from typing import Any

from gpg_em.errors import UserError

# Key prefixes that do not change what is trained (DESIGN.md: train.* layouts are exact).
FREE = ("total_steps", "checkpoint_every", "eval_every", "keep_checkpoints", "compilation_cache_dir",
        "host_mmap_threshold", "mesh.", "distributed.", "train.", "eval.", "reward.timeout_s",
        "reward.max_failure_fraction", "resume.", "rollout.decode_slots")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changes(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) for every key that differs (absent: None), sorted by key."""
    a, b = flatten(saved), flatten(current)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _matches(key: str, patterns: list[str]) -> bool:
    return any(p == "*" or key == p or key.startswith(p if p.endswith(".") else p + ".") for p in patterns)


def refused(diff: list[tuple[str, Any, Any]], allow: str) -> list[tuple[str, Any, Any]]:
    """The changes neither free nor allowed by `allow` (comma list of keys/prefixes, "*" for all)."""
    patterns = [p.strip() for p in allow.split(",") if p.strip()]
    return [d for d in diff if not d[0].startswith(FREE) and not _matches(d[0], patterns)]


def base_defaults() -> dict[str, Any]:
    """configs/base.py's values, flattened (the defaults a newly added key takes)."""
    from configs.base import get_config
    return flatten(json.loads(get_config().to_json()))


def added_at_default(diff: list[tuple[str, Any, Any]], saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Changes of keys the saved config lacks whose value is configs/base.py's default: keys added to the
    config since the run started, whose defaults keep the earlier behaviour."""
    known, defaults = flatten(saved), base_defaults()
    return [d for d in diff if d[0] not in known and d[0] in defaults and d[2] == defaults[d[0]]]


def check_config(workdir: str, config_json: str, allow: str) -> list[tuple[str, Any, Any]]:
    """The differences between `<workdir>/config.json` and `config_json`; raises on refused ones."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e}); restore it or use another --workdir") from None
    diff = changes(saved, json.loads(config_json))
    new_keys = added_at_default(diff, saved)
    bad = [d for d in refused(diff, allow) if d not in new_keys]
    if bad:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in bad[:6])
        more = f" (and {len(bad) - 6} more)" if len(bad) > 6 else ""
        keys = ",".join(k for k, _, _ in bad)
        raise UserError(f"{workdir}: resuming with a different config: {shown}{more}. Use another --workdir, "
                        f"or allow it with --config.resume.allow_config_changes={keys}")
    return diff
