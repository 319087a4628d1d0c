"""Prompt sources: reasoning-gym tasks, JSONL and Parquet files.

Every source is a random-access sequence of *entries*:

  {"question": str, "answer": str,  # gold answer, already normalised
   "metadata": dict, "source": str, "index": int}

reasoning-gym entries keep the task's own entry in metadata["rg_entry"] (its
scorer needs it) and the recipe that regenerates it: rg_task, rg_options,
rg_seed, rg_size, rg_index.

A *source config* is a plain dict (or ConfigDict), chosen by "kind":
  {"kind": "reasoning_gym", "task": "chain_sum", "options": {}, "seed": 0, "size": 1000}
  {"kind": "jsonl" | "parquet", "path": ..., "question_field": None,
   "answer_field": None, "answer_format": "auto"}
  {"kind": "tfds", "data_dir": ..., "source": <source config>, "split": "train"}
  {"kind": "tfds", "builder_dir": <data_dir/gpg_em_prompts/<config>/<version>>}
"""
from __future__ import annotations

import difflib
import inspect
import json
import os
from typing import Any, Mapping, Sequence

from gpg_em.rewards.extract import last_boxed

Entry = dict[str, Any]

QUESTION_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("answer", "solution")
ANSWER_FORMATS = ("auto", "gsm8k", "boxed", "raw")
RG_NAMES_HINT = ("see valid names with: python -c \"import reasoning_gym; "
                 "print(sorted(reasoning_gym.factory.DATASETS))\"")


def make_entry(question: str, answer: str, metadata: Mapping[str, Any] | None,
               source: str, index: int) -> Entry:
    return {"question": str(question), "answer": str(answer), "metadata": dict(metadata or {}),
            "source": source, "index": int(index)}


class ReasoningGymSource(Sequence):
    """A reasoning-gym procedural task: offline, seeded, generated on access."""

    def __init__(self, task: str, options: Mapping[str, Any] | None = None,
                 seed: int = 0, size: int = 1000):
        import reasoning_gym
        names = reasoning_gym.factory.DATASETS
        if task not in names:
            close = difflib.get_close_matches(task, list(names), n=3)
            hint = f"did you mean {close}? " if close else ""
            raise ValueError(f"unknown reasoning-gym task {task!r} (source config key 'task'); "
                             f"{hint}{RG_NAMES_HINT}")
        self.task, self.options = task, dict(options or {})
        self.seed, self.size = int(seed), int(size)
        if self.size < 1:
            raise ValueError(f"reasoning-gym task {task!r}: size={size} (source config key 'size'): must be >= 1")
        try:
            self._dataset = reasoning_gym.create_dataset(task, seed=self.seed, size=self.size,
                                                         **self.options)
        except (TypeError, ValueError, AssertionError) as e:
            raise ValueError(f"reasoning-gym task {task!r}: bad options {self.options!r} "
                             f"(source config key 'options'): {e}") from None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -self.size <= i < self.size:
            raise IndexError(i)
        i %= self.size
        rg = self._dataset[i]
        meta = {"rg_task": self.task, "rg_options": self.options, "rg_seed": self.seed,
                "rg_size": self.size, "rg_index": i, "rg_entry": rg}
        return make_entry(rg["question"], "" if rg["answer"] is None else rg["answer"],
                          meta, f"reasoning_gym/{self.task}", i)


def gold_from_text(text: str, answer_format: str = "auto") -> str | None:
    """Gold answer from an answer field: GSM8K "... #### 42", MATH "\\boxed{}", or raw.

    Returns None when the requested format is not found in the text.
    """
    text = str(text)
    if answer_format in ("auto", "gsm8k") and "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "").rstrip(".").strip()
    if answer_format == "gsm8k":
        return None
    if answer_format in ("auto", "boxed"):
        boxed = last_boxed(text)
        if boxed is not None or answer_format == "boxed":
            return boxed
    return text.strip()


