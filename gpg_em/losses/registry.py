"""Losses chosen by config name: a tiny dict of pure functions.

The trainer looks a loss up by `config.loss` and calls it with keyword
arguments taken from its batch: `LOSS_INPUTS[name]` lists the array
arguments the loss reads (all named as in the batch), the rest of its options
are the loss's own static keyword arguments. EM-RL is not a loss: it is a
reward (`em_rl_reward`) fed to one of the RL losses below (RLOO in the paper).
"""
from __future__ import annotations

from typing import Callable

from gpg_em.losses.clipped import dr_grpo_loss, grpo_loss, rloo_loss
from gpg_em.losses.entropy import em_ft_loss
from gpg_em.losses.policy_gradient import gpg_loss

LOSSES: dict[str, Callable] = {
    "gpg": gpg_loss,
    "grpo": grpo_loss,
    "dr_grpo": dr_grpo_loss,
    "rloo": rloo_loss,
    "em_ft": em_ft_loss,
}

LOSS_INPUTS: dict[str, tuple[str, ...]] = {
    "gpg": ("logprobs", "mask", "rewards"),
    "grpo": ("logprobs", "old_logprobs", "ref_logprobs", "entropies", "mask", "rewards"),
    "dr_grpo": ("logprobs", "old_logprobs", "ref_logprobs", "entropies", "mask", "rewards"),
    "rloo": ("logprobs", "old_logprobs", "ref_logprobs", "entropies", "mask", "rewards"),
    "em_ft": ("entropies", "mask"),
}

# Losses that compare the completions of one prompt: they take `group_size`.
GROUPED = frozenset({"gpg", "grpo", "dr_grpo", "rloo"})


def get_loss(name: str) -> Callable:
    """The pure loss function registered under `name`."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None
