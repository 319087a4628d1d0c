"""Recipe options around the losses: PPO mini-batch config checks, the per-rollout learning-rate schedule."""
import os

import numpy as np
import pytest

from gpg_em.configuration import ConfigError, get
from gpg_em.train.optim import OptimConfig, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def test_schedule_counts_training_steps_not_optimizer_updates():
    # warmup 0 -> 1 over 2 training steps, 4 updates a step: updates 0-3 at step 0 (lr 0),
    # 4-7 at step 1 (lr 0.5), 8 onwards at step 2 (lr 1).
    _, schedule = make_optimizer(OptimConfig(learning_rate=1.0, warmup_steps=2, total_steps=10, updates_per_step=4))
    np.testing.assert_allclose([float(schedule(n)) for n in range(10)], [0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, 1, 1])


@pytest.mark.parametrize("overrides,needle", [
    ({"algorithm": "gpg", "ppo.mini_batches": 2}, "algorithm gpg has none"),
    ({"algorithm": "em_rl", "em.rl_loss": "gpg", "ppo.mini_batches": 2}, "algorithm em_rl has none"),
    ({"algorithm": "grpo", "ppo.mini_batches": 4}, "whole groups"),  # tiny: 2 groups
    ({"algorithm": "grpo", "ppo.mini_batches": 2, "train.micro_batch_size": 8,
      "train.share_prompts": False}, "does not divide a mini-batch of 4 rows"),
    ({"algorithm": "grpo", "ppo.mini_batches": 0}, "must be a positive integer"),
])
def test_mini_batch_config_is_checked(overrides, needle):
    with pytest.raises(ConfigError, match="ppo.mini_batches|train.micro_batch_size") as e:
        get(TINY, [(k, str(v)) for k, v in overrides.items()])
    assert needle in str(e.value)


@pytest.mark.parametrize("key,value,needle", [
    ("ppo.aggregation", "token_sum", "is not default, seq_mean, token_mean or fixed_length"),
    ("ppo.kl_clamp", "-1.0", "must be >= 0"),
])
def test_ratio_loss_options_are_checked(key, value, needle):
    with pytest.raises(ConfigError, match=key) as e:
        get(TINY, [("algorithm", "rloo"), (key, value)])
    assert needle in str(e.value)


def test_ratio_loss_options_reach_the_objective():
    from gpg_em.train.setup import build_objective
    c = get(TINY, [("algorithm", "dr_grpo"), ("ppo.kl_coef", "0.04"), ("ppo.kl_clamp", "10.0"),
                   ("ppo.entropy_coef", "0.001")])
    assert build_objective(c).kwargs == dict(clip_eps=0.2, kl_coef=0.04, kl_clamp=10.0, entropy_coef=0.001,
                                             max_completion_length=16)
    c = get(TINY, [("algorithm", "em_rl"), ("ppo.aggregation", "token_mean")])
    assert build_objective(c).loss == "rloo" and build_objective(c).kwargs["aggregation"] == "token_mean"


def test_mini_batches_accepted_for_ratio_losses():
    for algorithm in ("grpo", "dr_grpo", "rloo", "em_rl"):
        assert get(TINY, [("algorithm", algorithm), ("ppo.mini_batches", "2")]).ppo.mini_batches == 2


@pytest.mark.parametrize("overrides,key,needle", [
    ({"gpg.scale_batch": True}, "gpg.scale_batch", "needs gpg.std_normalize=true"),
    ({"gpg.age_micro_steps": 4}, "gpg.age_micro_steps", "must split the 2 groups"),
    ({"gpg.age_micro_steps": 2, "gpg.aggregation": "valid_token_mean"}, "gpg.age_micro_steps", "token_mean"),
])
def test_gpg_options_are_checked(overrides, key, needle):
    with pytest.raises(ConfigError, match=key) as e:
        get(TINY, [(k, str(v)) for k, v in overrides.items()])
    assert needle in str(e.value)


def test_gpg_options_reach_the_objective():
    from gpg_em.train.setup import build_objective
    c = get(TINY, [("gpg.std_normalize", "true"), ("gpg.scale_batch", "true"), ("gpg.age_micro_steps", "2")])
    assert build_objective(c).kwargs == dict(std_normalize=True, scale_batch=True, age=True, aggregation="token_mean",
                                             age_micro_steps=2, age_devices=1)
    assert build_objective(get(TINY, [])).kwargs == dict(std_normalize=False, age=True, aggregation="token_mean")


def test_adamw_beta2_default_is_torchs():
    assert OptimConfig().b2 == 0.999 and get(TINY, []).optim.b2 == 0.999


def test_nested_config_files_find_the_configs_package():
    from gpg_em.configuration import _configs_root
    assert _configs_root("/repo/configs/paper/eval/em_inf.py") == "/repo"
    assert _configs_root("/repo/configs/gpg.py") == "/repo"
    assert _configs_root("/home/me/exp/my.py") == "/home/me"  # not under configs/: the grandparent, as before
