"""The GPG paper's ablation (Chu et al. 2025, DESIGN.md) on SmolLM2-135M-Instruct / chain_sum, 3 seeds.

    python experiments/sweep.py experiments/grid_gpg_ablation.py          # 15 runs, in order, here
    python experiments/sweep.py experiments/grid_gpg_ablation.py --print  # or one command per run
    python experiments/aggregate.py runs/gpg_ablation --out experiments/results/gpg_ablation

Rows of the paper (Qwen2.5-Math-7B, avg of 5 benchmarks): GRPO 43.7; GPG
alpha=1 43.9; + std 45.3; alpha=B/(B-M) 47.8; + beta_th=0.6 48.3. Whether std
normalisation stays on in the last two rows is not stated; here it is off.
"""

GRID = {
    "root": "runs/gpg_ablation",
    "seeds": [0, 1, 2],
    "fixed": {"total_steps": 20, "eval_every": 5, "optim.b2": 0.99},  # beta2 as first run (default now 0.999)
    "grids": [
        {"configs": ["configs/grpo.py"]},
        {"configs": ["configs/gpg.py"], "overrides": [
            {"gpg.age": False, "gpg.beta_th": 0.0},                            # alpha = 1
            {"gpg.age": False, "gpg.std_normalize": True, "gpg.beta_th": 0.0},  # + std
            {"gpg.age": True, "gpg.beta_th": 0.0},                             # alpha = B / (B - M)
            {"gpg.age": True, "gpg.beta_th": 0.6},                             # + beta_th resampling
        ]},
    ],
}
