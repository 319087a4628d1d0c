"""Tables and plots of `study20.py` from the committed per-run files (one command).

    python experiments/study20.py report      # copies new files from runs/study20, then renders

The run files (metrics.jsonl, config.json, test_eval.json) are copied under
`<out>/runs/<task>/<run>/`, and everything is computed from those copies, so the
committed folder regenerates `results.md` and the plots without the workdirs.
Intervals: `study_stats` (two-way bootstrap over seeds and problems, 95%).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shutil
from typing import Any

import numpy as np

from study_copying import copying_rows
from study_stats import Interval, bootstrap_mean, paired_difference
from sweep import read_records

RUN_FILES = ("metrics.jsonl", "config.json", "test_eval.json")
BASE_FILES = ("base_test_eval.json", "base_decoding.json")
NAME = re.compile(r"^(?P<method>.+)__lr=(?P<lr>[^_]+)__seed(?P<seed>\d+)$")


def sync(src_root: str, dst_root: str, total_steps: int = 20) -> None:
    """Copies each finished run's small files (and the base model's evals) from the workdirs; never the
    checkpoints, nor a run still training (its metrics would be committed half-written)."""
    from sweep import run_status  # experiments/sweep.py
    for task_dir in glob.glob(os.path.join(src_root, "*")):
        task = os.path.basename(task_dir)
        for name in BASE_FILES:
            _copy(os.path.join(task_dir, name), os.path.join(dst_root, task, name))
        for run_dir in glob.glob(os.path.join(task_dir, "*__seed*")):
            if run_status(run_dir, total_steps) != "done":
                continue
            for name in RUN_FILES:
                _copy(os.path.join(run_dir, name), os.path.join(dst_root, task, os.path.basename(run_dir), name))


def restore(results_root: str, runs_root: str, total_steps: int) -> list[str]:
    """The committed results' finished runs (and base-model evals) copied back into `runs_root` where absent,
    so a fresh checkout's `study20.py run` skips them; a run without `total_steps` of records is left out
    (it trains again from the start). Returns the restored paths."""
    from sweep import run_status  # experiments/sweep.py
    restored = []
    for task_dir in glob.glob(os.path.join(results_root, "*")):
        task = os.path.basename(task_dir)
        for name in BASE_FILES:
            dst = os.path.join(runs_root, task, name)
            if os.path.isfile(os.path.join(task_dir, name)) and not os.path.exists(dst):
                _copy(os.path.join(task_dir, name), dst)
                restored.append(dst)
        for run_dir in sorted(glob.glob(os.path.join(task_dir, "*__seed*"))):
            dst_dir = os.path.join(runs_root, task, os.path.basename(run_dir))
            if run_status(run_dir, total_steps) != "done" or os.path.exists(dst_dir):
                continue
            for name in RUN_FILES:
                _copy(os.path.join(run_dir, name), os.path.join(dst_dir, name))
            restored.append(dst_dir)
    return restored


def _copy(src: str, dst: str) -> None:
    if os.path.isfile(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)


def read_json(path: str) -> Any:
    """The JSON in `path`; a file that does not parse raises ValueError naming it."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); rerun the job that wrote it or restore it from git") from e


def load_runs(task_root: str) -> list[dict[str, Any]]:
    """One dict per run folder: method, lr, seed, metrics records, test eval (or None)."""
    runs = []
    for run_dir in sorted(glob.glob(os.path.join(task_root, "*__seed*"))):
        m = NAME.match(os.path.basename(run_dir))
        if not m or not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            continue
        test = os.path.join(run_dir, "test_eval.json")
        runs.append(dict(method=m["method"], lr=float(m["lr"]), seed=int(m["seed"]), dir=run_dir,
                         records=read_records(os.path.join(run_dir, "metrics.jsonl")),
                         test=read_json(test) if os.path.isfile(test) else None))
    return runs


