"""`gpg-em eval --preset FILE`: a Python file whose get_config() gives defaults for eval options.

Keys are the options' names with underscores (`temperature`, `top_p`, `mode`, `num_samples`,
`max_new_tokens`, `em_inf_kl_weight`, `data`, `model`, ...). An option given on the command line
wins over the preset; a key that names no option is refused, naming the file and the key.
"""
from __future__ import annotations

import argparse
import importlib.util
import os


def load_preset(path: str) -> dict:
    """The get_config() of `path` as a plain dict."""
    if not os.path.isfile(path):
        raise SystemExit(f"gpg-em eval --preset {path}: no such file; expected a Python file defining get_config()")
    spec = importlib.util.spec_from_file_location(f"_gpg_em_eval_preset_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise SystemExit(f"gpg-em eval --preset {path}: defines no get_config()")
    preset = module.get_config()
    return dict(preset.to_dict() if hasattr(preset, "to_dict") else preset)


def apply_preset(args: argparse.Namespace, defaults: argparse.Namespace) -> None:
    """Sets each preset key on `args` unless its option was given (differs from its default)."""
    if not getattr(args, "preset", None):
        return
    for key, value in load_preset(args.preset).items():
        if not hasattr(defaults, key) or key in ("command", "preset"):
            raise SystemExit(f"gpg-em eval --preset {args.preset}: key {key!r} is not an eval option "
                             f"(options: {sorted(k for k in vars(defaults) if k not in ('command', 'preset'))})")
        if getattr(args, key) == getattr(defaults, key):
            setattr(args, key, value)
