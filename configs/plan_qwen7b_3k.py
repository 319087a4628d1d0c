"""Qwen2.5-7B shapes (random init) on the GPG recipe at 3k-token completions: for `gpg-em plan`.

    gpg-em plan --config configs/plan_qwen7b_3k.py --mesh 1,8,1 --devices 8

configs/paper/gpg_qwen25_math_7b.py (GPG: 32 prompts x G=8 = 256 rows a step, prompts up to 768
tokens, padded to the 1024 bucket, AGE, one group per update micro-batch) with 3072-token
completions (the recipe's yaml says 3000), and Qwen2.5-7B's dimensions as configs/plan_qwen7b.py
(hidden 3584, 28 layers, 28 query / 4 KV heads of 128, MLP 18944, vocabulary 152064, q/k/v bias,
untied head) in bfloat16. README "Will it fit?" lists the settings that fit each target.
"""
from configs.paper.gpg_qwen25_math_7b import get_config as gpg_7b
from configs.plan_qwen7b import get_config as qwen7b


def get_config():
    c = gpg_7b()
    c.model = qwen7b().model
    c.rollout.max_new_tokens = 3072
    return c
