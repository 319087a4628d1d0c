"""Every paper preset in configs/paper/ loads, validates, names its source and builds its run pieces.

Each preset's objective, step options, optimizer and mesh are built (cheap); `plan` (which compiles
the update step and the sampler, ~40 s of CPU each here) runs on two presets that cover both
layouts: GPG on an FSDP mesh and EM-RL with PPO mini-batches. Planning uses a tiny Qwen2
config.json (the presets' architecture family) and short lengths: it checks the keys, mesh and
batch layout, not the 7B figures (README "Paper presets" has those).
"""
import glob
import json
import os

import pytest

from gpg_em.configuration import get

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "paper", "*.py"))
                 if "def get_config" in open(p, encoding="utf-8").read())
TINY_QWEN2 = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
              "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1e6,
              "max_position_embeddings": 256, "tie_word_embeddings": False, "eos_token_id": 2}


def test_there_is_a_preset_per_published_recipe():
    names = {os.path.basename(p)[:-3] for p in PRESETS}
    assert {"gpg_qwen25_math_7b", "gpg_r1_distill_qwen_1p5b", "grpo_qwen25_math_7b", "em_ft_qwen25_math_7b",
            "em_rl_token_qwen25_math_7b", "em_rl_sequence_qwen25_math_7b"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: os.path.basename(p)[:-3])
def test_preset_loads_with_local_paths_and_cites_a_source(path):
    c = get(path, [("model.name", "/ckpt/model"), ("data.source.path", "/data/train.jsonl")])
    assert c.model.name == "/ckpt/model" and c.data.source.kind in ("jsonl", "parquet")
    assert c.model.dtype == "bfloat16" and c.data.source.path == "/data/train.jsonl"
    text = open(path, encoding="utf-8").read()
    cited = text + (open(os.path.join(ROOT, "configs", "paper", "em_common.py"), encoding="utf-8").read()
                    if "em_common" in text else "")
    assert "Source" in cited and ("AMAP-ML/GPG" in cited or "EM_PT" in cited)


def _small(path, model_dir):
    (model_dir / "config.json").write_text(json.dumps(TINY_QWEN2))
    return get(path, [("model.name", str(model_dir)), ("model.dtype", "float32"), ("rollout.max_new_tokens", "8"),
                      ("data.max_prompt_tokens", "8"), ("rollout.min_prompt_width", "8"),
                      ("rollout.prompts_per_step", "4"), ("train.micro_batch_size", "0")])


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: os.path.basename(p)[:-3])
def test_preset_builds_its_objective_optimizer_and_mesh(path, tmp_path):
    from gpg_em.parallel import make_mesh
    from gpg_em.train.optim import OptimConfig, make_optimizer
    from gpg_em.train.setup import batch_keys, build_objective, updates_per_step
    from gpg_em.train.step import StepConfig
    c = get(path, [])
    objective = build_objective(c)
    sc = StepConfig.from_config(c, objective)
    keys = batch_keys(c, objective, sc)
    make_optimizer(OptimConfig(total_steps=c.total_steps, updates_per_step=updates_per_step(c, objective),
                               **c.optim.to_dict()))
    assert make_mesh(tuple(c.mesh.shape)).size >= 1
    if objective.uses_ratio and c.ppo.mini_batches > 1:  # EM-RL as released: old log-probs, 4 steps a rollout
        assert "old_logprobs" in keys and updates_per_step(c, objective) == c.ppo.mini_batches
    if c.ppo.kl_coef > 0 and objective.uses_ratio:
        assert "ref_logprobs" in keys


@pytest.mark.parametrize("name", ["gpg_qwen25_math_7b", "em_rl_token_qwen25_math_7b"])
def test_preset_plans_on_its_mesh(name, tmp_path):
    from gpg_em.train.plan import plan
    c = _small(os.path.join(ROOT, "configs", "paper", name + ".py"), tmp_path)
    result = plan(c, tuple(c.mesh.shape))
    assert result["devices"] >= 1 and result["update"]["total"] > 0 and result["sampler"]["total"] > 0
