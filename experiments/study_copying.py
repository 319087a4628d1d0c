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
    if "." not in text:
        return str(int(text))  # exact for any length
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
def _problems(spec_json: str) -> tuple[tuple[str, str], ...]:
    from gpg_em.data.sources import make_source
    spec = json.loads(spec_json)
    return tuple((e["question"], e["answer"]) for e in make_source(spec))


def questions_for(spec: dict[str, Any], golds: dict[int, str]) -> dict[int, str]:
    """index -> question of an evaluation, regenerated from its `problems` spec; each regenerated answer must
    equal the eval's stored gold, else ValueError (another generator version would mislabel silently)."""
    problems = _problems(json.dumps(spec, sort_keys=True))
    out = {}
    for i, gold in golds.items():
        if not 0 <= i < len(problems) or str(problems[i][1]) != str(gold):
            got = problems[i][1] if 0 <= i < len(problems) else f"no problem (size {len(problems)})"
            raise ValueError(f"problems spec {spec}: regenerated problem {i} gives {got!r}, the eval's gold is "
                             f"{gold!r}; the generator differs from the one that made the eval")
        out[i] = problems[i][0]
    return out


def greedy_copied(test_eval: dict[str, Any]) -> np.ndarray | None:
    """[problems] copied flags of the greedy answers; None where the eval holds no answers or spec."""
    spec, greedy = test_eval.get("problems"), test_eval["results"].get("greedy", {})
    rows = greedy.get("problems", [])
    if not isinstance(spec, dict) or not rows or "answers" not in rows[0]:
        return None
    questions = questions_for(spec, {p["index"]: p["gold"] for p in rows})
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
        rows.append(f"| base model | - | {_wrong([base]):.3f} | {bootstrap_mean(base_flags[None]).text()} | - | - |")
    for m in methods:
        evals = [r["test"] for r in sorted(runs, key=lambda r: r["seed"])
                 if r["method"] == m and r["test"] is not None]
        flags = [f for f in (greedy_copied(e) for e in evals) if f is not None]
        if not flags or len(flags) != len(evals):
            continue
        table = np.stack(flags)
        vs_base = _starred(paired_difference(table, base_flags)) if base_flags is not None else "-"
        per_seed = " / ".join(f"{x:.3f}" for x in table.mean(axis=1))
        rows.append(f"| {m} | {len(flags)} | {_wrong(evals):.3f} | {bootstrap_mean(table).text()} | {per_seed} "
                    f"| {vs_base} |")
    return rows if len(rows) > 2 else []


def _starred(iv: Interval) -> str:
    return iv.text() + (" *" if iv.excludes_zero else "")
