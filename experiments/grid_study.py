"""The reproduction study at 2-core-CPU scale: every trained method of both papers, one budget.

    python experiments/sweep.py experiments/grid_study.py            # 9 runs, in order, here
    python experiments/aggregate.py runs/study --out experiments/results/study

SmolLM2-135M-Instruct on reasoning-gym chain_sum (2-3 terms, 1-2 digits), the
same budget for every method: 8 steps x 4 prompts x 4 samples, 64 new tokens,
learning rate 1e-5 (AdamW, constant), held-out greedy pass@1 on 32 fixed
problems at steps 0 and 8. Rows:

* the GPG paper's ablation: GRPO, Dr.GRPO, GPG alpha=1, GPG with AGE, GPG with
  AGE and beta_th = 0.6 (at most 3 rollout rounds per step);
* the EM paper's table: EM-FT, EM-RL-token, EM-RL-trajectory (no labels)
  against RLOO with the labels.

The base model's decoding-only rows (greedy, self-consistency@4, EM-INF,
adaptive temperature) come from `experiments/study_decoding.sh`.
"""

GRID = {
    "root": "runs/study",
    "seeds": [0, 1, 2],
    "fixed": {"total_steps": 8, "eval_every": 8, "checkpoint_every": 8,
              "rollout.prompts_per_step": 4, "rollout.group_size": 4, "rollout.max_new_tokens": 64,
              "eval.num_prompts": 32, "eval.max_new_tokens": 64, "optim.learning_rate": 1e-5,
              "train.micro_batch_size": 8,
              "optim.b2": 0.99},  # the recorded runs' AdamW beta2 (the default was 0.99 then; now 0.999)
    "grids": [
        {"configs": ["configs/grpo.py", "configs/dr_grpo.py", "configs/rloo.py", "configs/em_ft.py"]},
        {"configs": ["configs/gpg.py"], "overrides": [
            {"gpg.age": False, "gpg.beta_th": 0.0},  # alpha = 1
            {"gpg.age": True, "gpg.beta_th": 0.0},  # alpha = B / (B - M)
            {"gpg.age": True, "gpg.beta_th": 0.6, "gpg.max_rounds": 3},  # + beta_th resampling
        ]},
        {"configs": ["configs/em_rl.py"], "overrides": [{"em.rl_kind": "token"}, {"em.rl_kind": "trajectory"}]},
    ],
}
