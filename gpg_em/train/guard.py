"""Checks that stop a run before it trains on, or saves, something broken.

Non-finite values: after every update the loss, the gradient norm and the
parameters are checked; the first non-finite one stops the run before
anything of that step is checkpointed, so the checkpoints on disk (and
the rotation that deletes the oldest) only ever hold finite states.

Reward failures: a reward function that raises, returns the wrong number of
values, a non-number, NaN/inf, or times out on some samples stops the run,
naming the function and its first failure, unless `reward.max_failure_fraction`
allows it: failed samples then count as reward 0 while, for every function,
failed / scored samples summed over all rollout rounds of the step stays
<= that fraction (logged as reward/<name>/failed_fraction).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp

from gpg_em.errors import RunStopped
from gpg_em.rewards import RewardFailure

CHECKED_METRICS = ("loss", "grad_norm")


class NonFiniteError(RunStopped):
    """A loss, gradient norm or parameter is NaN or infinite."""


class RewardError(RunStopped):
    """A reward function failed on more samples than reward.max_failure_fraction allows."""


@jax.jit
def _all_finite(tree) -> jax.Array:
    """True when every float leaf of `tree` is finite (one fused reduction per leaf)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def params_finite(params) -> bool:
    return bool(_all_finite(params))


def nonfinite_metrics(record: dict[str, Any], keys: Sequence[str] = CHECKED_METRICS) -> list[str]:
    """`key=value` for each of `keys` in `record` that is NaN or infinite."""
    return [f"{k}={record[k]}" for k in keys if k in record and not math.isfinite(record[k])]


def check_update(record: dict[str, Any], params, last_checkpoint: int | None, skipped: bool = False) -> None:
    """Raises NonFiniteError when the step's loss/grad norm or the updated params are not finite.

    `skipped`: the optimizer skipped this update (optim.skip_nonfinite_updates), so only params count.
    """
    bad = [] if skipped else nonfinite_metrics(record)
    if not bad and not params_finite(params):
        bad = ["parameters (after the update)"]
    if bad:
        kept = f"step {last_checkpoint}" if last_checkpoint else "none yet"
        raise NonFiniteError(f"step {record['step']}: non-finite {', '.join(bad)}; stopped before saving it "
                             f"(last checkpoint: {kept}). Check optim.learning_rate and the rewards, then rerun "
                             "to resume from the last checkpoint")


class RewardFailures:
    """Failed samples of each reward function over the rounds of one step (or one eval)."""

    def __init__(self, max_fraction: float, where: str):
        self.max_fraction, self.where = max_fraction, where
        self.n_scored = 0
        self.failed: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def add(self, failures: Iterable[RewardFailure], n_scored: int) -> None:
        self.n_scored += n_scored
        for f in failures:
            self.failed[f.name] = self.failed.get(f.name, 0) + f.n_errors + f.n_timeouts
            self.first.setdefault(f.name, f.first_error)

    def fractions(self) -> dict[str, float]:
        return {name: n / max(self.n_scored, 1) for name, n in self.failed.items()}

    def error(self) -> str | None:
        """Why the run must stop: the first function whose failed fraction exceeds max_fraction; else None."""
        for name, frac in self.fractions().items():
            if frac > self.max_fraction:
                return (
                    f"{self.where}: reward {name!r} failed on {self.failed[name]} of {self.n_scored} samples "
                    f"(first: {self.first[name]}); expected fn(prompts, completions, entries) -> one float per "
                    f"completion. {self._remedy()}")
        return None

    def _remedy(self) -> str:
        if self.max_fraction:
            return f"That is more than reward.max_failure_fraction={self.max_fraction} allows"
        return "Setting reward.max_failure_fraction > 0 scores failures 0 up to that fraction of a step's samples"

    def metrics(self) -> dict[str, float]:
        return {f"reward/{name}/failed_fraction": frac for name, frac in self.fractions().items()}


def stop_on_reward_failures(failures: RewardFailures) -> None:
    """Raises RewardError on every process when the failures exceed the allowed fraction on any."""
    from gpg_em.parallel import agree_any  # multi-host: all processes stop together
    error = failures.error()
    if agree_any(error is not None):
        raise RewardError(error or f"{failures.where}: a reward function failed on another process")
