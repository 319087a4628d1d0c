"""Deterministic, resumable batches of prompt entries.

Order: epoch e visits the source in the permutation drawn from
SeedSequence([seed, e]); batches run across epoch boundaries, so the stream is
endless unless `num_epochs` is set. The whole position is (epoch, position in
that epoch), so `state()` is a tiny JSON dict and `restore(state)` on a fresh
iterator over the same source yields exactly the batches that followed.

Prompts longer than `max_prompt_tokens` (measured by `length_fn`) are skipped
as they are met, not pre-scanned, so a 10^6-prompt reasoning-gym source costs
nothing up front; each skip is counted.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

Entry = dict[str, Any]


class PromptIterator:
    def __init__(self, source: Sequence[Entry], batch_size: int, seed: int = 0,
                 shuffle: bool = True, length_fn: Callable[[Entry], int] | None = None,
                 max_prompt_tokens: int | None = None, num_epochs: int | None = None):
        if len(source) == 0:
            raise ValueError("prompt source is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size}: must be positive")
        if max_prompt_tokens is not None and length_fn is None:
            raise ValueError("max_prompt_tokens needs a length_fn (see data.make_length_fn)")
        self.source, self.batch_size, self.seed = source, int(batch_size), int(seed)
        self.shuffle, self.num_epochs = shuffle, num_epochs
        self.length_fn, self.max_prompt_tokens = length_fn, max_prompt_tokens
        self.epoch, self.position, self.n_dropped = 0, 0, 0
        self._too_long: dict[int, bool] = {}  # source index -> over the limit (cache)
        self._order_epoch, self._order = -1, None

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            n = len(self.source)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order

    def _is_too_long(self, i: int, entry: Entry) -> bool:
        if self.max_prompt_tokens is None:
            return False
        if i not in self._too_long:
            self._too_long[i] = self.length_fn(entry) > self.max_prompt_tokens
            if len(self._too_long) == len(self.source) and all(self._too_long.values()):
                raise ValueError(f"all {len(self.source)} prompts exceed "
                                 f"max_prompt_tokens={self.max_prompt_tokens}")
        return self._too_long[i]

    def _draw(self) -> Entry | None:
        """The next kept entry, or None at the end of the last epoch."""
        while True:
            if self.position >= len(self.source):
                self.epoch, self.position = self.epoch + 1, 0
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                return None
            i = int(self._order_for(self.epoch)[self.position])
            self.position += 1
            entry = self.source[i]
            if self._is_too_long(i, entry):
                self.n_dropped += 1
                continue
            return entry

    def __iter__(self):
        return self

    def __next__(self) -> list[Entry]:
        """The next `batch_size` entries (the last batch of a finite run may be short)."""
        batch = []
        while len(batch) < self.batch_size:
            entry = self._draw()
            if entry is None:
                break
            batch.append(entry)
        if not batch:
            raise StopIteration
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n_dropped": self.n_dropped,
                "seed": self.seed, "size": len(self.source)}

    def restore(self, state: Mapping[str, int]) -> None:
        """Continue from `state()`; refuses a state taken on another source or seed."""
        for key, mine in (("seed", self.seed), ("size", len(self.source))):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"iterator state has {key}={state[key]} but this iterator has "
                                 f"{key}={mine}: the prompt source or seed changed since the checkpoint")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.n_dropped = int(state.get("n_dropped", 0))

    def metrics(self) -> dict[str, int]:
        """For logging: epoch, skipped draws, distinct prompts known to be too long."""
        return {"data/epoch": self.epoch, "data/n_dropped": self.n_dropped,
                "data/n_too_long": sum(self._too_long.values())}
