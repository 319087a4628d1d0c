"""Config sweeps: expand a grid (configs x overrides x seeds) into named runs, run or print them.

    python experiments/sweep.py experiments/grid_gpg_ablation.py            # run all, one after another
    python experiments/sweep.py experiments/grid_gpg_ablation.py --list     # name, status, workdir
    python experiments/sweep.py experiments/grid_gpg_ablation.py --print    # one `gpg-em train` per run (TPU VMs)

A grid spec is a Python file defining `GRID` (or a JSON file holding it):

    GRID = {
        "root": "runs/gpg_ablation",             # workdirs are <root>/<run name>
        "configs": ["configs/gpg.py"],           # config files (relative to cwd or to the spec file)
        "overrides": {"gpg.age": [True, False],  # dict of value lists: their cartesian product ...
                      "optim.learning_rate": [1e-6, 1e-5]},
        # "overrides": [{"gpg.age": False}, {"gpg.age": True, "gpg.beta_th": 0.6}],  # ... or exactly these
        "fixed": {"total_steps": 20},            # applied to every run, not part of the names
        "seeds": [0, 1, 2],                      # --config.seed of each run
        # "grids": [{...}, {...}],               # optional sub-grids; each inherits (and may override)
    }                                            # root / configs / overrides / fixed / seeds from the top

Runs = configs x override combinations x seeds. A run's name comes from its
settings only, so it is stable when the grid grows:
`<config file stem>__<key>=<value>__...__seed<s>` (override keys sorted,
characters outside [A-Za-z0-9._=+-] replaced by '-'; names over 150 characters
are cut and suffixed with a hash of the settings).

Running (the default) trains each run in this process with the Trainer, in
order. A run whose metrics.jsonl already holds the train record and the
held-out eval record of step total_steps is skipped; an interrupted one is
resumed by the Trainer itself from its latest checkpoint. A signal
(SIGTERM, Ctrl-C) stops the run at a checkpoint and the whole sweep with it. A workdir whose
config.json differs from the run's resolved config is refused (the names do
not cover `fixed`) unless --force. A failed run is reported and the sweep goes
on (--stop-on-error to stop); the exit status is 1 if any run failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import sys
import traceback
from typing import Any, Callable, Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from gpg_em.errors import Interrupted  # noqa: E402
DEFAULT_ROOT = "runs/sweep"
MAX_NAME = 150
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
_GRID_KEYS = {"root", "configs", "overrides", "fixed", "seeds", "grids"}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    config: str  # config file path
    overrides: tuple[tuple[str, str], ...]  # (key, value text), sweep axes then fixed then seed
    workdir: str

    def resolve(self):
        """The run's validated ConfigDict."""
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        from gpg_em.configuration import get
        return get(self.config, list(self.overrides))

    def command(self) -> str:
        """The equivalent `gpg-em train` command line."""
        args = ["gpg-em", "train", "--config", self.config, "--workdir", self.workdir]
        args += [f"--config.{k}={v}" for k, v in self.overrides]
        return " ".join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------- grid -> runs

def load_grid(path: str) -> dict[str, Any]:
    """The GRID of a .py spec file, or the object of a .json one."""
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    spec = importlib.util.spec_from_file_location("_gpg_em_grid", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "GRID"):
        raise ValueError(f"{path}: defines no GRID (see experiments/sweep.py for the format)")
    return module.GRID


def value_text(v: Any) -> str:
    """A value as `--config.KEY=` text (what gpg_em.configuration parses back)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, dict)):
        return repr(v)
    return str(v)


def run_name(config: str, axes: Iterable[tuple[str, str]], seed: int | None) -> str:
    """Stable name of a run from its config file, its sweep overrides and its seed."""
    parts = [os.path.splitext(os.path.basename(config))[0]]
    parts += [f"{k}={v}" for k, v in sorted(axes)]
    if seed is not None:
        parts.append(f"seed{seed}")
    name = _UNSAFE.sub("-", "__".join(parts))
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 12]}__{digest}"
    return name


def _combinations(overrides) -> list[dict[str, Any]]:
    if overrides is None:
        return [{}]
    if isinstance(overrides, dict):
        keys = sorted(overrides)
        for k in keys:
            if not isinstance(overrides[k], (list, tuple)):
                raise ValueError(f"grid overrides[{k!r}] must be a list of values, got {overrides[k]!r}")
        return [dict(zip(keys, values)) for values in itertools.product(*(overrides[k] for k in keys))]
    return [dict(o) for o in overrides]


def _resolve_path(path: str, base_dir: str) -> str:
    if os.path.isabs(path) or os.path.exists(path):
        return path
    beside = os.path.join(base_dir, path)
    return beside if os.path.exists(beside) else path


def expand(grid: dict[str, Any], root: str | None = None, base_dir: str = ".") -> list[RunSpec]:
    """All runs of a grid (module docstring), in order; duplicate names are an error."""
    unknown = set(grid) - _GRID_KEYS
    if unknown:
        raise ValueError(f"grid keys {sorted(unknown)} unknown; expected {sorted(_GRID_KEYS)}")
    subgrids = grid.get("grids") or [{}]
    runs: list[RunSpec] = []
    for sub in subgrids:
        g = {**{k: v for k, v in grid.items() if k != "grids"}, **sub}
        g["fixed"] = {**(grid.get("fixed") or {}), **(sub.get("fixed") or {})}
        runs += _expand_one(g, root or g.get("root") or DEFAULT_ROOT, base_dir)
    seen: dict[str, RunSpec] = {}
    for r in runs:
        if r.name in seen:
            raise ValueError(f"two runs are both named {r.name!r}: the grid repeats a setting")
        seen[r.name] = r
    return runs


def _expand_one(g: dict[str, Any], root: str, base_dir: str) -> list[RunSpec]:
    configs = g.get("configs")
    if not configs:
        raise ValueError("grid needs 'configs': a list of config files")
    seeds = g.get("seeds")
    fixed = [(k, value_text(v)) for k, v in sorted(g["fixed"].items())]
    runs = []
    for config, combo, seed in itertools.product(configs, _combinations(g.get("overrides")), seeds or [None]):
        axes = [(k, value_text(v)) for k, v in sorted(combo.items())]
        clash = {k for k, _ in axes} & {k for k, _ in fixed}
        if clash:
            raise ValueError(f"keys {sorted(clash)} are both swept and fixed")
        name = run_name(config, axes, seed)
        overrides = tuple(axes + fixed + ([("seed", str(seed))] if seed is not None else []))
        runs.append(RunSpec(name, _resolve_path(config, base_dir), overrides, os.path.join(root, name)))
    return runs


# ---------------------------------------------------------------- status

def read_records(path: str) -> list[dict[str, Any]]:
    """metrics.jsonl records; a torn last line (a kill mid-write) is ignored."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def run_status(workdir: str, total_steps: int) -> str:
    """"done" (train and eval records of step total_steps exist), "partial" or "new"."""
    records = read_records(os.path.join(workdir, "metrics.jsonl"))
    last = {kind: max((r.get("step", 0) for r in records if r.get("kind") == kind), default=-1)
            for kind in ("train", "eval")}
    if last["train"] >= total_steps and last["eval"] >= total_steps:
        return "done"
    return "partial" if records or os.path.isdir(os.path.join(workdir, "checkpoints")) else "new"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}." if isinstance(v, dict) and v else f"{prefix}{k}"))
    return out


