"""Reward functions for trainer tests, referenced as `stub_rewards:NAME` in `reward.fn`."""
import os
import time


def count_sevens(prompts, completions, entries):
    """Fraction of completion characters that are '7': learnable by a tiny random byte model."""
    return [c.count("7") / max(len(c), 1) for c in completions]


def count_sevens_or_stall(prompts, completions, entries):
    """`count_sevens`, but once the path in $STUB_STALL_WHEN_EXISTS exists, every call blocks until the path
    in $STUB_RELEASE_WHEN_EXISTS exists: a test signals the process at a known step, however slowly it polls."""
    stall, release = os.environ.get("STUB_STALL_WHEN_EXISTS"), os.environ.get("STUB_RELEASE_WHEN_EXISTS")
    while stall and os.path.exists(stall) and not (release and os.path.exists(release)):
        time.sleep(0.05)
    return count_sevens(prompts, completions, entries)


def mostly_invalid(prompts, completions, entries):
    """1 only for the first sample of prompts whose question hashes to 0 mod 4: most groups all-equal."""
    out = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        out.append(float(sum(map(ord, p)) % 4 == 0 and len(c) % 2 == 0))
    return out


def always_raises(prompts, completions, entries):
    raise RuntimeError("broken reward")


def nan_for_sevens(prompts, completions, entries):
    """NaN for completions holding a '7', else 0."""
    return [float("nan") if "7" in c else 0.0 for c in completions]


def other_signature(completions, **kwargs):
    """A reward written for another library's calling convention: every call raises TypeError."""
    return [0.0 for _ in completions]
