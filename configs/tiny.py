"""A tiny random model with a byte tokenizer on chain_sum: for tests and smoke runs (seconds).

    gpg-em train --config configs/tiny.py --workdir /tmp/tiny
"""
from configs.base import get_config as base


def get_config():
    c = base()
    c.model.name = "tiny"
    c.total_steps = 4
    c.checkpoint_every = 2
    c.eval_every = 2
    c.rollout.prompts_per_step = 2
    c.rollout.group_size = 4
    c.rollout.max_new_tokens = 16
    c.data.max_prompt_tokens = 512
    c.data.eval_source.size = 4
    c.eval.num_prompts = 4
    c.eval.max_new_tokens = 16
    c.optim.learning_rate = 1e-3
    return c
