"""EM-RL-token on Qwen2.5-Math-7B: reward -mean_t H (the released per-token mean), RLOO, verl's PPO.

Setup and sources: configs/paper/em_common.py. Labels are not used: the reward is the policy's
own negative token entropy (paper Eq. 4 with the released per-token mean, em.rl_reduction mean).
"""
from configs.paper.em_common import em_base


def get_config():
    c = em_base()
    c.algorithm = "em_rl"
    c.em.rl_kind = "token"
    c.em.rl_reduction = "mean"
    c.em.rl_loss = "rloo"
    return c
