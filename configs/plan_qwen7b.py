"""A Qwen2.5-7B-sized policy (random init, shapes only): for `gpg-em plan` on a pod-sized mesh.

    gpg-em plan --config configs/plan_qwen7b.py --mesh 1,2,4 --devices 8

Dimensions of Qwen2.5-7B (hidden 3584, 28 layers, 28 query / 4 KV heads of
128, MLP 18944, vocabulary 152064, q/k/v bias, untied head) in bfloat16, with
GPG's rollout and batch settings from configs/gpg.py. Trainable with a byte
tokenizer, but meant for planning memory.
"""
import ml_collections

from configs.gpg import get_config as gpg


def get_config():
    c = gpg()
    c.model.name = "tiny"
    c.model.dtype = "bfloat16"
    c.model.tiny = ml_collections.ConfigDict(dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, model_type="qwen2", qkv_bias=True, rope_theta=1e6, rms_norm_eps=1e-6))
    return c
