"""Quickstart: GPG (AGE + beta_th) on SmolLM2-135M-Instruct, reasoning-gym chain_sum, on a 2-core CPU.

    gpg-em train --config configs/quickstart.py --workdir runs/quickstart

Budget: 20 steps of 4 prompts x 8 samples, 96 new tokens, greedy held-out
eval on 64 fixed chain_sum problems at steps 0, 10 and 20. The README reports
the measured held-out pass@1 before and after, and the wall time.
"""
from configs.gpg import get_config as gpg


def get_config():
    c = gpg()
    c.total_steps = 20
    c.eval_every = 10
    c.checkpoint_every = 10
    c.rollout.prompts_per_step = 4
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 96
    c.gpg.beta_th = 0.5
    c.gpg.max_rounds = 4  # bounds a step's rollout cost on CPU
    c.optim.learning_rate = 1e-5
    c.optim.b2 = 0.99  # AdamW beta2 of the README's measured run (the default is now torch's 0.999)
    c.eval.num_prompts = 64
    c.eval.max_new_tokens = 96
    c.train.micro_batch_size = 8
    return c