def problem_scores(result: dict[str, Any]) -> np.ndarray:
    """[problems] mean correctness of one eval mode (greedy: 0/1; avg@k: fraction of k correct)."""
    return np.asarray([np.mean(p["correct"]) for p in result["problems"]], np.float64)


def score_table(runs: list[dict[str, Any]], mode: str) -> tuple[np.ndarray, list[int]]:
    """[seeds, problems] of the runs holding a test eval, seeds ascending."""
    done = sorted((r for r in runs if r["test"] is not None), key=lambda r: r["seed"])
    if not done:
        return np.zeros((0, 0)), []
    return np.stack([problem_scores(r["test"]["results"][mode]) for r in done]), [r["seed"] for r in done]


def cost(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median over finished runs (one run slowed by a shared machine does not decide it) of wall seconds and
    process CPU seconds per run. Wall: the run's steps x its
    median step (rollout + update), so a step stretched by a pause or another process's load does not
    decide it; CPU: the summed process CPU seconds (all threads), robust to sharing the machine."""
    wall, cpu = [], []
    for r in runs:
        train = [x for x in r["records"] if x.get("kind") == "train"]
        if train and train[-1]["step"] >= 20:
            wall.append(len(train) * float(np.median([x["rollout_seconds"] + x["update_seconds"] for x in train])))
            cpu.append(sum(x.get("cpu_seconds", np.nan) for x in train))
    return {"wall_s": float(np.median(wall)) if wall else np.nan, "cpu_s": float(np.median(cpu)) if cpu else np.nan,
            "runs": len(wall)}


def validation(runs: list[dict[str, Any]], step: int) -> float | None:
    evals = [x for r in runs for x in r["records"] if x.get("kind") == "eval" and x.get("step") == step]
    return float(evals[-1]["pass@1"]) if evals else None


# ---------------------------------------------------------------- tables

def chosen_rates(runs: list[dict[str, Any]], methods: list[str],
                 candidates: dict[str, tuple[float, ...]] | None = None) -> dict[str, float]:
    """method -> its rate: the highest seed-0 validation pass@1 at step 20 (ties: the smaller rate), once every
    one of its `candidates` has finished (the rule of `study20.chosen_lr`). Without `candidates` (task 2, run at
    the rates chosen on chain_sum) a method's only rate is its rate."""
    out = {}
    for method in methods:
        cands = sorted({r["lr"] for r in runs if r["method"] == method})
        if candidates is not None:
            cands = sorted(candidates[method])
        scores = {lr: validation([r for r in runs if r["method"] == method and r["lr"] == lr and r["seed"] == 0], 20)
                  for lr in cands}
        if candidates is None and len(cands) == 1:
            out[method] = cands[0]
        elif cands and None not in scores.values():
            out[method] = min(lr for lr, s in scores.items() if s == max(scores.values()))
    return out


def selection_rows(runs: list[dict[str, Any]], methods: list[str], chosen: dict[str, float]) -> list[str]:
    rows = ["| method | learning rate | validation pass@1, step 0 | step 20 | chosen |", "|---|---:|---:|---:|:-:|"]
    for method in methods:
        for lr in sorted({r["lr"] for r in runs if r["method"] == method}):
            seed0 = [r for r in runs if r["method"] == method and r["lr"] == lr and r["seed"] == 0]
            v0, v20 = validation(seed0, 0), validation(seed0, 20)
            rows.append(f"| {method} | {lr:g} | {_f(v0)} | {_f(v20)} | {'yes' if chosen.get(method) == lr else ''} |")
    return rows


def selection_task_rates(task_root: str, runs: list[dict[str, Any]], methods: list[str],
                         selected: bool) -> dict[str, float]:
    """method -> the rate its tables read: chosen on this task's runs when it is the selection task, else
    the rate chosen on the selection task's runs beside it (other rates here are checks, never choices)."""
    from study20 import CHAIN_SUM, learning_rates
    candidates = {m: learning_rates(m) for m in methods}
    if selected:
        return chosen_rates(runs, methods, candidates)
    sel_root = os.path.join(os.path.dirname(task_root), CHAIN_SUM["task"])
    if not os.path.isdir(sel_root):  # no choice to read: a method run here at one rate only uses it
        return chosen_rates(runs, [m for m in methods if len({r["lr"] for r in runs if r["method"] == m}) == 1])
    return chosen_rates(load_runs(sel_root), methods, candidates)


def check_rows(runs: list[dict[str, Any]], methods: list[str], chosen: dict[str, float]) -> list[str]:
    """Each run of `methods`: validation pass@1 at steps 0 and 20, and its last 5 steps' sample entropy and
    task reward (the monitor a label-free method does not train on)."""
    rows = ["| method | learning rate | seed | validation pass@1, step 0 | step 20 | sample entropy, "
            "steps 16-20 | task reward, steps 16-20 | chosen on chain_sum |", "|---|---:|---:|---:|---:|---:|---:|:-:|"]
    for r in sorted((r for r in runs if r["method"] in methods), key=lambda r: (r["method"], -r["lr"], r["seed"])):
        late = [x for x in r["records"] if x.get("kind") == "train" and x.get("step", 0) > 15]
        ent, task = (_mean([x.get(k) for x in late]) for k in ("sample_entropy_mean", "task_reward_mean"))
        rows.append(f"| {r['method']} | {r['lr']:g} | {r['seed']} | {_f(validation([r], 0))} | "
                    f"{_f(validation([r], 20))} | {_f(ent)} | {_f(task)} | "
                    f"{'yes' if chosen.get(r['method']) == r['lr'] else ''} |")
    return rows


def check_test_lines(all_runs: list[dict[str, Any]], checked: list[str], chosen: dict[str, float],
                     base: dict[str, Any] | None) -> list[str]:
    """The tested runs of `checked` methods at a rate other than the chosen one, beside the chosen rate's runs:
    test table, paired difference check - chosen, per seed, generations and copied answers."""
    label = lambda r: f"{r['method']} at {r['lr']:g}"  # noqa: E731
    pick = [r for r in all_runs if r["method"] in checked and r["test"] is not None]
    if not any(chosen.get(r["method"]) != r["lr"] for r in pick):
        return []
    runs = [{**r, "method": label(r)} for r in pick]
    runs += [r for r in all_runs if r["method"] == "grpo" and chosen.get("grpo") == r["lr"]]  # the GRPO column
    names = list(dict.fromkeys(label(r) for r in sorted(pick, key=lambda r: (r["method"], -r["lr"]))))
    table, _ = method_table(runs, names, base)
    diffs = pairwise(greedy_tables(runs, names))
    lines = ["### Rate check, tested (a post-hoc sensitivity check: never chosen, the grid above keeps the "
             "chosen rate)", "", "The check rate was picked after the collapse at the chosen rate was seen, so "
             "this row is not a rate chosen blind to the test split.", ""] + table + [""]
    pairs = sorted({(label(r), label({**r, "lr": chosen[r["method"]]})) for r in pick
                    if chosen.get(r["method"]) not in (None, r["lr"])})
    lines += [f"- {a} - {b} = {diffs[a, b].text()} ({'real' if diffs[a, b].excludes_zero else 'not resolved'}; "
              "paired over the seeds both hold)" for a, b in pairs if (a, b) in diffs]
    lines += ["", "Per seed (test):", ""] + seed_rows(runs, names) + [""]
    lines += ["What the policies generate (test split, avg@8 samples at T=1):", ""] + behaviour_rows(runs, names)
    copying = copying_rows(runs, names, base)
    if copying:
        lines += ["", "Wrong greedy answers copied from the question (test split):", ""] + copying
    return lines + [""]


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _ci(iv: Interval | None) -> str:
    if iv is None:
        return "-"
    return iv.text() + (" *" if iv.excludes_zero else "")


def method_table(runs: list[dict[str, Any]], methods: list[str], base: dict[str, Any] | None,
                 reference: str = "grpo") -> tuple[list[str], dict[str, dict[str, Interval]]]:
    """The test table: scores with intervals, paired differences against `reference` and the base model."""
    rows = ["| method | lr | seeds | greedy pass@1 | avg@8 | greedy - GRPO | greedy - base | avg@8 - base "
            "| train s/run (wall, steps x median step; median run) | CPU s/run |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    stats: dict[str, dict[str, Interval]] = {}
    if base is not None:  # the untrained model's own scores: the row every "- base" column is paired with
        g0, a0 = (bootstrap_mean(problem_scores(base["results"][m])[None]) for m in ("greedy", "avg"))
        rows.append(f"| base model | - | - | {_ci(g0).rstrip(' *')} | {_ci(a0).rstrip(' *')} | - | - | - | - | - |")
    ref_runs = [r for r in runs if r["method"] == reference and r["test"] is not None]
    for method in methods:
        mine = [r for r in runs if r["method"] == method and r["test"] is not None]
        if not mine:
            continue
        lr = mine[0]["lr"]
        if len({r["lr"] for r in mine}) > 1:
            raise ValueError(f"{method}: test evals at several rates {sorted({r['lr'] for r in mine})}; "
                             "filter the runs to the chosen rate first")
        g, seeds = score_table(mine, "greedy")
        a, _ = score_table(mine, "avg")
        s = {"greedy": bootstrap_mean(g), "avg": bootstrap_mean(a)}
        common = [x for x in seeds if x in {r["seed"] for r in ref_runs}]
        if method != reference and common:
            g_ref, _ = score_table([r for r in ref_runs if r["seed"] in common], "greedy")
            g_me, _ = score_table([r for r in mine if r["seed"] in common], "greedy")
            s["greedy_vs_ref"] = paired_difference(g_me, g_ref)
        if base is not None:
            s["greedy_vs_base"] = paired_difference(g, problem_scores(base["results"]["greedy"]))
            s["avg_vs_base"] = paired_difference(a, problem_scores(base["results"]["avg"]))
        stats[method] = s
        c = cost([r for r in runs if r["method"] == method and r["lr"] == lr])
        rows.append(f"| {method} | {lr:g} | {len(seeds)} | {_ci(s['greedy']).rstrip(' *')} | "
                    f"{_ci(s['avg']).rstrip(' *')} | {_ci(s.get('greedy_vs_ref'))} | {_ci(s.get('greedy_vs_base'))} "
                    f"| {_ci(s.get('avg_vs_base'))} | {_f(c['wall_s'], 0)} | {_f(c['cpu_s'], 0)} |")
    return rows, stats


def greedy_tables(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, dict[int, np.ndarray]]:
    """method -> {seed: [problems] greedy correctness} of the runs holding a test eval."""
    return {m: {r["seed"]: problem_scores(r["test"]["results"]["greedy"])
                for r in runs if r["method"] == m and r["test"] is not None} for m in methods}


def pairwise(tables: dict[str, dict[int, np.ndarray]], level: float = 0.95) -> dict[tuple[str, str], Interval]:
    """(a, b) -> paired greedy difference a - b over the seeds both hold (same prompts, same problems),
    with its `level` bootstrap interval."""
    out = {}
    names = list(tables)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(set(tables[a]) & set(tables[b]))
            if common:
                iv = paired_difference(np.stack([tables[a][s] for s in common]),
                                       np.stack([tables[b][s] for s in common]), level=level)
                out[a, b] = iv
                out[b, a] = dataclasses.replace(iv, mean=-iv.mean, low=-iv.high, high=-iv.low)  # b - a
    return out


def pairwise_rows(diffs: dict[tuple[str, str], Interval], methods: list[str]) -> list[str]:
    """Matrix of row - column greedy differences; * = the 95% interval excludes 0."""
    shown = [m for m in methods if any(m in k for k in diffs)]
    rows = ["| row - column | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
    for a in shown:
        cells = [f"{diffs[a, b].mean:+.3f}{'*' if diffs[a, b].excludes_zero else ''}" if (a, b) in diffs else "-"
                 for b in shown]
        rows.append(f"| {a} | " + " | ".join(cells) + " |")
    return rows


def reading_lines(diffs: dict[tuple[str, str], Interval], stats: dict[str, dict[str, Interval]],
                  family: dict[tuple[str, str], Interval]) -> list[str]:
    """Plain statements: which greedy differences the intervals resolve at this scale and which they do not.
    `family`: the same differences at the Bonferroni level 1 - 0.05 / pairs (Dunn 1961), which holds the
    chance of any false "real" among all pairs under 5%."""
    vs_base = [(m, s["greedy_vs_base"]) for m, s in stats.items() if "greedy_vs_base" in s]
    pairs = len(diffs) // 2
    real = [f"{a} - {b} = {iv.text()}; at the family-wise level: {family[a, b].text()} "
            f"({'holds' if family[a, b].excludes_zero else 'does not hold'})"
            for (a, b), iv in diffs.items() if iv.excludes_zero and iv.mean > 0]
    unresolved = sum(1 for (a, b), iv in diffs.items() if a < b and not iv.excludes_zero)
    lines = ["Reading, greedy pass@1 (real = the 95% interval excludes 0):", ""]
    word = lambda iv: "real" if iv.excludes_zero else "not resolved"  # noqa: E731
    lines += [f"- {m} vs the base model: greedy {iv.text()} ({word(iv)}); avg@8 {stats[m]['avg_vs_base'].text()} "
              f"({word(stats[m]['avg_vs_base'])})" for m, iv in vs_base]
    if not pairs:
        return lines
    lines += [f"- {x}" for x in real] or ["- no difference between two trained methods"]
    lines += ["", f"Not resolved: the other {unresolved} of {pairs} method pairs (their intervals hold 0; the "
              f"matrix above gives each mean). Among {pairs} pairs about {pairs / 20:.1f} intervals exclude 0 by "
              f"chance alone at 95%, so a pair counts as a finding only where its interval at the family-wise "
              f"level 1 - 0.05/{pairs} also excludes 0."]
    return lines


def behaviour_rows(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """What the trained policies generate on the test split (avg@k samples at T=1), mean over seeds."""
    rows = ["| method | seeds | token entropy (nats) | completion tokens | pass@8 | maj@8 | test eval s |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for m in methods:
        res = [r["test"]["results"]["avg"] for r in runs if r["method"] == m and r["test"] is not None]
        if not res:
            continue
        k = res[0]["k"]
        cols = [np.mean([x[key] for x in res]) for key in ("entropy_mean", "completion_length_mean")]
        cols += [np.mean([x["metrics"][f"{name}@{k}"] for x in res]) for name in ("pass", "maj")]
        secs = np.mean([x["wall_seconds"] for x in res])
        rows.append(f"| {m} | {len(res)} | {cols[0]:.3f} | {cols[1]:.1f} | {cols[2]:.3f} | {cols[3]:.3f} "
                    f"| {secs:.0f} |")
    return rows


def seed_rows(runs: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """Each seed's own greedy pass@1 and avg@8 (a method that moves on one seed only shows here)."""
    seeds = sorted({r["seed"] for r in runs if r["test"] is not None})
    rows = ["| method | " + " | ".join(f"seed {s}: greedy / avg@8" for s in seeds) + " |",
            "|---|" + "---:|" * len(seeds)]
    for m in methods:
        mine = {r["seed"]: r["test"]["results"] for r in runs if r["method"] == m and r["test"] is not None}
        if mine:
            cells = [" / ".join(f"{problem_scores(mine[s][k]).mean():.3f}" for k in ("greedy", "avg"))
                     if s in mine else "-" for s in seeds]
            rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return rows


def decoding_rows(base: dict[str, Any] | None, decoding: dict[str, Any] | None) -> list[str]:
    """Base-model decoding: score, tokens per problem and generation seconds; EM-INF vs SC@4 paired."""
    if decoding is None:
        return ["(base-model decoding not run yet)"]
    rows = ["| decoding | score | tokens / problem | generation s |", "|---|---:|---:|---:|"]
    results = dict(decoding["results"])
    if base is not None:
        results = {"greedy": base["results"]["greedy"], **results}
    for mode, r in results.items():
        n = r["num_problems"]
        iv = bootstrap_mean(problem_scores(r)[None, :]) if mode != "maj" else \
            bootstrap_mean(np.asarray([p["correct"][p["majority"]] if p.get("majority") is not None else 0.0
                                       for p in r["problems"]], np.float64)[None, :])
        rows.append(f"| {mode} ({r['headline']}) | {iv.text()} | {r['tokens'] / n:.1f} | {r['generate_seconds']:.0f} |")
    if "em_inf" in results and "maj" in results:
        em = problem_scores(results["em_inf"])  # one EM-INF sample's expected correctness (avg@k)
        sc = np.asarray([p["correct"][p["majority"]] if p.get("majority") is not None else 0.0
                         for p in results["maj"]["problems"]], np.float64)
        d = paired_difference(em[None, :], sc)
        k = results["maj"]["k"]
        rows += ["", f"EM-INF (one sample, avg@k) minus self-consistency maj@{k}: {_ci(d)} over "
                 f"{len(em)} problems; tokens per problem {results['em_inf']['tokens'] / len(em) / k:.1f} "
                 f"(one EM-INF sample) against {results['maj']['tokens'] / len(sc):.1f} (SC@{k}); generation seconds "
                 f"{results['em_inf']['generate_seconds'] / k:.0f} (one EM-INF sample each) against "
                 f"{results['maj']['generate_seconds']:.0f} (SC@{k})."]
    return rows


# ---------------------------------------------------------------- plots

def plot(stats: dict[str, dict[str, Interval]], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(stats)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(methods) + 2.0), sharey=True)
    y = np.arange(len(methods))
    for ax, keys, label in ((axes[0], ("greedy", "avg"), "test score (95% CI)"),
                            (axes[1], ("greedy_vs_base", "greedy_vs_ref"), "paired difference, greedy (95% CI)")):
        for j, key in enumerate(keys):
            ivs = [stats[m].get(key) for m in methods]
            ok = [i for i, iv in enumerate(ivs) if iv is not None]
            mean = np.asarray([ivs[i].mean for i in ok])
            err = np.asarray([[ivs[i].mean - ivs[i].low for i in ok], [ivs[i].high - ivs[i].mean for i in ok]])
            ax.errorbar(mean, y[ok] + (j - 0.5) * 0.25, xerr=err, fmt="o", capsize=3,
                        label=key.replace("_vs_ref", " - GRPO").replace("_vs_base", " - base"))
        ax.set_xlabel(label)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18 if len(methods) < 6 else -0.08),
                  ncol=2, fontsize=8, frameon=False)  # below the axes: never over a row
        ax.grid(alpha=0.3)
    axes[1].axvline(0.0, color="k", lw=0.8)
    axes[0].set_yticks(y, methods)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training(runs: list[dict[str, Any]], path: str) -> None:
    """Train task reward, validation pass@1 and train token entropy against step, one line per method
    (mean over its seeds, band: +- std), drawn by `aggregate.plot_curves`."""
    from aggregate import load_run, plot_curves
    groups: dict[str, list[Any]] = {}
    for r in runs:
        groups.setdefault(r["method"], []).append(load_run(r["dir"]))
    plot_curves(groups, path)


# ---------------------------------------------------------------- the report

def task_section(task_root: str, task: str, methods: list[str], out: str) -> list[str]:
    from study20 import CHAIN_SUM
    all_runs = load_runs(task_root)
    selected = task == CHAIN_SUM["task"]  # the task whose seed-0 runs choose every method's rate
    chosen = selection_task_rates(task_root, all_runs, methods, selected)
    runs = [r for r in all_runs if chosen.get(r["method"]) == r["lr"]]  # the tables read the chosen rate only
    base_path, dec_path = (os.path.join(task_root, n) for n in BASE_FILES)
    base = read_json(base_path) if os.path.isfile(base_path) else None
    decoding = read_json(dec_path) if os.path.isfile(dec_path) else None
    lines = [f"## {task}", ""]
    checked = [m for m in methods if len({r["lr"] for r in all_runs if r["method"] == m}) > 1]  # task 2's checks
    if selected:
        lines += ["### Learning-rate selection (seed 0, validation split)", ""]
        lines += selection_rows(all_runs, methods, chosen)
        lines += [""]
    else:
        lines += [f"Each method runs at the rate chosen on {CHAIN_SUM['task']}'s validation split; "
                  "no rate is chosen on this task.", ""]
        if checked:
            lines += ["### Rate check (validation split; the grid's tables below use the chosen rate, the "
                      "check's tests come last)", ""]
            lines += check_rows(all_runs, checked, chosen) + [""]
    table, stats = method_table(runs, methods, base)
    lines += ["### Test (256 problems): score [95% CI]; * = the interval excludes 0", ""] + table + [""]
    if stats:
        plot(stats, os.path.join(out, f"{task}_test.png"), f"{task}: test scores and paired differences")
        lines += [f"![{task}]({task}_test.png)", ""]
        tables = greedy_tables(runs, methods)
        diffs = pairwise(tables)
        family = pairwise(tables, level=1.0 - 0.05 / max(len(diffs) // 2, 1))
        lines += ["### Per seed (test, the same prompts per seed across methods)", ""] + seed_rows(runs, methods)
        lines += [""]
        if diffs:
            lines += ["### Paired greedy differences between methods (seeds both hold)", ""]
            lines += pairwise_rows(diffs, methods) + [""]
        lines += reading_lines(diffs, stats, family) + [""]
        lines += ["### What the trained policies generate (test split, avg@8 samples at T=1)", ""]
        lines += behaviour_rows(runs, methods) + [""]
        copying = copying_rows(runs, methods, base)
        if copying:
            lines += ["### How wrong greedy answers fail: a number copied from the question (test split)", "",
                      "Share of the 256 problems whose greedy answer is wrong and is a number written in the "
                      "question (e.g. 19 for 59 * 19); * = the paired interval against the base model "
                      "excludes 0.", ""] + copying + [""]
    if runs:
        plot_training(runs, os.path.join(out, f"{task}_training.png"))
        lines += ["### Training curves (chosen rates; mean over seeds, band +- std)", "",
                  f"![{task} training]({task}_training.png)", ""]
    if not selected:
        lines += check_test_lines(all_runs, checked, chosen, base)
    if decoding is not None or selected:  # the decoding stage runs on the selection task
        lines += ["### Base model decoding (test split)", ""] + decoding_rows(base, decoding) + [""]
    return lines


def report(src_root: str, out: str, methods: list[str] | None = None) -> int:
    from study20 import FIXED, METHODS
    methods = methods or list(METHODS)
    runs_root = os.path.join(out, "runs")
    if os.path.isdir(src_root):
        sync(src_root, runs_root, FIXED["total_steps"])
    lines = ["# Study results (generated by `python experiments/study20.py report`)", ""]
    for task_root in sorted(glob.glob(os.path.join(runs_root, "*"))):
        lines += task_section(task_root, os.path.basename(task_root), methods, out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {os.path.join(out, 'results.md')}")
    return 0
