"""EM-RL: negative entropy as the only reward, RLOO advantages (paper, Eqs. 3-4).

    gpg-em train --config configs/em_rl.py --workdir runs/em_rl

`em.rl_kind` token (-H) or trajectory (log p); `em.rl_reduction` sum or mean.
"""
from configs.base import get_config as base


def get_config():
    c = base()
    c.algorithm = "em_rl"
    c.em.rl_kind = "token"
    c.em.rl_reduction = "mean"
    c.em.rl_loss = "rloo"
    c.optim.learning_rate = 1e-5
    return c
