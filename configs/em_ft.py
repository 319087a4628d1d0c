"""EM-FT: minimise the token entropy of the model's own samples; no labels, no reward.

    gpg-em train --config configs/em_ft.py --workdir runs/em_ft

Expect mean token entropy of samples (`entropy_mean`) to fall step by step.
"""
from configs.base import get_config as base


def get_config():
    c = base()
    c.algorithm = "em_ft"
    c.em.ft_reduction = "seq_sum"
    c.optim.learning_rate = 1e-6
    return c
