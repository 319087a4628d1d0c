"""Collectives of a compiled XLA module's text, split by whether a while loop's body runs them.

`collectives(hlo_text)` -> {"top": {op: n}, "loop": {op: n}}: instructions of the collective ops
(all-gather, all-to-all, collective-permute, all-reduce, reduce-scatter, and their -start forms)
in computations reachable from some while body ("loop"), or only from outside every loop ("top").
"""
import re
from collections import Counter

OPS = ("all-gather", "all-to-all", "collective-permute", "all-reduce", "reduce-scatter")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"(?:to_apply|body|condition|calls|branch_computations)=\{?([%\w.\-, ]+)\}?")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=.*?\s(" + "|".join(OPS) + r")(?:-start)?\(")


def computations(hlo_text: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines."""
    comps, name = {}, None
    for line in hlo_text.splitlines():
        m = _COMP.match(line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
        elif name is not None and line.strip() != "}":
            comps[name].append(line)
    return comps


def _callees(lines) -> set[str]:
    return {c.strip().lstrip("%") for line in lines for group in _CALLS.findall(line) for c in group.split(",")}


def loop_computations(comps: dict[str, list[str]]) -> set[str]:
    """Computations reachable from the body of some `while`."""
    todo = [b.lstrip("%") for lines in comps.values() for line in lines if " while(" in line
            for b in re.findall(r"body=(%?[\w.\-]+)", line)]
    seen = set()
    while todo:
        c = todo.pop()
        if c in seen or c not in comps:
            continue
        seen.add(c)
        todo.extend(_callees(comps[c]))
    return seen


def collective_lines(hlo_text: str) -> dict[str, list[str]]:
    """{"top": [...], "loop": [...]}: the collective instructions outside / inside while bodies."""
    comps = computations(hlo_text)
    inside = loop_computations(comps)
    out = {"top": [], "loop": []}
    for name, lines in comps.items():
        out["loop" if name in inside else "top"].extend(l.strip() for l in lines if _OP.search(l))
    return out


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{"top": {op: n}, "loop": {op: n}} (see the module docstring)."""
    return {where: dict(Counter(_OP.search(l).group(1) for l in lines))
            for where, lines in collective_lines(hlo_text).items()}
