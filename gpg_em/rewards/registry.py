"""Rewards chosen by name from config, user rewards, weighted sums.

Config (the trainer's `reward` block):
  reward.fn        "math" | "format" | "reasoning_gym" | "auto" |
                   "my.module:my_fn", or a list of these
  reward.weights   one float per fn (default all 1.0), or {name: weight}
  reward.options   {name: {option: value}} passed to the factory (built-ins) or
                   bound as keyword arguments (user functions; keyed by the full
                   "module:function" or by the function name)
  reward.timeout_s wall-clock limit per reward fn call (see `safety.py`)

A user reward is any callable `fn(prompts, completions, entries) -> list[float]`.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gpg_em.rewards.extract import DEFAULT_EXTRACTION
from gpg_em.rewards.safety import safe_rewards
from gpg_em.rewards.verifiers import (RewardFn, make_format_reward, make_math_reward,
                                      make_reasoning_gym_reward)


def make_auto_reward(extraction: str = DEFAULT_EXTRACTION) -> RewardFn:
    """reasoning-gym's scorer for reasoning-gym entries, math-verify for the rest."""
    rg = make_reasoning_gym_reward(extraction)
    mv = make_math_reward(extraction)

    def auto_reward(prompts, completions, entries):
        out = []
        for p, c, e in zip(prompts, completions, entries):
            fn = rg if (e.get("metadata") or {}).get("rg_task") else mv
            out.extend(fn([p], [c], [e]))
        return out
    return auto_reward


REGISTRY: dict[str, Callable[..., RewardFn]] = {
    "math": make_math_reward,
    "format": make_format_reward,
    "reasoning_gym": make_reasoning_gym_reward,
    "auto": make_auto_reward,
}


def _expected() -> str:
    return f"expected one of {sorted(REGISTRY)} or 'module.path:function'"


def _import_user_fn(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is a config error
        raise ValueError(f"reward.fn={spec!r}: cannot import module {module_name!r} "
                         f"({type(e).__name__}: {e}); {_expected()}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward.fn={spec!r}: module {module_name!r} has no callable {attr!r}; "
                         f"{_expected()}")
    return fn


def resolve_reward(spec: str, options: Mapping[str, Any] | None = None) -> RewardFn:
    """A reward fn from a registered name or a "module.path:function" string."""
    options = dict(options or {})
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward.fn={spec!r}: {_expected()}")
    spec = spec.strip()
    if spec in REGISTRY:
        try:
            return REGISTRY[spec](**options)
        except TypeError as e:
            raise ValueError(f"reward.options.{spec}={options!r}: {e}") from None
    if ":" in spec:
        fn = _import_user_fn(spec)
        return functools.partial(fn, **options) if options else fn
    raise ValueError(f"reward.fn={spec!r}: unknown reward; {_expected()}")


@dataclasses.dataclass(frozen=True)
class RewardComponent:
    name: str  # metric name: the registry name or the user function's name
    fn: RewardFn
    weight: float = 1.0


def build_rewards(fn: str | Sequence[str], weights: Sequence[float] | Mapping[str, float] | None = None,
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> list[RewardComponent]:
    """The `reward.fn/weights/options` config block -> weighted components."""
    specs = [fn] if isinstance(fn, str) else list(fn)
    if not specs:
        raise ValueError(f"reward.fn is empty; {_expected()}")
    if weights is None:
        ws = [1.0] * len(specs)
    elif isinstance(weights, Mapping):
        unknown = set(weights) - set(specs)
        if unknown:
            raise ValueError(f"reward.weights names {sorted(unknown)} not in reward.fn={specs}")
        ws = [float(weights.get(s, 1.0)) for s in specs]
    else:
        ws = [float(w) for w in weights]
        if len(ws) != len(specs):
            raise ValueError(f"reward.weights has {len(ws)} values for {len(specs)} reward.fn entries")
    options = options or {}
    comps = []
    for spec, w in zip(specs, ws):
        name = spec.rpartition(":")[2]
        # User fns' options may be keyed by the short name: config keys with
        # "." or ":" are awkward to override from the command line.
        opts = options.get(spec, options.get(name))
        comps.append(RewardComponent(name=name, fn=resolve_reward(spec, opts), weight=w))
    return comps


@dataclasses.dataclass(frozen=True)
class RewardFailure:
    """One component's failed samples in one call: errors (raised, wrong length, non-numeric, NaN) and timeouts."""
    name: str
    n_errors: int
    n_timeouts: int
    first_error: str  # one line: the first failure's description


def score_rewards(components: Sequence[RewardComponent], prompts, completions, entries,
                  timeout_s: float | None = 30.0) -> tuple[np.ndarray, dict[str, float], list[RewardFailure]]:
    """`compute_rewards` plus one RewardFailure per component that failed on some sample."""
    total = np.zeros(len(completions), np.float32)
    metrics: dict[str, float] = {}
    failures = []
    for comp in components:
        values, counts = safe_rewards(comp.fn, prompts, completions, entries, timeout_s)
        total += np.float32(comp.weight) * values
        metrics[f"reward/{comp.name}/mean"] = float(values.mean()) if len(values) else 0.0
        metrics[f"reward/{comp.name}/n_errors"] = counts["n_errors"]
        metrics[f"reward/{comp.name}/n_timeouts"] = counts["n_timeouts"]
        metrics["reward/n_stuck"] = counts["n_stuck"]
        if counts["n_errors"] or counts["n_timeouts"]:
            failures.append(RewardFailure(comp.name, counts["n_errors"], counts["n_timeouts"],
                                          counts["first_error"] or "failed"))
    return total, metrics, failures


def compute_rewards(components: Sequence[RewardComponent], prompts, completions, entries,
                    timeout_s: float | None = 30.0) -> tuple[np.ndarray, dict[str, float]]:
    """Weighted sum of safely-run components: (rewards float32 [B], metrics).

    Each component is guarded on its own, so one broken fn zeroes only its
    own term. Metrics: reward/<name>/mean, /n_errors, /n_timeouts, and n_stuck.
    """
    total, metrics, _ = score_rewards(components, prompts, completions, entries, timeout_s)
    return total, metrics


def weighted_sum(components: Sequence[RewardComponent]) -> RewardFn:
    """A plain reward fn summing weighted components (no guard; wrap in safe_rewards)."""
    def weighted_reward(prompts, completions, entries):
        total = np.zeros(len(completions))
        for comp in components:
            total += comp.weight * np.asarray(comp.fn(prompts, completions, entries), np.float64)
        return total.tolist()
    return weighted_reward
