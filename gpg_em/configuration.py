"""Experiment configs: load a `get_config()` file, apply `--config.KEY=VALUE` overrides, validate.

Everything here runs before any model is built or compiled, so a mistyped
key, a wrong type or an impossible combination is refused at once with a
message naming the key.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
import sys

import ml_collections

ALGORITHMS = ("gpg", "grpo", "dr_grpo", "rloo", "em_ft", "em_rl")
DEFAULT_CONFIG = "configs/gpg.py"


class ConfigError(ValueError):
    """A config key has a bad value or an impossible combination."""


def _configs_root(path: str) -> str:
    """The folder holding the `configs` package a config file sits in (configs/x.py or
    configs/paper/x.py), else the file's grandparent folder."""
    folder = os.path.dirname(os.path.abspath(path))
    d = folder
    while os.path.dirname(d) != d:
        if os.path.basename(d) == "configs":
            return os.path.dirname(d)
        d = os.path.dirname(d)
    return os.path.dirname(folder)


def load_config(path: str | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict of `path` (a file with get_config()), or of the packaged configs/gpg.py."""
    if path is None:
        return importlib.import_module("configs.gpg").get_config()
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file; expected a Python file defining get_config()")
    root = _configs_root(path)
    if root not in sys.path:
        sys.path.insert(0, root)  # so a config can `from configs.base import get_config`
    spec = importlib.util.spec_from_file_location(f"_gpg_em_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config {path}: defines no get_config()")
    return module.get_config()


def _parse_value(key: str, text: str, current):
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={text}: expected a bool (true/false)")
    try:
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"--config.{key}={text}: expected {type(current).__name__}") from None
    if isinstance(current, str):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys += _all_keys(v, prefix + k + ".")
    return keys


def apply_override(cfg: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets `key` (dotted) from its command-line text, typed like the current value."""
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        children = node.keys() if isinstance(node, ml_collections.ConfigDict) else node
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in children:
            close = difflib.get_close_matches(key, _all_keys(cfg), n=3)
            hint = f"; did you mean {', '.join('--config.' + c for c in close)}?" if close else ""
            raise ConfigError(f"--config.{key}: unknown config key{hint}")
        if i < len(parts) - 1:
            node = node[part]
    value = _parse_value(key, text, node[parts[-1]])
    try:
        node[parts[-1]] = value
    except TypeError as e:
        raise ConfigError(f"--config.{key}={text}: {e}") from None


def _require(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key}: {msg}")


def uses_ratio(c: ml_collections.ConfigDict) -> bool:
    """Whether the config's loss has an importance ratio (grpo, dr_grpo, rloo; em_rl through rloo/grpo)."""
    return c.algorithm in ("grpo", "dr_grpo", "rloo") or (c.algorithm == "em_rl" and c.em.rl_loss != "gpg")


def _check_mini_batches(c: ml_collections.ConfigDict, batch: int) -> None:
    """PPO mini-batches: whole groups each, whole micro-batches each, only for ratio losses."""
    m, G, mb = c.ppo.mini_batches, c.rollout.group_size, c.train.micro_batch_size
    _require(isinstance(m, int) and m >= 1, "ppo.mini_batches", f"must be a positive integer, got {m!r}")
    _require(m == 1 or uses_ratio(c), "ppo.mini_batches",
             f"{m} optimizer steps per rollout need an importance ratio; algorithm {c.algorithm} has none "
             "(use grpo, dr_grpo, rloo or em_rl with em.rl_loss=rloo/grpo)")
    _require(batch % (m * G) == 0, "ppo.mini_batches",
             f"{m} mini-batches do not split the {batch // G} groups of prompts_per_step into whole groups")
    _require(mb == 0 or (batch // m) % mb == 0, "train.micro_batch_size",
             f"{mb} does not divide a mini-batch of {batch // m} rows (ppo.mini_batches={m})")


def validate(c: ml_collections.ConfigDict) -> None:
    """Refuses impossible settings, naming the key."""
    _require(c.algorithm in ALGORITHMS, "algorithm", f"{c.algorithm!r} is not one of {list(ALGORITHMS)}")
    for key in ("total_steps", "checkpoint_every", "eval_every", "rollout.prompts_per_step",
                "rollout.group_size", "rollout.max_new_tokens", "rollout.min_prompt_width", "eval.num_prompts",
                "eval.max_new_tokens"):
        value = c[key.split(".")[0]] if "." not in key else c[key.split(".")[0]][key.split(".")[1]]
        _require(isinstance(value, int) and value >= 1, key, f"must be a positive integer, got {value!r}")
    _require(isinstance(c.keep_checkpoints, int) and c.keep_checkpoints >= 1, "keep_checkpoints",
             f"must be an integer >= 1 (the newest checkpoints kept), got {c.keep_checkpoints!r}")
    _require(isinstance(c.optim.skip_nonfinite_updates, int) and c.optim.skip_nonfinite_updates >= 0,
             "optim.skip_nonfinite_updates", f"must be an integer >= 0, got {c.optim.skip_nonfinite_updates!r}")
    frac = c.reward.max_failure_fraction
    _require(isinstance(frac, (int, float)) and 0.0 <= frac <= 1.0, "reward.max_failure_fraction",
             f"must be in [0, 1] (0: any reward failure stops the run), got {frac!r}")
    grouped = c.algorithm != "em_ft"
    _require(not grouped or c.rollout.group_size >= 2, "rollout.group_size",
             f"{c.algorithm} compares samples of one prompt: needs group_size >= 2, got {c.rollout.group_size}")
    batch = c.rollout.prompts_per_step * c.rollout.group_size
    mb = c.train.micro_batch_size
    _require(mb >= 0 and (mb == 0 or batch % mb == 0), "train.micro_batch_size",
             f"{mb} does not divide the batch of prompts_per_step*group_size = {batch} rows")
    _require(c.train.pack_multiple >= 1, "train.pack_multiple", f"must be >= 1, got {c.train.pack_multiple}")
    growth = c.train.pack_growth
    _require(isinstance(growth, (int, float)) and growth >= 1, "train.pack_growth",
             f"must be a number >= 1 (1: every multiple of train.pack_multiple), got {growth!r}")
    _require(str(c.train.compile_ahead).lower() in ("auto", "true", "false"), "train.compile_ahead",
             f"{c.train.compile_ahead!r} is not auto, true or false")
    _require(c.train.attention_block >= 0, "train.attention_block",
             f"must be >= 0 (0: unblocked), got {c.train.attention_block}")
    _require(not c.train.share_prompts or mb % c.rollout.group_size == 0, "train.micro_batch_size",
             f"{mb} must be a multiple of rollout.group_size = {c.rollout.group_size} with train.share_prompts "
             "(each group's prompt is computed once)")
    _require(0.0 <= c.gpg.beta_th <= 1.0, "gpg.beta_th", f"must be in [0, 1], got {c.gpg.beta_th}")
    _require(c.gpg.max_rounds >= 1, "gpg.max_rounds", f"must be >= 1, got {c.gpg.max_rounds}")
    _require(c.gpg.aggregation in ("token_mean", "valid_token_mean"), "gpg.aggregation",
             f"{c.gpg.aggregation!r} is not token_mean or valid_token_mean")
    _require(c.gpg.age or c.gpg.aggregation == "token_mean", "gpg.aggregation",
             "valid_token_mean is itself the AGE rescaling: it needs gpg.age=true")
    _require(not c.gpg.scale_batch or c.gpg.std_normalize, "gpg.scale_batch",
             "divides by the batch's reward std: it needs gpg.std_normalize=true")
    steps, devices = c.gpg.age_micro_steps, c.gpg.age_devices
    _require(isinstance(steps, int) and isinstance(devices, int) and steps >= 1 and devices >= 1
             and batch % (steps * devices * c.rollout.group_size) == 0, "gpg.age_micro_steps",
             f"age_micro_steps*age_devices = {steps}*{devices} must split the {batch // c.rollout.group_size} "
             "groups of a batch evenly")
    _require(steps * devices == 1 or c.gpg.aggregation == "token_mean", "gpg.age_micro_steps",
             "the per-micro-step AGE is the official code's token_mean form: it needs gpg.aggregation=token_mean")
    _require(c.ppo.kl_coef >= 0, "ppo.kl_coef", f"must be >= 0, got {c.ppo.kl_coef}")
    _require(c.ppo.inner_epochs >= 1, "ppo.inner_epochs", f"must be >= 1, got {c.ppo.inner_epochs}")
    _check_mini_batches(c, batch)
    _require(c.ppo.aggregation in ("default", "seq_mean", "token_mean", "fixed_length"), "ppo.aggregation",
             f"{c.ppo.aggregation!r} is not default, seq_mean, token_mean or fixed_length")
    _require(c.ppo.kl_clamp >= 0, "ppo.kl_clamp", f"must be >= 0 (0: no clamp), got {c.ppo.kl_clamp}")
    _require(c.em.ft_reduction in ("seq_sum", "token_mean"), "em.ft_reduction",
             f"{c.em.ft_reduction!r} is not seq_sum or token_mean")
    _require(c.em.rl_kind in ("token", "trajectory"), "em.rl_kind", f"{c.em.rl_kind!r} is not token or trajectory")
    _require(c.em.rl_reduction in ("sum", "mean"), "em.rl_reduction", f"{c.em.rl_reduction!r} is not sum or mean")
    _require(c.em.rl_loss in ("rloo", "gpg", "grpo"), "em.rl_loss", f"{c.em.rl_loss!r} is not rloo, gpg or grpo")
    _require(c.model.dtype in ("float32", "bfloat16"), "model.dtype", f"{c.model.dtype!r} is not float32 or bfloat16")
    _require(c.rollout.kv_dtype in ("auto", "float32", "bfloat16"), "rollout.kv_dtype",
             f"{c.rollout.kv_dtype!r} is not auto, float32 or bfloat16")
    _require(c.rollout.temperature > 0, "rollout.temperature", f"must be > 0, got {c.rollout.temperature}")
    _require(0 < c.rollout.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {c.rollout.top_p}")
    slots = c.rollout.decode_slots
    _require(isinstance(slots, int) and -1 <= slots <= batch, "rollout.decode_slots",
             f"{slots!r}: expected 0 (all rows at once), -1 (from free memory) or 1..{batch} "
             "(the rollout's prompts_per_step*group_size rows)")
    _require(isinstance(c.host_mmap_threshold, int) and c.host_mmap_threshold >= 0, "host_mmap_threshold",
             f"must be a byte count >= 0 (0: glibc's default), got {c.host_mmap_threshold!r}")
    shape = c.mesh.shape
    _require(isinstance(shape, (tuple, list)) and len(shape) == 3 and all(isinstance(s, int) for s in shape)
             and all(s >= 1 or s == -1 for s in shape) and list(shape).count(-1) <= 1, "mesh.shape",
             f"{shape!r}: expected 3 sizes over (data, fsdp, tensor), each >= 1 or one -1 for the rest, e.g. 1,2,4")


def get(argv_config: str | None, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    cfg = load_config(argv_config)
    for key, text in overrides:
        apply_override(cfg, key, text)
    validate(cfg)
    return cfg
