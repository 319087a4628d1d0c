"""EM-RL-sequence on Qwen2.5-Math-7B: reward mean_t log p (trajectory confidence, released per-token
mean), RLOO, verl's PPO.

Setup and sources: configs/paper/em_common.py (paper Eq. 3; em.rl_kind trajectory).
"""
from configs.paper.em_common import em_base


def get_config():
    c = em_base()
    c.algorithm = "em_rl"
    c.em.rl_kind = "trajectory"
    c.em.rl_reduction = "mean"
    c.em.rl_loss = "rloo"
    return c
