"""GRPO (TRL loss_type="grpo"): std-normalised advantages, clipped ratio, optional KL.

    gpg-em train --config configs/grpo.py --workdir runs/grpo

The GPG paper's baseline. Deltas from base: algorithm, learning rate.
"""
from configs.base import get_config as base


def get_config():
    c = base()
    c.algorithm = "grpo"
    c.ppo.clip_eps = 0.2
    c.ppo.kl_coef = 0.0
    c.optim.learning_rate = 1e-5
    return c
