"""The EM paper's training setup on verl, shared by the EM-FT and EM-RL presets.

Source: the EM paper (Agarwal et al. 2025, arXiv 2505.15134) trains EM-RL with verl's RLOO. The
released repository (shivamag125/EM_PT, commit 91cda30) ships only its evaluation scripts
(`evaluation_scripts/*.sh`, `eval/`), so the values below could not be read from a training file
there; they are the paper's stated setup and verl's defaults (verl `ppo_trainer.yaml`):

    data.train_batch_size 512 prompts, rollout.n 4            -> prompts_per_step 512, group_size 4
    actor.ppo_mini_batch_size 128, ppo_epochs 1                -> ppo.mini_batches 4 (4 optimizer steps)
    actor.loss_agg_mode token-mean                             -> ppo.aggregation token_mean
    actor.use_kl_loss, kl_loss_coef 0.001, kl_loss_type low_var_kl (clamped to [-10, 10])
                                                               -> ppo.kl_coef 0.001, ppo.kl_clamp 10
    actor.entropy_coeff 0.001 (verl's default)                 -> ppo.entropy_coef 0.001
    actor.clip_ratio 0.2, optim.lr 1e-6, weight_decay 0.01, grad_clip 1.0, AdamW (0.9, 0.999)
    rollout.temperature 1.0

Not stated in any file we could read: prompt/response lengths (here 1024 / 3072) and the dataset
(here a local `datas/em_math_prompts.parquet`); set them for your run.
"""
from configs.paper.common import paper_base


def em_base():
    c = paper_base("models/Qwen2.5-Math-7B", "datas/em_math_prompts.parquet")
    c.data.max_prompt_tokens = 1024
    c.rollout.max_new_tokens = 3072
    c.rollout.prompts_per_step = 512
    c.rollout.group_size = 4
    c.rollout.temperature = 1.0
    c.ppo.clip_eps = 0.2
    c.ppo.mini_batches = 4
    c.ppo.inner_epochs = 1
    c.ppo.aggregation = "token_mean"
    c.ppo.kl_coef = 0.001
    c.ppo.kl_clamp = 10.0
    c.ppo.entropy_coef = 0.001
    c.optim.learning_rate = 1e-6
    c.optim.weight_decay = 0.01
    c.optim.schedule = "constant"
    c.total_steps = 100
    c.train.micro_batch_size = 8
    return c
