"""Results table and curves from runs' metrics.jsonl (+ config.json): one command regenerates both.

    python experiments/aggregate.py runs/gpg_ablation [more run folders or roots ...] --out experiments/results

Every folder under the given paths holding a metrics.jsonl is a run. Runs are
grouped over seeds by name: a trailing `__seed<N>` (the sweep's naming) is
dropped to get the group; the seed is config.json's `seed` (else N, else 0).

Writes, under --out:
  results.md       one row per group, mean ± std over seeds (sample std, ddof=1; no ± for one seed):
                   held-out greedy pass@1 at step 0, at the last step, and the best over all
                   evaluations (step 0 included); train task reward (task_reward_mean where logged,
                   else reward_mean) and entropy_mean averaged over
                   the last --window train steps; training seconds (sum of rollout + update seconds)
  curves_step.png  train task reward, held-out pass@1, train entropy_mean against step
  curves_time.png  the same against training wall-clock seconds: per run the cumulative
                   rollout + update seconds (evaluation excluded; step 1 includes JIT compilation)
Curves are the mean over a group's seeds at each step (x in time = the seeds' mean
elapsed seconds at that step) with a band of ± one sample std (min..max with --band minmax).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import warnings
from typing import Any, Sequence

import numpy as np

_SEED_SUFFIX = re.compile(r"__seed(\d+)$")
# The labelled task reward: `task_reward_mean` where the trainer logs it (for EM-RL `reward_mean` is the
# negative entropy it trains on, not the task score), else `reward_mean`.
PANELS = (("train", "task_reward", "train task reward"), ("eval", "pass@1", "held-out pass@1 (greedy)"),
          ("train", "entropy_mean", "train token entropy"))


@dataclasses.dataclass
class Run:
    name: str
    group: str
    seed: int
    train: list[dict[str, Any]]  # by step, one record per step
    eval: list[dict[str, Any]]

    def series(self, kind: str, key: str) -> dict[int, float]:
        return {r["step"]: float(r[key]) for r in (self.train if kind == "train" else self.eval)
                if isinstance(r.get(key), (int, float))}

    def elapsed(self) -> dict[int, float]:
        """Cumulative training seconds at the end of each step (0 at step 0)."""
        out, total = {0: 0.0}, 0.0
        for r in self.train:
            total += float(r.get("rollout_seconds", 0.0)) + float(r.get("update_seconds", 0.0))
            out[r["step"]] = total
        return out


def _records(path: str) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line of a killed run
                continue
    return out


def load_run(folder: str) -> Run:
    records = _records(os.path.join(folder, "metrics.jsonl"))
    by_kind: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}
    for r in records:  # a later record of the same (kind, step) wins
        if "reward_mean" in r or "task_reward_mean" in r:
            r["task_reward"] = r.get("task_reward_mean", r.get("reward_mean"))
        if r.get("kind", "train") in by_kind and "step" in r:
            by_kind[r.get("kind", "train")][int(r["step"])] = r
    name = os.path.basename(os.path.normpath(folder))
    match = _SEED_SUFFIX.search(name)
    seed = int(match.group(1)) if match else 0
    cfg_path = os.path.join(folder, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            seed = int(json.load(f).get("seed", seed))
    group = _SEED_SUFFIX.sub("", name)
    return Run(name, group, seed, [by_kind["train"][s] for s in sorted(by_kind["train"])],
               [by_kind["eval"][s] for s in sorted(by_kind["eval"])])


def find_runs(paths: Sequence[str]) -> list[str]:
    """Folders holding a metrics.jsonl under each path (the path itself included), sorted."""
    found = set()
    for p in paths:
        for folder, _, files in os.walk(p):
            if "metrics.jsonl" in files:
                found.add(os.path.normpath(folder))
    return sorted(found)


def group_runs(runs: Sequence[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.group, r.seed)):
        groups.setdefault(r.group, []).append(r)
    return groups


# ---------------------------------------------------------------- table

def run_summary(run: Run, window: int = 5) -> dict[str, float]:
    """The table's numbers for one run (NaN where the run has no such record)."""
    ev = run.series("eval", "pass@1")
    last = lambda key: [float(r[key]) for r in run.train[-window:] if isinstance(r.get(key), (int, float))]
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")
    return {
        "steps": float(run.train[-1]["step"]) if run.train else 0.0,
        "pass@1 step 0": ev.get(0, float("nan")),
        "final pass@1": ev[max(ev)] if ev else float("nan"),
        "best pass@1": max(ev.values()) if ev else float("nan"),
        "task reward (last)": mean(last("task_reward")),
        "entropy (last)": mean(last("entropy_mean")),
        "train seconds": run.elapsed()[max(run.elapsed())],
    }


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample std with ddof=1) over finite values; std None for fewer than two."""
    xs = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    if xs.size == 0:
        return float("nan"), None
    return float(xs.mean()), (float(xs.std(ddof=1)) if xs.size > 1 else None)


def _cell(mean: float, std: float | None, digits: int) -> str:
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


COLUMNS = (("pass@1 step 0", 3), ("final pass@1", 3), ("best pass@1", 3), ("task reward (last)", 3),
           ("entropy (last)", 3), ("train seconds", 0))


def markdown_table(groups: dict[str, list[Run]], window: int = 5) -> str:
    head = ["run", "seeds", "steps"] + [c if "last" not in c else c.replace("last", f"last {window}")
                                         for c, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for group, runs in groups.items():
        rows = [run_summary(r, window) for r in runs]
        steps = sorted({int(s["steps"]) for s in rows})
        cells = [group, str(len(runs)), "/".join(map(str, steps))]
        cells += [_cell(*mean_std([s[c] for s in rows]), digits) for c, digits in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots

def seed_curves(runs: Sequence[Run], kind: str, key: str, x_axis: str):
    """(x, mean, min, max, std, n seeds), arrays [S] over the steps S where any seed has a value."""
    per_run = [r.series(kind, key) for r in runs]
    steps = sorted(set().union(*per_run))
    y = np.array([[s.get(t, np.nan) for t in steps] for s in per_run], np.float64)  # [R, S]
    if x_axis == "time":
        times = [r.elapsed() for r in runs]
        x_rs = np.array([[tm.get(t, np.nan) for t in steps] for tm in times], np.float64)
        x = np.nanmean(np.where(np.isnan(y), np.nan, x_rs), axis=0)
    else:
        x = np.asarray(steps, np.float64)
    with warnings.catch_warnings():  # all-NaN steps (no seed got there) are just not drawn
        warnings.simplefilter("ignore", RuntimeWarning)
        return x, np.nanmean(y, 0), np.nanmin(y, 0), np.nanmax(y, 0), np.nanstd(y, 0, ddof=1), len(runs)


def plot_curves(groups: dict[str, list[Run]], path: str, x_axis: str = "step", band: str = "std") -> str:
    """One PNG of the PANELS against step or training seconds; one line per group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8))
    for ax, (kind, key, title) in zip(axes, PANELS):
        for i, (group, runs) in enumerate(groups.items()):
            x, mean, lo, hi, std, n = seed_curves(runs, kind, key, x_axis)
            ok = np.isfinite(x) & np.isfinite(mean)
            if not ok.any():
                continue
            color = f"C{i % 10}"
            ax.plot(x[ok], mean[ok], color=color, marker="o" if kind == "eval" else None, ms=3,
                    label=f"{group} (n={n})")
            if n > 1:
                low, high = (lo, hi) if band == "minmax" else (mean - std, mean + std)
                ax.fill_between(x[ok], low[ok], high[ok], color=color, alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("step" if x_axis == "step" else "training seconds (rollout + update)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def eval_tables(eval_files: Sequence[str]) -> str:
    """`gpg-em eval --out` JSON files as their printed tables (one row per decoding mode), markdown-fenced."""
    from gpg_em.eval.cli import table
    parts = []
    for path in eval_files:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        argv = record.get("argv", [])
        argv = argv[1:] if argv[:1] == ["eval"] else argv  # recorded from `gpg-em eval ...`
        parts.append(f"Decoding, `{os.path.basename(path)}` (gpg-em eval {' '.join(argv)}):\n\n"
                     f"```\n{table(record['results'])}\n```\n")
    return "\n".join(parts)


def aggregate(paths: Sequence[str], out_dir: str, window: int = 5, band: str = "std",
              eval_files: Sequence[str] = ()) -> dict[str, str]:
    """Writes results.md (with the `eval_files` tables appended), curves_step.png and curves_time.png;
    returns their paths."""
    folders = find_runs(paths)
    if not folders:
        raise FileNotFoundError(f"no metrics.jsonl under {list(paths)}")
    groups = group_runs([load_run(f) for f in folders])
    os.makedirs(out_dir, exist_ok=True)
    table = markdown_table(groups, window)
    md = os.path.join(out_dir, "results.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(f"Runs: {len(folders)} in {len(groups)} groups, from {', '.join(paths)}. "
                f"Mean ± std over seeds (see experiments/aggregate.py for each column).\n\n{table}")
        if eval_files:
            f.write("\n\n" + eval_tables(eval_files))
    return {"table": md,
            "step": plot_curves(groups, os.path.join(out_dir, "curves_step.png"), "step", band),
            "time": plot_curves(groups, os.path.join(out_dir, "curves_time.png"), "time", band)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="run folders or folders holding runs")
    p.add_argument("--out", default="experiments/results", help="output folder")
    p.add_argument("--window", type=int, default=5, help="train steps averaged for the final reward/entropy")
    p.add_argument("--band", default="std", choices=["std", "minmax"], help="spread drawn over seeds")
    p.add_argument("--eval", nargs="*", default=[], metavar="JSON", help="gpg-em eval --out files to tabulate too")
    args = p.parse_args(argv)
    written = aggregate(args.paths, args.out, args.window, args.band, args.eval)
    with open(written["table"], encoding="utf-8") as f:
        print(f.read())
    print("wrote " + ", ".join(written.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
