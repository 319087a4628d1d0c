"""GPG on DeepSeek-R1-Distill-Qwen-1.5B as the GPG paper's 1.5B table trains it (open-rs setup).

Source: AMAP-ML/GPG `open-rs/train.sh` (accelerate --num_processes=16, src/open_r1/gpg.py
--config recipes/gpg.yaml) and `open-rs/recipes/gpg.yaml`:

    dataset   datas/open-rs/open-s1 exported to a local file (fields found automatically:
              question/problem, answer/solution; set data.source.*_field otherwise)   dataset_name
    prompt    the recipe's system_prompt (think / answer tags, \\boxed{})    system_prompt
    lengths   max_prompt_length 512, max_completion_length 3584
    sampling  num_generations 6, temperature 0.7
    optim     learning_rate 1e-6, cosine_with_min_lr (min_lr_rate 0.1), warmup_ratio 0.1, max_steps 100
    batch     per_device_train_batch_size 6 x 16 processes x gradient_accumulation_steps 4 / 6
              = 64 prompts of 6 samples per optimizer step
    loss      open-rs `GPGTrainer.compute_loss`: -logp * A, token mean, no AGE, no KL; its advantages
              are those of the pinned TRL GRPOTrainer (open-rs setup.py, trl@69ad852): divided by the
              group std + 1e-4

Not reproduced: the reward (format 1.0 + cosine length-scaled accuracy 2.0) is approximated by
math-verify accuracy (2.0) + the format reward (1.0) on <think>/<answer> tags; the cosine
schedule here decays to 0, not to 0.1 x lr.
"""
from configs.paper.common import file_source, paper_base, rewards

SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer, "
    "and put your final answer within \\boxed{} . The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. Note that respond by English, NOT use other languages.")

THINK_ANSWER = r"(?s)<think>.*?</think>\s*<answer>.*?</answer>"


def get_config():
    c = paper_base("models/DeepSeek-R1-Distill-Qwen-1.5B", "datas/open-rs/open-s1/train.parquet")
    c.algorithm = "gpg"
    c.data.system_prompt = SYSTEM_PROMPT
    c.data.instruction = ""
    c.data.max_prompt_tokens = 512
    c.rollout.max_new_tokens = 3584
    c.rollout.group_size = 6
    c.rollout.prompts_per_step = 64
    c.rollout.temperature = 0.7
    c.gpg.std_normalize = True
    c.gpg.age = False
    c.reward = rewards(c.reward, ["math", "format"], [2.0, 1.0], {"format": {"regex": THINK_ANSWER}})
    c.optim.learning_rate = 1e-6
    c.optim.schedule = "cosine"
    c.total_steps = 100
    c.optim.warmup_steps = 10
    c.train.micro_batch_size = 6
    c.mesh.shape = (-1, 1, 1)  # 1.5B: parameters and AdamW state fit each device; data parallel
    c.data.eval_source = file_source("datas/math500/test.jsonl")
    return c