def config_changes(workdir: str, config) -> list[str]:
    """Keys of workdir/config.json whose value differs from `config` (empty: same, or no file yet)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        old = _flat(json.load(f))
    new = _flat(json.loads(config.to_json()))
    # keys the saved file lacks were added to the config since: the Trainer's resume check judges those
    return sorted(k for k in old if old.get(k) != new.get(k))


# ---------------------------------------------------------------- execution

def _default_trainer(config, workdir):
    from gpg_em.train.loop import Trainer
    return Trainer(config, workdir)


def execute(runs: list[RunSpec], *, force: bool = False, stop_on_error: bool = False,
            make_trainer: Callable = _default_trainer, log: Callable[[str], None] = print) -> dict[str, str]:
    """Trains the runs in order; returns {name: "skipped" | "trained" | "resumed" | "failed"}."""
    outcome = {}
    for i, run in enumerate(runs):
        head = f"[{i + 1}/{len(runs)}] {run.name}"
        try:
            c = run.resolve()
            changed = config_changes(run.workdir, c)
            if changed and not force:
                raise ValueError(f"{run.workdir}/config.json differs from this run's config in {changed}; "
                                 "rerun with --force to continue it anyway, or move the folder away")
            if changed:  # --force: the Trainer records each change in metrics.jsonl
                c.resume.allow_config_changes = "*"
            status = run_status(run.workdir, c.total_steps)
            if status == "done":
                outcome[run.name] = "skipped"
                log(f"{head}: done, skipped")
                continue
            log(f"{head}: {'resuming' if status == 'partial' else 'starting'} in {run.workdir}")
            make_trainer(c, run.workdir).train()
            outcome[run.name] = "resumed" if status == "partial" else "trained"
        except Interrupted:  # SIGTERM/SIGINT (a preemption, Ctrl-C): the run saved its state; the sweep stops
            log(f"{head}: interrupted; rerun the sweep to resume")
            raise
        except Exception:  # noqa: BLE001 - one broken run must not stop the sweep
            outcome[run.name] = "failed"
            log(f"{head}: FAILED\n{traceback.format_exc()}")
            if stop_on_error:
                raise
    return outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", help="grid spec: a .py file defining GRID, or a .json file")
    p.add_argument("--root", default=None, help="workdir root (default: the grid's 'root', else runs/sweep)")
    p.add_argument("--only", default=None, help="only runs whose name contains this text")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print", dest="print_commands", action="store_true",
                      help="print one `gpg-em train` command per run instead of running")
    mode.add_argument("--list", action="store_true", help="print each run's status and workdir")
    p.add_argument("--pending", action="store_true", help="with --print: leave out runs already done here")
    p.add_argument("--force", action="store_true", help="continue runs whose stored config.json differs")
    p.add_argument("--stop-on-error", action="store_true")
    args = p.parse_args(argv)
    runs = expand(load_grid(args.grid), args.root, os.path.dirname(os.path.abspath(args.grid)))
    if args.only:
        runs = [r for r in runs if args.only in r.name]
    if args.print_commands or args.list:
        for r in runs:
            status = run_status(r.workdir, r.resolve().total_steps) if (args.list or args.pending) else ""
            if args.list:
                print(f"{status:8s} {r.name}  {r.workdir}")
            elif not (args.pending and status == "done"):
                print(r.command())
        return 0
    outcome = execute(runs, force=args.force, stop_on_error=args.stop_on_error)
    counts = {s: sum(v == s for v in outcome.values()) for s in ("trained", "resumed", "skipped", "failed")}
    print("sweep: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
