"""The reproduction study's second task: reasoning-gym `products` (2 factors of 1-2 digits), one seed.

    python experiments/sweep.py experiments/grid_study_products.py    # 9 runs into runs/study_products
    python experiments/aggregate.py runs/study_products --out experiments/results/study_products

Every trained method of `grid_study.py` with the same budget (8 steps x 4
prompts x 4 samples, 64 new tokens, lr 1e-5, held-out greedy pass@1 on 32
fixed problems at steps 0 and 8); only the task changes. SmolLM2-135M-Instruct's
greedy pass@1 on these held-out problems is 0.406 before training, so groups
of 4 mix right and wrong answers more often than on chain_sum.
"""
from grid_study import GRID as CHAIN_SUM

PRODUCTS = {f"data.{s}.{k}": v for s in ("source", "eval_source") for k, v in
            dict(task="products", **{"options.min_terms": 2, "options.max_terms": 2,
                                     "options.min_digits": 1, "options.max_digits": 2}).items()}

GRID = {**CHAIN_SUM, "root": "runs/study_products", "seeds": [0], "fixed": {**CHAIN_SUM["fixed"], **PRODUCTS}}
