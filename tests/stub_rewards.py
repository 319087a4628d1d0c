"""Reward functions for trainer tests, referenced as `stub_rewards:NAME` in `reward.fn`."""


def count_sevens(prompts, completions, entries):
    """Fraction of completion characters that are '7': learnable by a tiny random byte model."""
    return [c.count("7") / max(len(c), 1) for c in completions]


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
