"""One rollout round: prompts -> samples (the sampler) -> rewards, as host numpy arrays.

A round is a dict of arrays with leading dimension B_r = n_prompts * G:
prompt_ids [B, P] (left-padded), prompt_mask [B, P], completion_ids [B, N],
completion_mask [B, N] (N = max_new_tokens), rewards [B], plus the sampler's
sample_logprobs / sample_entropies [B, N] and the texts (kept host-side).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from gpg_em.losses import em_rl_reward
from gpg_em.models import Model
from gpg_em.rewards import RewardFailure, score_rewards
from gpg_em.rollout import generate
from gpg_em.rollout.sampler import MIN_BUCKET

@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    min_prompt_width: int = MIN_BUCKET  # prompts pad to prompt_bucket(longest, this): fewer compiled shapes
    kv_dtype: str = "auto"  # the sampler's KV cache dtype (SamplingConfig.kv_dtype)


def _pad_to(x: np.ndarray, width: int, left: bool, value=0) -> np.ndarray:
    pad = width - x.shape[1]
    if pad <= 0:
        return x
    widths = ((0, 0), (pad, 0)) if left else ((0, 0), (0, pad))
    return np.pad(x, widths, constant_values=value)


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of already chat-formatted prompt texts (the template carries any BOS)."""
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def sample_round(model: Model, prompt_texts: Sequence[str], spec: RolloutSpec, seed: int,
                 sampler=None) -> dict[str, Any]:
    """Samples G completions per prompt; arrays padded to max_new_tokens. `sampler`: see `generate`."""
    out = generate(model, encode_texts(model.tokenizer, prompt_texts), max_new_tokens=spec.max_new_tokens, num_samples=spec.group_size,
                   temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k, greedy=spec.greedy,
                   seed=seed, chat_template=False, sampler=sampler,
                   min_prompt_width=spec.min_prompt_width, kv_dtype=spec.kv_dtype)
    N = spec.max_new_tokens
    return {
        "prompt_ids": np.asarray(out.prompt_ids, np.int32),
        "prompt_mask": np.asarray(out.prompt_mask, np.int32),
        "completion_ids": _pad_to(np.asarray(out.tokens, np.int32), N, False),
        "completion_mask": _pad_to(np.asarray(out.mask, np.int32), N, False),
        "sample_logprobs": _pad_to(np.asarray(out.logprobs, np.float32), N, False),
        "sample_entropies": _pad_to(np.asarray(out.entropies, np.float32), N, False),
        "texts": np.array(list(out.texts), dtype=object),
    }


def score_round(round_: dict[str, Any], entries: Sequence[dict], prompt_texts: Sequence[str], G: int,
                reward_components, timeout_s: float, em_rl: dict | None = None
                ) -> tuple[dict[str, float], list[RewardFailure]]:
    """Adds `rewards` [B] (and `task_rewards`) to the round; returns reward metrics and failures.

    Task rewards are always computed (for logging); with `em_rl` the training
    reward is the policy's own confidence instead (EM paper, Eqs. 3-4).
    """
    rows_entries = [e for e in entries for _ in range(G)]
    rows_prompts = [p for p in prompt_texts for _ in range(G)]
    task, metrics, failures = score_rewards(reward_components, rows_prompts, round_["texts"], rows_entries, timeout_s)
    round_["task_rewards"] = task
    if em_rl is None:
        round_["rewards"] = task
    else:
        r = em_rl_reward(jnp.asarray(round_["completion_mask"]), logprobs=jnp.asarray(round_["sample_logprobs"]),
                         entropies=jnp.asarray(round_["sample_entropies"]), kind=em_rl["kind"],
                         reduction=em_rl["reduction"])
        round_["rewards"] = np.asarray(r, np.float32)
    return metrics, failures


def merge_prompt_width(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Left-pads every round's prompt arrays to the widest round's P (so rows can be mixed)."""
    width = max(r["prompt_ids"].shape[1] for r in rounds)
    for r in rounds:
        r["prompt_ids"] = _pad_to(r["prompt_ids"], width, True)
        r["prompt_mask"] = _pad_to(r["prompt_mask"], width, True)
    return rounds



def check_groups_share_prompts(prompt_ids_BxP: np.ndarray, G: int) -> None:
    """Rows i*G .. i*G+G-1 must hold one prompt (what `train.share_prompts` relies on)."""
    B, P = prompt_ids_BxP.shape
    grouped = prompt_ids_BxP.reshape(B // G, G, P)
    bad = np.flatnonzero((grouped != grouped[:, :1]).any(axis=(1, 2)))
    if bad.size:
        raise ValueError(f"train.share_prompts: batch groups {bad.tolist()} hold different prompts in their "
                         f"{G} rows; expected each group of rollout.group_size rows to share one prompt")
