"""Run metrics: one JSON object per line in <workdir>/metrics.jsonl, TensorBoard events, a progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import numpy as np

from gpg_em.errors import UserError

DISCARDED = "metrics.discarded.jsonl"


def _plain(v):
    if isinstance(v, (np.generic, np.ndarray)):
        v = v.item() if np.ndim(v) == 0 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class MetricsWriter:
    """Appends records to metrics.jsonl (flushed per record) and mirrors scalars to TensorBoard.

    On resume the file is truncated to records with step <= the restored step,
    so a resumed run's file equals the uninterrupted run's; the records cut
    (steps that will be run again, or a whole earlier attempt that saved no
    checkpoint) are appended to metrics.discarded.jsonl, never deleted. A torn
    last line (a run killed mid-write) is dropped the same way.
    """

    def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._truncate(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def _truncate(self, resume_step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
        keep, cut = [], []
        for i, line in enumerate(lines):
            record = _parse(line, self.path, i + 1, last=i == len(lines) - 1)
            (keep if record is not None and record.get("step", 0) <= resume_step else cut).append(line)
        if cut:
            with open(os.path.join(os.path.dirname(self.path), DISCARDED), "a", encoding="utf-8") as f:
                f.writelines(cut)
            print(f"gpg-em: {len(cut)} records of {self.path} after step {resume_step}, where this run starts, "
                  f"moved to {DISCARDED}", file=sys.stderr, flush=True)
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(keep)

    def write(self, record: dict[str, Any]) -> None:
        record = {k: _plain(v) for k, v in record.items()}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"{prefix}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _parse(line: str, path: str, number: int, last: bool) -> dict[str, Any] | None:
    """The record of one line; None for a torn last line; UserError for a broken line elsewhere."""
    try:
        return json.loads(line)
    except ValueError:
        if last:
            return None
        raise UserError(f"{path}:{number}: not a JSON record; fix or remove that line") from None


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line is skipped."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    records = [_parse(line, path, i + 1, last=i == len(lines) - 1) for i, line in enumerate(lines)]
    return [r for r in records if r is not None]


class NullWriter:
    """Stands in for MetricsWriter on processes other than 0 of a multi-host run."""

    def write(self, record: dict[str, Any]) -> None:
        del record

    def close(self) -> None:
        pass
