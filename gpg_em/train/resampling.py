"""GPG's valid-ratio threshold resampling (beta_th), on host-side numpy rollouts.

A *round* is one rollout of `n_groups_r` prompts x `group_size` samples: a dict
of arrays sharing the leading dimension B_r = n_groups_r * group_size, with at
least "rewards" [B_r]; any other keys (tokens, masks, log-probs, prompt ids)
travel with their rows. A group is valid when its rewards are not all equal
(exactly the definition `gpg_em.losses.advantages.group_advantages` uses).

While the valid groups accumulated over rounds number fewer than
beta_th * groups_per_batch, the trainer rolls out fresh prompts again, at most
`max_rounds` times. The batch is the accumulated valid groups in round order,
padded with the invalid groups of the LAST round, cut to groups_per_batch
whole groups. When the round limit is hit the batch is built from what there
is and `hit_round_limit` is reported: this never raises.

Edge cases:
- Cut: when more than groups_per_batch valid groups accumulated, the earliest
  ones are kept (round order, then group order inside a round).
- Short batch: when the valid groups plus the last round's invalid groups are
  fewer than groups_per_batch (only possible when rounds hold fewer than
  groups_per_batch groups, e.g. an exhausted prompt source), the batch is
  returned with fewer groups and `short=True`; nothing is duplicated or
  invented. Its leading dimension differs, so a jitted step retraces: the
  trainer should skip or pad it, and log it.
- `inverse_alpha` in the info is computed on the assembled batch,
  n_valid_in_batch / n_groups_in_batch, i.e. the value the GPG loss computes
  on it. For a full batch this is min(1, n_valid_total / groups_per_batch).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

Round = Mapping[str, Any]


def valid_group_mask(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """[n_groups] bool: the group's rewards are not all equal. group_size 1: all False."""
    # float32, as the loss sees them: validity here and in the loss must agree.
    r = np.asarray(rewards, dtype=np.float32)
    if r.ndim != 1 or group_size < 1 or r.shape[0] % group_size:
        raise ValueError(f"rewards of shape {r.shape} do not split into groups of {group_size}")
    r_NxG = r.reshape(-1, group_size)
    if r_NxG.shape[0] == 0:
        return np.zeros((0,), dtype=bool)
    return r_NxG.max(axis=1) > r_NxG.min(axis=1)


def count_valid_groups(rewards: np.ndarray, group_size: int) -> int:
    """How many groups of `group_size` consecutive rewards are not all equal."""
    return int(valid_group_mask(rewards, group_size).sum())


def _check_beta(beta_th: float, groups_per_batch: int) -> None:
    if not 0.0 <= beta_th <= 1.0:
        raise ValueError(f"beta_th must lie in [0, 1], got {beta_th}")
    if groups_per_batch < 1:
        raise ValueError(f"groups_per_batch must be >= 1, got {groups_per_batch}")


def needs_more(rounds: Sequence[Round], group_size: int, groups_per_batch: int,
               beta_th: float) -> bool:
    """True while accumulated valid groups < beta_th * groups_per_batch.

    With no round yet it is True whatever beta_th is: there is nothing to train on.
    """
    _check_beta(beta_th, groups_per_batch)
    if not rounds:
        return True
    n_valid = sum(count_valid_groups(r["rewards"], group_size) for r in rounds)
    return n_valid < beta_th * groups_per_batch


def _round_rows(round_: Round, keys: tuple[str, ...], group_size: int) -> int:
    """Checks a round's keys and leading dimensions; returns B_r."""
    if "rewards" not in round_:
        raise ValueError("each round needs a 'rewards' array")
    if tuple(sorted(round_)) != keys:
        raise ValueError(f"round keys {sorted(round_)} differ from the first round's {list(keys)}")
    n = len(round_["rewards"])
    for k in keys:
        if np.shape(round_[k])[:1] != (n,):
            raise ValueError(f"round[{k!r}] has shape {np.shape(round_[k])}; expected leading dim {n}")
    if n % group_size:
        raise ValueError(f"round of {n} rows does not split into groups of {group_size}")
    return n


def _group_rows(groups: np.ndarray, group_size: int) -> np.ndarray:
    """Row indices of whole groups, in group order."""
    return (groups[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)


def assemble_batch(rounds: Sequence[Round], group_size: int,
                   groups_per_batch: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The training batch from rollout rounds, and info about how it was built.

    Valid groups of every round in round order, then invalid groups of the
    last round, cut to `groups_per_batch` whole groups (see the module doc for
    short batches). info: n_rounds, n_groups, n_valid_groups (in the batch),
    n_valid_groups_total (accumulated), n_padding_groups, round_valid_groups,
    inverse_alpha (on the batch), short.
    """
    if not rounds:
        raise ValueError("assemble_batch needs at least one round")
    if groups_per_batch < 1:
        raise ValueError(f"groups_per_batch must be >= 1, got {groups_per_batch}")
    keys = tuple(sorted(rounds[0]))
    for r in rounds:
        _round_rows(r, keys, group_size)
    valid = [valid_group_mask(r["rewards"], group_size) for r in rounds]
    # (round index, selected group indices) segments in batch order.
    segments, budget = [], groups_per_batch
    for i, v in enumerate(valid):
        take = np.flatnonzero(v)[:budget]
        segments.append((i, take))
        budget -= len(take)
    n_valid = groups_per_batch - budget
    padding = np.flatnonzero(~valid[-1])[:budget]
    segments.append((len(rounds) - 1, padding))
    batch = {k: np.concatenate([np.asarray(rounds[i][k])[_group_rows(g, group_size)]
                                for i, g in segments]) for k in keys}
    n_groups = n_valid + len(padding)
    info = {
        "n_rounds": len(rounds),
        "n_groups": n_groups,
        "n_valid_groups": n_valid,
        "n_valid_groups_total": int(sum(v.sum() for v in valid)),
        "n_padding_groups": len(padding),
        "round_valid_groups": tuple(int(v.sum()) for v in valid),
        "inverse_alpha": min(1.0, n_valid / n_groups) if n_groups else 0.0,
        "short": n_groups < groups_per_batch,
    }
    return batch, info


def resample(rollout_fn: Callable[[int], Round], group_size: int, groups_per_batch: int,
             beta_th: float, max_rounds: int = 20) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Rolls out `rollout_fn(round_index)` until the beta_th threshold or `max_rounds`.

    At least one round always runs (beta_th = 0 means exactly one). Returns
    `assemble_batch`'s batch and info, plus `hit_round_limit`: True when the
    threshold was still unmet after `max_rounds` rounds (the batch is then
    built from what there is; this is logged, not raised).
    """
    _check_beta(beta_th, groups_per_batch)
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    rounds: list[Round] = []
    while len(rounds) < max_rounds and needs_more(rounds, group_size, groups_per_batch, beta_th):
        rounds.append(rollout_fn(len(rounds)))
    batch, info = assemble_batch(rounds, group_size, groups_per_batch)
    info["hit_round_limit"] = needs_more(rounds, group_size, groups_per_batch, beta_th)
    return batch, info
