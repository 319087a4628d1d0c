"""RLOO: leave-one-out advantages with the clipped surrogate (the EM paper's labelled baseline).

    gpg-em train --config configs/rloo.py --workdir runs/rloo
"""
from configs.base import get_config as base


def get_config():
    c = base()
    c.algorithm = "rloo"
    c.optim.learning_rate = 1e-5
    return c
