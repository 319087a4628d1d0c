"""Final-answer extraction from model completions.

An extraction *spec* is a chain of method names joined by "|", tried left to
right; the first that finds something wins:

  boxed        content of the last \\boxed{...} / \\fbox{...} (balanced braces)
  answer_tag   content of the last <answer>...</answer> (reasoning-gym prompts)
  last_number  the last number in the text ("1,234" -> "1234", "-3.5", "1/2")
  tail         text after the last "Answer:" marker, else the last non-empty line

The project default for small models is "boxed|last_number": DESIGN.md measured
0/32 with strict \\boxed{} matching at SmolLM2-135M size, 23% with last-number
extraction on chain_sum.
"""
from __future__ import annotations

import re
from typing import Callable

DEFAULT_EXTRACTION = "boxed|last_number"

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
# Thousands-grouped integers first so "1,234" is one number but "1, 2" is two.
_NUM_RE = re.compile(r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")
_ANSWER_MARK_RE = re.compile(r"(?:final\s+)?answer\s*(?:is)?\s*[:=]", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces balanced."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:  # an unclosed box (truncated completion) is skipped
            return text[start:i - 1].strip()
    return None


def answer_tag(text: str) -> str | None:
    found = _TAG_RE.findall(text)
    return found[-1].strip() if found else None


def last_number(text: str) -> str | None:
    found = _NUM_RE.findall(text)
    if not found:
        return None
    num = found[-1].replace("−", "-").replace(",", "")
    return re.sub(r"\s+", "", num)


def tail(text: str) -> str | None:
    marks = list(_ANSWER_MARK_RE.finditer(text))
    if marks:
        rest = text[marks[-1].end():].strip()
        line = rest.splitlines()[0].strip() if rest else ""
        return line.rstrip(".").strip() or None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else None


METHODS: dict[str, Callable[[str], str | None]] = {
    "boxed": last_boxed,
    "answer_tag": answer_tag,
    "last_number": last_number,
    "tail": tail,
}


def parse_spec(spec: str, key: str = "extraction") -> tuple[str, ...]:
    """Validates a "a|b" extraction chain; errors name the config key."""
    names = tuple(s.strip() for s in spec.split("|") if s.strip())
    bad = [n for n in names if n not in METHODS]
    if bad or not names:
        raise ValueError(
            f"{key}={spec!r}: unknown extraction method {bad or spec!r}; "
            f"expected names from {sorted(METHODS)} joined by '|', e.g. 'boxed|last_number'")
    return names


def extract_answer(text: str, spec: str = DEFAULT_EXTRACTION) -> str | None:
    """The final answer of `text` by the first method of `spec` that finds one."""
    for name in parse_spec(spec):
        found = METHODS[name](text)
        if found:
            return found
    return None
