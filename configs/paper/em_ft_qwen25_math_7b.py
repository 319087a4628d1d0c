"""EM-FT on Qwen2.5-Math-7B: minimise the token entropy of fresh samples (paper Eq. 2), no labels.

Sampling, lengths, optimizer and batch as the EM-RL presets (configs/paper/em_common.py); EM-FT has
no ratio, so one optimizer step per rollout (no PPO mini-batches, no KL). The paper's Eq. 2 sums
over tokens and averages over samples (em.ft_reduction seq_sum).
"""
from configs.paper.em_common import em_base


def get_config():
    c = em_base()
    c.algorithm = "em_ft"
    c.em.ft_reduction = "seq_sum"
    c.ppo.mini_batches = 1
    c.ppo.kl_coef = 0.0
    c.ppo.entropy_coef = 0.0
    return c
