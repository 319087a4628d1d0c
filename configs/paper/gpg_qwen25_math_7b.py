"""GPG on Qwen2.5-Math-7B as the GPG paper's 7B table trains it (AMAP-ML/GPG, open-r1).

Source: AMAP-ML/GPG `open-r1/train.sh` (flags override the recipe) and
`open-r1/recipes/Qwen2.5-Math-7B/grpo/config_simple_rl_math_l35_v1.yaml`:

    dataset   SimpleRL-Zoo-Data simplelr_qwen_level3to5 train.parquet   (yaml dataset_name/config)
    lengths   --max_prompt_length 768 --max_completion_length 2048      (train.sh; the yaml says 1024 / 3000)
    sampling  num_generations 8, temperature 1.0, top_p 1.0             (yaml)
    loss      --scale_rewards False (no std), --adjust_gd (AGE), --min_inverse_alpha 0.5 (beta_th), beta 0.0
    optim     learning_rate 1e-6, constant_with_warmup, warmup_ratio 0.03 (yaml); AdamW (0.9, 0.999),
              weight decay 0, max_grad_norm 1.0 (Hugging Face Trainer defaults)
    batch     per_device_train_batch_size 8 completions x --gradient_accumulation_steps 4 (train.sh):
              on 8 GPUs 8 x 8 x 4 / 8 = 32 prompts of 8 samples per optimizer step
    epochs    --num_train_epochs 5 (train.sh): total_steps = 5 * len(data) / 32; set it for your copy

Not reproduced: the recipe feeds the dataset's own pre-formatted prompt (`instruction[0].content`);
here the question goes through the tokenizer's chat template with the boxed-answer instruction.
The official code computes AGE per gradient-accumulation micro-step and device; for that form add
--config.gpg.age_micro_steps=4 --config.gpg.age_devices=8 (the default is the whole batch).

    gpg-em train --config configs/paper/gpg_qwen25_math_7b.py --workdir runs/gpg_qwen25_math_7b \\
        --config.model.name=/path/Qwen2.5-Math-7B --config.data.source.path=/path/train.parquet
"""
from configs.paper.common import paper_base


def get_config():
    c = paper_base("models/Qwen2.5-Math-7B", "datas/SimpleRL-Zoo-Data/simplelr_qwen_level3to5/train.parquet")
    c.algorithm = "gpg"
    c.data.max_prompt_tokens = 768
    c.rollout.max_new_tokens = 2048
    c.rollout.group_size = 8
    c.rollout.prompts_per_step = 32
    c.rollout.temperature = 1.0
    c.gpg.std_normalize = False
    c.gpg.age = True
    c.gpg.beta_th = 0.5
    c.optim.learning_rate = 1e-6
    c.optim.schedule = "constant"
    c.total_steps = 1000  # 5 epochs of your data at 32 prompts a step: set it
    c.optim.warmup_steps = 30  # warmup_ratio 0.03 of total_steps
    c.train.micro_batch_size = 8  # one group of 8 at a time through the update (memory; exact)
    return c
