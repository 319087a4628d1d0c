"""GPG as in the paper's final setting: AGE (alpha = B/(B-M)) and beta_th resampling.

    gpg-em train --config configs/gpg.py --workdir runs/gpg

Deltas from base: beta_th 0.5 (the reference default; the ablation's best is
0.6). Expect held-out chain_sum reward to rise over ~20 steps (see README).
"""
from configs.base import get_config as base


def get_config():
    c = base()
    c.algorithm = "gpg"
    c.gpg.age = True
    c.gpg.beta_th = 0.5
    c.optim.learning_rate = 1e-5
    return c
