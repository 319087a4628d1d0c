"""The long-length planning configs (README "Will it fit?") resolve to the published models' shapes.

Golden numbers are written by hand from the models' config.json (Qwen/Qwen2.5-Math-1.5B,
Qwen/Qwen2.5-7B) and their published parameter counts (1,543,714,304 and 7,615,616,512, q/k/v
biases included): a wrong dimension in a config changes the memory figures the README states.
"""
import os

import pytest

from gpg_em.configuration import get
from gpg_em.train.setup import model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QWEN25_MATH_1P5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                        num_kv_heads=2, head_dim=128, tie_embeddings=True, qkv_bias=True, rope_theta=10000.0,
                        max_position_embeddings=4096)
QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                 num_kv_heads=4, head_dim=128, tie_embeddings=False, qkv_bias=True, rope_theta=1e6)
CASES = [("plan_qwen25_math_1p5b_4k", QWEN25_MATH_1P5B, 1_543_714_304, 512, 4096),
         ("plan_qwen7b_3k", QWEN25_7B, 7_615_616_512, 768, 3072)]


@pytest.mark.parametrize("name,dims,published,prompt,completion", CASES, ids=[c[0] for c in CASES])
def test_plan_config_has_the_published_shapes_and_the_gpg_batch(name, dims, published, prompt, completion):
    c = get(os.path.join(ROOT, "configs", f"{name}.py"), [])
    cfg = model_config(c)
    assert {k: getattr(cfg, k) for k in dims} == dims
    assert cfg.model_type == "qwen2" and cfg.dtype == "bfloat16"
    biases = cfg.num_layers * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim  # q/k/v biases
    assert cfg.num_params() + biases == published
    assert (c.algorithm, c.rollout.group_size, c.rollout.prompts_per_step) == ("gpg", 8, 32)
    assert (c.data.max_prompt_tokens, c.rollout.max_new_tokens) == (prompt, completion)
