"""Verifiable rewards: math-verify, reasoning-gym scorers, format, user functions.

A reward fn is `fn(prompts, completions, entries) -> list[float]`. The trainer
builds components from config with `build_rewards` and scores a rollout batch
with `compute_rewards` (weighted sum, every fn guarded by `safe_rewards`).
"""
from gpg_em.rewards.extract import DEFAULT_EXTRACTION, extract_answer, last_boxed, last_number
from gpg_em.rewards.registry import (REGISTRY, RewardComponent, RewardFailure, build_rewards, compute_rewards,
                                     resolve_reward, score_rewards, weighted_sum)
from gpg_em.rewards.safety import n_stuck, safe_rewards
from gpg_em.rewards.verifiers import (make_format_reward, make_math_reward,
                                      make_reasoning_gym_reward, math_equal)

__all__ = [
    "DEFAULT_EXTRACTION", "REGISTRY", "RewardComponent", "RewardFailure", "build_rewards", "compute_rewards",
    "extract_answer", "last_boxed", "last_number", "make_format_reward", "make_math_reward",
    "make_reasoning_gym_reward", "math_equal", "n_stuck", "resolve_reward", "safe_rewards", "score_rewards",
    "weighted_sum",
]
