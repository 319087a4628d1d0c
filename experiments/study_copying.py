"""How wrong greedy answers fail: a number copied from the question.

A policy rewarded for low entropy can reach a near-deterministic completion by
repeating a number it was shown: for "What is 59 * 19?" the answer \\boxed{19}
costs almost no entropy. The share measured here, over n test problems,

    copied = #{i : answer_i != gold_i  and  answer_i in numbers(question_i)} / n

separates that failure from ordinary arithmetic slips. The questions are not
stored with an evaluation; they are regenerated from its `problems` spec
(reasoning-gym is seeded, so the same spec gives the same questions).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from study_stats import Interval, bootstrap_mean, paired_difference

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def canonical(text: str | None) -> str | None:
    """'019' -> '19', '4.0' -> '4', '-3' -> '-3'; None for a non-number."""
    if text is None:
        return None
    text = text.strip().replace(",", "")
    if not NUMBER.fullmatch(text):
        return None
    value = float(text)
    return str(int(value)) if value == int(value) else repr(value)


def numbers(question: str) -> set[str]:
    """Every number written in the question, canonical."""
    return {canonical(m) for m in NUMBER.findall(question.replace(",", ""))}


def copied_flags(questions: Sequence[str], answers: Sequence[str | None],
                 golds: Sequence[str]) -> np.ndarray:
    """[n] 1 where the answer is wrong and is a number that appears in the question."""
    flags = []
    for q, a, g in zip(questions, answers, golds, strict=True):
        a = canonical(a)
        flags.append(a is not None and a != canonical(g) and a in numbers(q))
    return np.asarray(flags, np.float64)


@lru_cache(maxsize=8)
def _questions(spec_json: str) -> tuple[str, ...]:
    from gpg_em.data.sources import make_source
    spec = json.loads(spec_json)
    return tuple(e["question"] for e in make_source(spec))


def questions_for(spec: dict[str, Any]) -> tuple[str, ...]:
    """The test questions of an evaluation, regenerated from its `problems` spec."""
    return _questions(json.dumps(spec, sort_keys=True))


def greedy_copied(test_eval: dict[str, Any]) -> np.ndarray | None:
    """[problems] copied flags of the greedy answers; None where the eval holds no answers or spec."""
    spec, greedy = test_eval.get("problems"), test_eval["results"].get("greedy", {})
    rows = greedy.get("problems", [])
    if not isinstance(spec, dict) or not rows or "answers" not in rows[0]:
        return None
    questions = questions_for(spec)
    picked = [questions[p["index"]] for p in rows]
    answers = [p["answers"][0] if p["answers"] else None for p in rows]
    return copied_flags(picked, answers, [p["gold"] for p in rows])


def _wrong(evals: list[dict[str, Any]]) -> float:
    return 1.0 - float(np.mean([[p["correct"][0] for p in e["results"]["greedy"]["problems"]] for e in evals]))


def copying_rows(runs: list[dict[str, Any]], methods: list[str],
                 base: dict[str, Any] | None) -> list[str]:
    """Table: per method the greedy wrong share and the copied share [95% CI], paired against the base."""
    base_flags = greedy_copied(base) if base is not None else None
    rows = ["| method | seeds | greedy wrong | wrong and copied from the question | copied, per seed | copied - base |",
            "|---|---:|---:|---:|---:|---:|"]
    if base_flags is not None:
        rows.append(f"| base model | - | {_wrong([base]):.3f} | {_ci(bootstrap_mean(base_flags[None]))} | - | - |")
    for m in methods:
        evals = [r["test"] for r in sorted(runs, key=lambda r: r["seed"])
                 if r["method"] == m and r["test"] is not None]
        flags = [f for f in (greedy_copied(e) for e in evals) if f is not None]
        if not flags or len(flags) != len(evals):
            continue
        table = np.stack(flags)
        vs_base = _ci(paired_difference(table, base_flags), star=True) if base_flags is not None else "-"
        per_seed = " / ".join(f"{x:.3f}" for x in table.mean(axis=1))
        rows.append(f"| {m} | {len(flags)} | {_wrong(evals):.3f} | {_ci(bootstrap_mean(table))} | {per_seed} "
                    f"| {vs_base} |")
    return rows if len(rows) > 2 else []


def _ci(iv: Interval, star: bool = False) -> str:
    mark = " *" if star and iv.excludes_zero else ""
    return f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]{mark}"
