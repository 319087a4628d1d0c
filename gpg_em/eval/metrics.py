"""Evaluation metrics over k sampled completions per problem: pass@k, avg@k, maj@k.

Pure functions of per-sample correctness (0/1) and extracted answers; the
harness (`gpg_em.eval.harness`) feeds them. Per problem with n samples of
which c are correct:

  pass@k  = 1 - C(n - c, k) / C(n, k)         unbiased (Chen et al. 2021, arXiv 2107.03374, Eq. 1)
  avg@k   = c / n                              mean correctness over the k = n samples
  maj@k   = correct(representative of the largest answer cluster)   (self-consistency,
            Wang et al. 2023, arXiv 2203.11171; clusters by math-verify equivalence)

Benchmark scores are the mean over problems of the per-problem values.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

EqualFn = Callable[[str, str], bool]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples, c of them correct (Chen et al. 2021).

        pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)

    The product form (the paper's numpy reference) never forms the large
    binomials. When n - c < k every k-subset holds a correct sample: 1.
    Example: n=5, c=2, k=2 -> 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(correct_PxN: np.ndarray, k: int) -> float:
    """Mean over problems (rows) of `pass_at_k(n, c_row, k)`; `correct_PxN` is 0/1 [P, n]."""
    correct = np.asarray(correct_PxN, bool)
    n = correct.shape[1]
    return float(np.mean([pass_at_k(n, int(c), k) for c in correct.sum(1)]))


def avg_at_k(correct_PxK: np.ndarray) -> float:
    """avg@k = mean over problems of (1/k) sum_j correct[p, j]: the expected pass@1 of one sample."""
    return float(np.mean(np.asarray(correct_PxK, np.float64)))


def cluster_answers(answers: Sequence[str | None], equal: EqualFn) -> list[list[int]]:
    """Greedy equivalence clusters of `answers`, as lists of sample indices.

    Answers are visited in order; each joins the first existing cluster whose
    representative (its first member) it equals, else it opens a new cluster.
    `equal(rep, answer)` is tried only when the strings differ (identical
    strings are equal without calling it). None (nothing extracted) abstains:
    it joins no cluster. Clusters come out ordered by first occurrence.
    Greedy, because math-verify equivalence need not be transitive.
    """
    clusters: list[list[int]] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        for cluster in clusters:
            rep = answers[cluster[0]]
            if a == rep or equal(rep, a):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    return clusters


def majority_index(answers: Sequence[str | None], equal: EqualFn) -> int | None:
    """Index of the voted representative: the first member of the largest cluster.

    Tie rule (deterministic): among clusters of equal size, the one whose first
    member comes earliest wins. None when every answer abstains.
    """
    clusters = cluster_answers(answers, equal)
    if not clusters:
        return None
    best = max(clusters, key=len)  # max() keeps the first of equal maxima: earliest first occurrence
    return best[0]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[float], equal: EqualFn) -> float:
    """maj@k of one problem: correctness of the majority representative (0.0 when all abstain).

    `correct[i]` is sample i's correctness under the task's own scorer, so the
    vote only picks *which* sample is graded; grading is never re-done here.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj_at_k: {len(answers)} answers but {len(correct)} correctness values")
    i = majority_index(answers, equal)
    return 0.0 if i is None else float(correct[i])


def mean_maj_at_k(answers_PxK: Sequence[Sequence[str | None]], correct_PxK: Sequence[Sequence[float]],
                  equal: EqualFn) -> float:
    """Mean over problems of `maj_at_k` (problems may have different numbers of samples)."""
    return float(np.mean([maj_at_k(a, c, equal) for a, c in zip(answers_PxK, correct_PxK)]))


def pass_k_values(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, then n itself (1, 2, 4, ..., n)."""
    ks = [1 << i for i in range(max(n, 1).bit_length()) if (1 << i) < n]
    return ks + [n]
