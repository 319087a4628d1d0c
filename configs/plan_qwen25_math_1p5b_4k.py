"""Qwen2.5-Math-1.5B shapes (random init) on the GPG recipe at 4k-token completions: for `gpg-em plan`.

    gpg-em plan --config configs/plan_qwen25_math_1p5b_4k.py --mesh 1,8,1 --devices 8

configs/paper/gpg_qwen25_math_7b.py's GPG batch (32 prompts x G=8 = 256 rows a step, one group per
update micro-batch, AGE) with 4096-token completions and the 1.5B recipe's 512-token prompts
(configs/paper/gpg_r1_distill_qwen_1p5b.py), and the dimensions of Qwen2.5-Math-1.5B's config.json:
hidden 1536, 28 layers, 12 query / 2 KV heads of 128, MLP 8960, vocabulary 151936, tied
embeddings, q/k/v bias, RoPE theta 10000, 4096 positions; bfloat16. The published model's context
is 4096 tokens, so `gpg-em train` refuses 512 + 4096 with it (3584-token completions fit, as the
open-rs recipe trains): these figures bound that case from above. README "Will it fit?" lists the
settings that fit each target.
"""
import ml_collections

from configs.paper.gpg_qwen25_math_7b import get_config as gpg_7b


def get_config():
    c = gpg_7b()
    c.model.name = "tiny"
    c.model.tiny = ml_collections.ConfigDict(dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
        num_kv_heads=2, head_dim=128, model_type="qwen2", qkv_bias=True, tie_embeddings=True,
        rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=4096))
    c.data.max_prompt_tokens = 512
    c.rollout.max_new_tokens = 4096
    return c
