"""Held-out evaluation during training: greedy pass@1 of the task reward."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from gpg_em.models import Model
from gpg_em.rewards import score_rewards
from gpg_em.rollout import generate
from gpg_em.train.rollouts import encode_texts


def evaluate(model: Model, entries: Sequence[dict], formatter, reward_components, *, max_new_tokens: int,
             timeout_s: float = 30.0, sampler=None, kv_dtype: str = "auto") -> dict[str, Any]:
    """Greedy completions of `entries`; pass@1 = mean reward (rewards are 0/1 for verifiable tasks).
    `sampler`, `kv_dtype`: see `generate`. "reward_failures" holds the rewards' failures (not a metric)."""
    t0 = time.perf_counter()
    texts = [formatter.text(e, model.tokenizer) for e in entries]
    out = generate(model, encode_texts(model.tokenizer, texts), max_new_tokens=max_new_tokens, greedy=True, chat_template=False,
                   sampler=sampler, kv_dtype=kv_dtype)
    rewards, _, failures = score_rewards(reward_components, texts, list(out.texts), list(entries), timeout_s)
    mask = np.asarray(out.mask)
    return {"reward_mean": float(np.mean(rewards)), "pass@1": float(np.mean(rewards >= 1.0)),
            "completion_length_mean": float(mask.sum(1).mean()), "tokens": int(mask.sum()),
            "eval_seconds": time.perf_counter() - t0, "reward_failures": failures}
