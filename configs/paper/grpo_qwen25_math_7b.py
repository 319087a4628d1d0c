"""The GRPO baseline of the GPG paper's 7B comparison, as its recipe runs it (TRL 0.16 GRPOTrainer).

Source: AMAP-ML/GPG `open-r1/recipes/Qwen2.5-Math-7B/grpo/config_simple_rl.yaml` with
`open-r1/setup.py` pinning trl==0.16.0, whose GRPOConfig defaults fill what the recipe leaves unset:

    beta      0.04 (TRL 0.16 default; the recipe has no `beta` line) -> ppo.kl_coef, k3 KL, no clamp
    loss      TRL 0.16: clipped ratio (epsilon 0.2), num_iterations 1 (ratio 1), mean over each
              completion's tokens then over completions -> ppo.aggregation seq_mean; std-normalised
              advantages (std + 1e-4)
    dataset   datas/MATH-lighteval exported to a local file (problem / solution)   dataset_name
    lengths   max_prompt_length 512, max_completion_length 1024; num_generations 8
    optim     learning_rate 3e-6, cosine, warmup_ratio 0.1; AdamW (0.9, 0.999), no weight decay
    batch     per_device_train_batch_size 16 x gradient_accumulation_steps 4 on 8 GPUs / 8
              = 64 prompts of 8 samples per optimizer step
    rewards   accuracy 1.0 + format 1.0 (<think> ... </think> tags, the recipe's system_prompt)

`configs/grpo.py` keeps kl_coef 0: it is the generic GRPO of this project (TRL's current default,
beta 0.0) and the recorded study runs used it; this preset is the paper's baseline.
"""
from configs.paper.common import paper_base, rewards

SYSTEM_PROMPT = (
    "You are a helpful AI Assistant, designed to provided well-reasoned and detailed responses. You FIRST think "
    "about the reasoning process as an internal monologue and then provide the user with the answer. The "
    "reasoning process MUST BE enclosed within <think> and </think> tags.")
THINK = r"(?s)^<think>.*?</think>"


def get_config():
    c = paper_base("models/Qwen2.5-Math-7B", "datas/MATH-lighteval/train.parquet")
    c.algorithm = "grpo"
    c.data.system_prompt = SYSTEM_PROMPT
    c.data.max_prompt_tokens = 512
    c.rollout.max_new_tokens = 1024
    c.rollout.group_size = 8
    c.rollout.prompts_per_step = 64
    c.rollout.temperature = 0.9  # GRPOConfig's default in TRL 0.14-0.16 as we recall it (later 1.0): check
    c.ppo.clip_eps = 0.2
    c.ppo.kl_coef = 0.04
    c.ppo.aggregation = "seq_mean"
    c.reward = rewards(c.reward, ["math", "format"], [1.0, 1.0], {"format": {"regex": THINK}})
    c.optim.learning_rate = 3e-6
    c.optim.schedule = "cosine"
    c.total_steps = 1000  # one epoch of your data at 64 prompts a step: set it
    c.optim.warmup_steps = 100  # warmup_ratio 0.1
    c.train.micro_batch_size = 8
    return c
