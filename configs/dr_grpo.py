"""Dr.GRPO: mean-only advantages, loss summed over tokens / (B * max_new_tokens).

    gpg-em train --config configs/dr_grpo.py --workdir runs/dr_grpo
"""
from configs.base import get_config as base


def get_config():
    c = base()
    c.algorithm = "dr_grpo"
    c.optim.learning_rate = 1e-5
    return c
