"""The update step's shapes: the ladder of packed widths and the prompt widths a run can meet.

An update batch is [B, P] prompts and, with `train.pack`, a pack_index of
[lanes, L] slots; each distinct (P, L) is one compiled program. P is a prompt
bucket (`rollout.sampler.prompt_bucket`: powers of two from
`rollout.min_prompt_width`). L is the smallest rung of a geometric ladder that
holds the step's longest lane (`shared_prefix.packing_index`):

    r_1 = m,   r_(k+1) = max(r_k + m, m * ceil(g * r_k / m))

(m = `train.pack_multiple`, g = `train.pack_growth` >= 1), the rungs below the
cap R * N (a lane's rows x `rollout.max_new_tokens`) and the cap itself. g = 1
gives every multiple of m; m = 128, g = 1.25 gives 128, 256, 384, 512, 640,
896, 1152, 1536, 1920, 2432, 3072, ... For a need n the width w satisfies

    n <= w <= m * ceil(g * n / m)

(the rung after r_k < n is at most m * ceil(g * r_k / m) or r_k + m, both
<= m * ceil(g * n / m)): at most a factor g plus one multiple of padding, which
is exact (empty slots) and only costs compute.
"""
from __future__ import annotations

import math

from gpg_em.rollout.sampler import prompt_bucket


def _up(x: float, m: int) -> int:
    """x rounded up to a multiple of m."""
    return m * math.ceil(x / m - 1e-12)  # 1e-12: g * r exactly on a multiple stays there despite float error


def ladder(multiple: int, growth: float, cap: int) -> list[int]:
    """The packed widths (module docstring): rungs below `cap`, then `cap`."""
    if multiple < 1 or growth < 1 or cap < 1:
        raise ValueError(f"ladder needs multiple >= 1, growth >= 1, cap >= 1; got {multiple}, {growth}, {cap}")
    rungs, r = [], multiple
    while r < cap:
        rungs.append(r)
        r = max(r + multiple, _up(growth * r, multiple))
    return rungs + [cap]


def ladder_width(need: int, rungs: list[int]) -> int:
    """The smallest rung >= need (the last rung, the cap, when none is: a lane never needs more)."""
    return next((r for r in rungs if r >= need), rungs[-1])


def prompt_widths(min_prompt_width: int, max_prompt_tokens: int) -> list[int]:
    """The prompt buckets of prompts of 1 ... max_prompt_tokens tokens: powers of two from the first."""
    first, last = prompt_bucket(1, min_prompt_width), prompt_bucket(max(max_prompt_tokens, 1), min_prompt_width)
    widths = [first]
    while widths[-1] < last:
        widths.append(widths[-1] * 2)
    return widths


def _listed(xs: list[int], most: int = 8) -> str:
    return ", ".join(map(str, xs)) if len(xs) <= most else ", ".join(map(str, xs[:most - 2])) + f", ..., {xs[-1]}"


def shapes_line(rungs: list[int] | None, prompts: list[int], ahead: bool) -> str:
    """One line for the log: how many update shapes the run can meet (rungs None: `train.pack` off, one
    completion width)."""
    packed = 1 if rungs is None else len(rungs)
    n = lambda count, what: f"{count} {what}{'s' if count != 1 else ''}"
    packed_part = "" if rungs is None else f" x {n(packed, 'packed width')} ({_listed(rungs)})"
    return (f"gpg-em: the update can meet {n(packed * len(prompts), 'shape')}: {n(len(prompts), 'prompt width')} "
            f"({_listed(prompts)}){packed_part}; compile ahead {'on' if ahead else 'off'}")
