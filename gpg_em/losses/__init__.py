"""Pure loss functions and advantage estimators: GPG, GRPO, Dr.GRPO, RLOO, EM-FT, EM-RL.

Each loss takes arrays (log-probs [B, T], mask [B, T], rewards [B]) and static
keyword options and returns (loss, aux) with aux a dict of float32 scalars.
"""
from gpg_em.losses.advantages import group_advantages, masked_mean, masked_sum
from gpg_em.losses.clipped import dr_grpo_loss, grpo_loss, rloo_loss
from gpg_em.losses.entropy import em_ft_loss, em_rl_reward
from gpg_em.losses.policy_gradient import gpg_loss
from gpg_em.losses.registry import LOSS_INPUTS, LOSSES, get_loss

__all__ = [
    "group_advantages", "masked_mean", "masked_sum",
    "gpg_loss", "grpo_loss", "dr_grpo_loss", "rloo_loss",
    "em_ft_loss", "em_rl_reward",
    "LOSSES", "LOSS_INPUTS", "get_loss",
]
