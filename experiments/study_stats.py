"""Bootstrap intervals for the study: means over (seed, problem) score tables, paired differences.

A method's scores form a table `scores_sp[seed, problem]` (greedy correctness in {0, 1},
or the fraction of k samples correct for avg@k). Its estimate is the grand mean. The
95% interval is the percentile bootstrap over *both* sources of variation: each replicate
draws `seeds` seeds with replacement and `problems` problems with replacement
(independently) and takes the mean of the resampled table:

    theta*_b = mean_{i, j} scores_sp[s_b[i], p_b[j]],   CI = [q_2.5(theta*), q_97.5(theta*)]

A paired difference of two methods uses the same replicate indices for both tables (the
seeds of a study run the same prompts, and the problems are shared), i.e. it bootstraps
the difference table `a_sp - b_sp`. A reference without seeds (the base model) is
broadcast over the seed axis. An interval that excludes 0 is called real at this scale.
"""
from __future__ import annotations

import dataclasses

import numpy as np

REPLICATES = 10_000


@dataclasses.dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    seeds: int
    problems: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def text(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def replicate_indices(seeds: int, problems: int, replicates: int = REPLICATES,
                      rng: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Resampling indices: ([replicates, seeds], [replicates, problems]), drawn with replacement."""
    g = np.random.default_rng(rng)
    return g.integers(0, seeds, (replicates, seeds)), g.integers(0, problems, (replicates, problems))


def bootstrap_mean(scores_sp: np.ndarray, replicates: int = REPLICATES, rng: int = 0,
                   level: float = 0.95) -> Interval:
    """Grand mean of `scores_sp [seeds, problems]` with its two-way percentile bootstrap interval."""
    scores_sp = np.asarray(scores_sp, np.float64)
    if scores_sp.ndim != 2 or 0 in scores_sp.shape:
        raise ValueError(f"scores must be a non-empty [seeds, problems] table, got shape {scores_sp.shape}")
    n_s, n_p = scores_sp.shape
    s_rb, p_rb = replicate_indices(n_s, n_p, replicates, rng)
    # mean over a resampled table = mean over resampled seeds of (the seed's mean over resampled problems)
    theta_r = np.stack([scores_sp[s_rb[r]][:, p_rb[r]].mean() for r in range(replicates)])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(theta_r, [tail, 1.0 - tail])
    return Interval(float(scores_sp.mean()), float(low), float(high), n_s, n_p)


def paired_difference(a_sp: np.ndarray, b_sp: np.ndarray, **kwargs) -> Interval:
    """mean(a) - mean(b) with the paired bootstrap interval; `b` may be [problems] or [1, problems]."""
    a_sp = np.asarray(a_sp, np.float64)
    b_sp = np.asarray(b_sp, np.float64)
    if b_sp.ndim == 1:
        b_sp = b_sp[None, :]
    if b_sp.shape[0] == 1:
        b_sp = np.broadcast_to(b_sp, a_sp.shape)
    if a_sp.shape != b_sp.shape:
        raise ValueError(f"paired tables differ in shape: {a_sp.shape} vs {b_sp.shape} (same seeds and problems)")
    return bootstrap_mean(a_sp - b_sp, **kwargs)