def _pick(record: Mapping[str, Any], field: str | None, candidates: tuple[str, ...],
          where: str, key: str) -> tuple[str, Any]:
    names = (field,) if field else candidates
    for name in names:
        if record.get(name) is not None:
            return name, record[name]
    raise ValueError(f"{where}: missing field {names[0]!r}"
                     f"{'' if field else f' (tried {list(candidates)})'}; set source config "
                     f"key {key!r}; fields present: {sorted(record)}")


def record_to_entry(record: Mapping[str, Any], where: str, source: str, index: int,
                    question_field: str | None = None, answer_field: str | None = None,
                    answer_format: str = "auto") -> Entry:
    """One JSONL line / Parquet row -> entry; `where` ("file:line") prefixes errors."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    qf, question = _pick(record, question_field, QUESTION_FIELDS, where, "question_field")
    af, raw = _pick(record, answer_field, ANSWER_FIELDS, where, "answer_field")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):  # AMC23's answers are numbers (27.0)
        raw = str(int(raw)) if float(raw).is_integer() else repr(raw)
    if isinstance(raw, (list, tuple)):  # OlympiadBench's final_answer: a list of answer strings
        if not raw or not all(isinstance(a, str) for a in raw):
            raise ValueError(f"{where}: field {af!r} is a list but not a non-empty list of strings: {raw!r}")
        raw = ", ".join(raw)
    gold = gold_from_text(raw, answer_format)
    if gold is None:
        wanted = "'#### answer' marker" if answer_format == "gsm8k" else "complete \\boxed{}"
        raise ValueError(f"{where}: field {af!r} has no {wanted} (answer_format="
                         f"{answer_format!r}); check source config key 'answer_format'")
    meta = {k: v for k, v in record.items() if k != qf}
    return make_entry(question, gold, meta, source, index)


def _check_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"source config key 'answer_format'={answer_format!r}: "
                         f"expected one of {list(ANSWER_FORMATS)}")


def load_jsonl(path: str, question_field: str | None = None, answer_field: str | None = None,
               answer_format: str = "auto") -> list[Entry]:
    """Entries from a JSONL file; errors name the file and the 1-based line."""
    _check_format(answer_format)
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON line ({e.msg} at column {e.colno})") from None
            entries.append(record_to_entry(record, where, os.path.basename(path), len(entries),
                                           question_field, answer_field, answer_format))
    return entries


def load_parquet(path: str, question_field: str | None = None, answer_field: str | None = None,
                 answer_format: str = "auto") -> list[Entry]:
    """Entries from a Parquet file; errors name the file and the 0-based row."""
    import pyarrow.parquet as pq
    _check_format(answer_format)
    rows = pq.read_table(path).to_pylist()
    return [record_to_entry(r, f"{path}: row {i}", os.path.basename(path), i,
                            question_field, answer_field, answer_format)
            for i, r in enumerate(rows)]


def _as_dict(cfg: Any) -> dict[str, Any]:
    return dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)


def make_source(cfg: Mapping[str, Any]) -> Sequence[Entry]:
    """A source config (see module docstring) -> a sequence of entries."""
    cfg = _as_dict(cfg)
    kind = cfg.pop("kind", None)
    if kind is None and "path" in cfg:
        kind = "parquet" if str(cfg["path"]).endswith(".parquet") else "jsonl"
    if kind == "tfds":
        from gpg_em.data.tfds import tfds_source
        factory = tfds_source
    else:
        factory = {"reasoning_gym": ReasoningGymSource, "jsonl": load_jsonl,
                   "parquet": load_parquet}.get(kind)
    if factory is None:
        raise ValueError(f"source config key 'kind'={kind!r}: expected one of "
                         "['reasoning_gym', 'jsonl', 'parquet', 'tfds']")
    params = inspect.signature(factory).parameters
    unknown = sorted(set(cfg) - set(params))
    missing = sorted(k for k, p in params.items() if p.default is p.empty and k not in cfg)
    if unknown or missing:
        raise ValueError(f"source config (kind={kind!r}): "
                         f"{f'unknown keys {unknown}' if unknown else f'missing keys {missing}'}; "
                         f"expected keys {sorted(params)}")
    return factory(**cfg)
