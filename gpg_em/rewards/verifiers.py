"""Built-in verifiable rewards: math-verify, format, reasoning-gym scorers.

Every reward here is built by a factory `make_*(**options) -> RewardFn` and
called as `fn(prompts, completions, entries) -> list[float]`, one float per
completion; `entries[i]` is the prompt entry of completion i (see
`gpg_em.data.sources` for its layout). Factories validate their options at
build time so a config typo fails before the first rollout.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any, Callable, Mapping, Sequence

from gpg_em.rewards.deadline import call_with_deadline
from gpg_em.rewards.extract import DEFAULT_EXTRACTION, extract_answer, parse_spec

RewardFn = Callable[[Sequence[Any], Sequence[str], Sequence[Mapping[str, Any]]], list]


class _OwnDeadlineNotice(logging.Filter):
    """Drops math-verify's notice that its own timeout is off: `call_with_deadline` is the timeout here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_OwnDeadlineNotice())

# An extracted answer longer than this is not parsed: sympy on huge inputs is
# slow, and off the main thread nothing can stop it (see deadline.py).
MAX_ANSWER_CHARS = 512


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse
    # Wrapping in \boxed{} makes math-verify read bare LaTeX ("\frac12",
    # "\sqrt{2}", "x^2+1") that it ignores without an anchor.
    return parse(f"\\boxed{{{gold}}}", parsing_timeout=None) or parse(gold, parsing_timeout=None)


def _math_equal(gold: str, answer: str) -> bool:
    from math_verify import parse, verify
    # math-verify's own timeouts are off (None): they use SIGALRM without
    # nesting and would cancel the caller's deadline; ours replaces them.
    gold_parsed = _parse_gold(str(gold).strip())
    pred = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    return bool(gold_parsed and pred and verify(gold_parsed, pred, timeout_seconds=None))


def math_equal(gold: str, answer: str | None, timeout_s: float = 5.0) -> bool:
    """True when `answer` is mathematically equal to `gold` per math-verify.

    Runs under a `timeout_s` deadline (main thread only); past it: False.
    """
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return False
    ok, equal = call_with_deadline(timeout_s, _math_equal, gold, answer)
    return bool(ok and equal)


def make_math_reward(extraction: str = DEFAULT_EXTRACTION, fallback_last_number: bool = True,
                     timeout_s: float = 5.0) -> RewardFn:
    """1.0 when the completion's final answer equals entry["answer"] (math-verify).

    The answer is the last \\boxed{} content; with `fallback_last_number` a
    completion without a box falls back to its last number.
    `extraction` overrides both with an explicit chain (see `extract.py`).
    Each sample gets `timeout_s` (0.0 past it) when called in the main thread.
    """
    if extraction == DEFAULT_EXTRACTION and not fallback_last_number:
        extraction = "boxed"
    parse_spec(extraction, "reward.options.math.extraction")

    def math_reward(prompts, completions, entries):
        return [float(math_equal(e["answer"], extract_answer(c, extraction), timeout_s))
                for c, e in zip(completions, entries)]
    return math_reward


DEFAULT_FORMAT_REGEX = r"\\boxed\{[^{}\s][^\n]*\}|(?im:^\s*(?:final\s+)?answer\s*:\s*\S)"


def make_format_reward(regex: str = DEFAULT_FORMAT_REGEX, value: float = 1.0) -> RewardFn:
    """`value` when `regex` is found anywhere in the completion, else 0.0.

    The default accepts a non-empty \\boxed{...} or an "Answer: ..." line.
    """
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise ValueError(f"reward.options.format.regex={regex!r} is not a valid regex: {e}") from None

    def format_reward(prompts, completions, entries):
        return [value if pattern.search(c) else 0.0 for c in completions]
    return format_reward


@functools.lru_cache(maxsize=64)
def _rg_dataset(task: str, options_json: str, seed: int | None, size: int | None):
    import reasoning_gym
    kwargs = dict(json.loads(options_json))
    if seed is not None:
        kwargs["seed"] = seed
    if size is not None:
        kwargs["size"] = size
    return reasoning_gym.create_dataset(task, **kwargs)


def rg_dataset_and_entry(entry: Mapping[str, Any]):
    """The reasoning-gym dataset that generated `entry`, and its original entry.

    In-memory entries carry the original in metadata["rg_entry"]; entries read
    back from TFDS (JSON metadata) regenerate it from task/options/seed/index,
    which reasoning-gym makes deterministic.
    """
    meta = entry.get("metadata") or {}
    task = meta.get("rg_task") or (meta.get("rg_entry") or {}).get("metadata", {}).get("source_dataset")
    if not task:
        raise ValueError(f"entry from source {entry.get('source')!r} is not a reasoning-gym entry "
                         "(no metadata['rg_task']); use reward 'math' for file datasets")
    options = json.dumps(meta.get("rg_options") or {}, sort_keys=True)
    dataset = _rg_dataset(task, options, meta.get("rg_seed"), meta.get("rg_size"))
    rg_entry = meta.get("rg_entry")
    if rg_entry is None:
        rg_entry = dataset[int(meta.get("rg_index", entry["index"]))]
    return dataset, rg_entry


def make_reasoning_gym_reward(extraction: str = DEFAULT_EXTRACTION) -> RewardFn:
    """reasoning-gym's own `dataset.score_answer(answer, entry)` on the extracted answer.

    Scores are the task's (some give partial credit in [0, 1]).
    """
    parse_spec(extraction, "reward.options.reasoning_gym.extraction")

    def reasoning_gym_reward(prompts, completions, entries):
        out = []
        for c, e in zip(completions, entries):
            dataset, rg_entry = rg_dataset_and_entry(e)
            out.append(float(dataset.score_answer(extract_answer(c, extraction), rg_entry)))
        return out
    return reasoning_gym_reward
