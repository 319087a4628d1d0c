"""The study at the budget that learns: 20 steps x 4 prompts x 8 samples, 3 seeds, 256 test problems.

    python experiments/study20.py run            # every pending job, in order; rerun to resume
    python experiments/study20.py run --stage select --stage seeds
    python experiments/study20.py status         # each job: done / partial / pending / blocked
    python experiments/study20.py report         # tables + plots -> experiments/results/study20/
    python experiments/study20.py restore        # a fresh checkout: the committed finished runs -> runs/study20

Protocol (SmolLM2-135M-Instruct, float32, AdamW b2 0.99, clip 1.0, micro-batches of 8):

* Training: 20 steps of 4 prompts x 8 samples, 96 new tokens, from reasoning-gym
  `chain_sum` (2-3 terms of 1-2 digits, train seed 0). The train prompts of a seed are
  the same for every method (the prompt order is drawn from `--config.seed`; beta_th
  resampling draws extra prompts, so its later steps see others).
* Splits: validation = 64 problems of seed 777 (the in-training greedy eval at steps 0
  and 20); test = 256 problems of seed 12345 (the first 64 are the quickstart's).
* Learning rate, one per method: seed 0 is trained at each of `learning_rates(method)`
  (1e-5 and 3e-5; EM-FT also at 1e-6, its config's rate, and 3e-6, since it collapses
  at both larger rates); the rate with the highest validation greedy pass@1 at step 20
  wins (ties: the smaller rate). Seeds 1 and 2 run at the winner only. The test split is read only by the
  winner's runs, after training.
* Test: greedy pass@1 and avg@8 at T=1 (`gpg-em eval --mode greedy,avg -k 8`) on the
  256 test problems, written to `<run>/test_eval.json`; the run's checkpoints are then
  deleted (1.6 GB each; metrics, config and per-problem answers stay).
* Base model: greedy, avg@8 and maj@4 (self-consistency), EM-INF and adaptive
  temperature on the same 256 problems (`decoding` stage).
* Second task: reasoning-gym `products` (2 factors of 1-2 digits; base greedy pass@1
  0.406 on the 256 test problems) for GRPO, GPG +AGE +beta_th, EM-FT and EM-RL-token at the
  learning rates chosen on chain_sum, 3 seeds (`task2` stage).
* Rate check (`ratecheck` stage): EM-RL-token on products at 3e-6, 3 seeds, trained and
  tested like the grid but never chosen (the grid's tables keep chain_sum's rate): whether
  its collapse there, answers that copy an operand, follows from the rate chosen on
  chain_sum. The rate was picked after that collapse was seen, so its row is a post-hoc
  sensitivity check, not a rate chosen blind to the test split.

Order: the base model's rows, seed 0 at every candidate rate with the winners' tests, then
seed by seed (products at seed 0; chain_sum then products at seed 1; the same at seed 2), so a
study stopped early holds the same seeds on every method of a task.

Every job is a file that exists when it is done, so an interrupted `run` resumes
where it stopped (a half-trained run resumes from its newest checkpoint, every 5 steps).
One `run` at a time: a second one stops with a message naming the holder of
`runs/study20/train.lock`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from typing import Any, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sweep  # noqa: E402  (experiments/sweep.py)

ROOT = "runs/study20"
LEARNING_RATES = (1e-5, 3e-5)
EXTRA_RATES = {"em_ft": (1e-6, 3e-6)}  # below the shared pair: EM-FT's validation score falls at both
SEEDS = (0, 1, 2)
VALIDATION = dict(seed=777, size=64)
TEST = dict(seed=12345, num_prompts=256, k=8, max_new_tokens=96)
CHAIN_SUM = dict(task="chain_sum", options={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2})
PRODUCTS = dict(task="products", options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2})

# name -> (config file, overrides): the GPG paper's ablation, the EM paper's rows, RLOO
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "grpo": ("configs/grpo.py", {}),
    "dr_grpo": ("configs/dr_grpo.py", {}),
    "rloo": ("configs/rloo.py", {}),
    "gpg_alpha1": ("configs/gpg.py", {"gpg.age": False, "gpg.beta_th": 0.0}),
    "gpg_age": ("configs/gpg.py", {"gpg.age": True, "gpg.beta_th": 0.0}),
    "gpg_age_beta": ("configs/gpg.py", {"gpg.age": True, "gpg.beta_th": 0.5, "gpg.max_rounds": 4}),
    "em_ft": ("configs/em_ft.py", {}),
    "em_rl_token": ("configs/em_rl.py", {"em.rl_kind": "token"}),
    "em_rl_sequence": ("configs/em_rl.py", {"em.rl_kind": "trajectory"}),
}
TASK2_METHODS = ("grpo", "gpg_age_beta", "em_ft", "em_rl_token")
# products, tested beside the grid, never chosen: does a smaller rate keep EM-RL-token from collapsing onto a
# copied operand?
RATE_CHECK = {"em_rl_token": 3e-6}

FIXED = {"total_steps": 20, "eval_every": 20, "checkpoint_every": 5, "keep_checkpoints": 1,
         "rollout.prompts_per_step": 4, "rollout.group_size": 8, "rollout.max_new_tokens": 96,
         "eval.num_prompts": VALIDATION["size"], "eval.max_new_tokens": 96,
         "train.micro_batch_size": 8, "optim.b2": 0.99}


def task_overrides(task: dict[str, Any]) -> dict[str, Any]:
    """data.source / data.eval_source set to `task`, the eval source being the validation split."""
    out: dict[str, Any] = {}
    for split in ("source", "eval_source"):
        out[f"data.{split}.task"] = task["task"]
        out.update({f"data.{split}.options.{k}": v for k, v in task["options"].items()})
    out["data.eval_source.seed"] = VALIDATION["seed"]
    out["data.eval_source.size"] = VALIDATION["size"]
    return out


def run_spec(method: str, lr: float, seed: int, task: dict[str, Any] = CHAIN_SUM) -> sweep.RunSpec:
    """The training run of `method` at learning rate `lr` and `seed` on `task`."""
    config, axes = METHODS[method]
    grid = {"root": os.path.join(ROOT, task["task"]), "configs": [config],
            "overrides": [{**axes, "optim.learning_rate": lr}], "seeds": [seed],
            "fixed": {**FIXED, **task_overrides(task)}}
    (run,) = sweep.expand(grid, base_dir=os.path.dirname(HERE))
    return dataclasses.replace(run, name=f"{method}__lr={lr:g}__seed{seed}",
                               workdir=os.path.join(ROOT, task["task"], f"{method}__lr={lr:g}__seed{seed}"))


# ---------------------------------------------------------------- state of the study

def metrics(run: sweep.RunSpec) -> list[dict[str, Any]]:
    return sweep.read_records(os.path.join(run.workdir, "metrics.jsonl"))


def trained(run: sweep.RunSpec) -> bool:
    return sweep.run_status(run.workdir, FIXED["total_steps"]) == "done"


def validation_score(run: sweep.RunSpec) -> float | None:
    """Validation greedy pass@1 at the last step, None before the run ends."""
    evals = [r for r in metrics(run) if r.get("kind") == "eval" and r.get("step") == FIXED["total_steps"]]
    return float(evals[-1]["pass@1"]) if evals and trained(run) else None


def learning_rates(method: str) -> tuple[float, ...]:
    """The candidate rates of `method`'s selection, ascending."""
    return tuple(sorted(LEARNING_RATES + EXTRA_RATES.get(method, ())))


def chosen_lr(method: str) -> float | None:
    """The learning rate of `method` with the best seed-0 validation pass@1 (ties: smaller); None until known."""
    rates = learning_rates(method)
    scores = [validation_score(run_spec(method, lr, 0)) for lr in rates]
    if any(s is None for s in scores):
        return None
    best = max(scores)
    return min(lr for lr, s in zip(rates, scores) if s == best)


def test_path(run: sweep.RunSpec) -> str:
    return os.path.join(run.workdir, "test_eval.json")


# ---------------------------------------------------------------- jobs

@dataclasses.dataclass
class Job:
    name: str
    stage: str
    done: bool
    blocked: bool
    action: Any  # callable() -> None
    tests: sweep.RunSpec | None = None  # a test job: the run it evaluates


def train_job(stage: str, run: sweep.RunSpec) -> Job:
    return Job(f"train {run.name}", stage, trained(run), False,
               lambda: _check(sweep.execute([run], stop_on_error=False), run))


def _check(outcome: dict[str, str], run: sweep.RunSpec) -> None:
    if outcome.get(run.name) == "failed":
        raise RuntimeError(f"training {run.workdir} failed (see the traceback above)")


def check_jobs(method: str, lr: float, seed: int) -> list[Job]:
    """Train then test `method` on task 2 at a rate other than the one chosen on chain_sum (reported beside
    the grid, never chosen); blocked until chain_sum's choice, the rate it is compared with, is known."""
    run = run_spec(method, lr, seed, PRODUCTS)
    if chosen_lr(method) is None:
        return [Job(f"check {run.name}", "ratecheck", False, True, None)]
    return [train_job("ratecheck", run), test_job("ratecheck", run, PRODUCTS)]


def test_job(stage: str, run: sweep.RunSpec, task: dict[str, Any]) -> Job:
    return Job(f"test  {run.name}", stage, os.path.exists(test_path(run)), not trained(run),
               lambda: evaluate_run(run, task), tests=run)


def untestable() -> list[str]:
    """Workdirs of trained runs whose test is still to come but whose checkpoints are gone (restored from
    the committed results, which hold no checkpoints): such a run must train again before its test."""
    return [j.tests.workdir for j in jobs() if j.tests is not None and not j.done and not j.blocked
            and not os.path.isdir(os.path.join(j.tests.workdir, "checkpoints"))]


def eval_command(model: str, task: dict[str, Any], modes: str, out: str, k: int) -> list[str]:
    return ["gpg-em", "eval", "--model", model, "--task", task["task"], "--task-options",
            json.dumps(task["options"]), "--seed", str(TEST["seed"]), "--num-prompts", str(TEST["num_prompts"]),
            "--max-new-tokens", str(TEST["max_new_tokens"]), "--mode", modes, "-k", str(k), "--out", out]


def evaluate_run(run: sweep.RunSpec, task: dict[str, Any]) -> None:
    """Test greedy + avg@8 of the run's final checkpoint, then its checkpoints are deleted."""
    tmp = test_path(run) + ".partial"
    subprocess.run(eval_command(run.workdir, task, "greedy,avg", tmp, TEST["k"]), check=True)
    os.replace(tmp, test_path(run))
    shutil.rmtree(os.path.join(run.workdir, "checkpoints"), ignore_errors=True)


def decoding_job(task: dict[str, Any]) -> Job:
    out = os.path.join(ROOT, task["task"], "base_decoding.json")

    def action():
        subprocess.run(eval_command("smollm2-135m-instruct", task, "avg,maj,em_inf,adaptive",
                                    out + ".partial", 4), check=True)
        os.replace(out + ".partial", out)
    return Job(f"decode base {task['task']}", "decoding", os.path.exists(out), False, action)


def base_sampling_job(task: dict[str, Any]) -> Job:
    """The base model's avg@8 on the test split: the reference row of the paired differences."""
    out = os.path.join(ROOT, task["task"], "base_test_eval.json")

    def action():
        subprocess.run(eval_command("smollm2-135m-instruct", task, "greedy,avg", out + ".partial", TEST["k"]),
                       check=True)
        os.replace(out + ".partial", out)
    return Job(f"test  base {task['task']}", "base", os.path.exists(out), False, action)


def jobs() -> list[Job]:
    """Every job of the study in run order: the base model's rows, seed 0 at each rate and the winners' tests,
    then seed by seed (task 1 at that seed, then task 2 at that seed), so a study stopped early holds the
    same seeds on every method of a task."""
    out = [base_sampling_job(CHAIN_SUM), decoding_job(CHAIN_SUM)]
    for method in METHODS:
        out += [train_job("select", run_spec(method, lr, 0)) for lr in learning_rates(method)]
        lr = chosen_lr(method)
        out.append(test_job("select", run_spec(method, lr, 0), CHAIN_SUM)
                   if lr is not None else Job(f"test  {method} seed0", "select", False, True, None))
    out.append(base_sampling_job(PRODUCTS))
    for seed in SEEDS:
        if seed != SEEDS[0]:
            out += seed_jobs("seeds", METHODS, seed, CHAIN_SUM)
        out += seed_jobs("task2", TASK2_METHODS, seed, PRODUCTS)
    for seed in SEEDS:
        out += [job for m, lr in RATE_CHECK.items() for job in check_jobs(m, lr, seed)]
    return out


def seed_jobs(stage: str, methods: Sequence[str], seed: int, task: dict[str, Any]) -> list[Job]:
    """Train then test each method at its chosen rate and `seed` on `task` (blocked until the rate is chosen)."""
    out = []
    for method in methods:
        lr = chosen_lr(method)
        if lr is None:
            out.append(Job(f"train {method} {task['task']} seed{seed}", stage, False, True, None))
            continue
        run = run_spec(method, lr, seed, task)
        out += [train_job(stage, run), test_job(stage, run, task)]
    return out


def run_pending(stages: list[str] | None) -> int:
    """Runs pending jobs until none is runnable; recomputes the list after each (choices unlock jobs)."""
    failed: set[str] = set()
    while True:
        todo = [j for j in jobs() if not j.done and not j.blocked and j.name not in failed
                and (not stages or j.stage in stages)]
        if not todo:
            break
        job = todo[0]
        print(f"study20: {job.name}", flush=True)
        try:
            job.action()
        except sweep.Interrupted:  # a signal: the run saved its state; the study stops (rerun to resume)
            print(f"study20: {job.name} interrupted; rerun `study20.py run` to resume", flush=True)
            return 130
        except subprocess.CalledProcessError as e:
            if e.returncode in (130, 143) or e.returncode < 0:  # the evaluation was stopped by a signal
                print(f"study20: {job.name} interrupted; rerun `study20.py run` to resume", flush=True)
                return 130
            print(f"study20: {job.name} FAILED: {e}", flush=True)
            failed.add(job.name)
        except Exception as e:  # noqa: BLE001 - one failed job must not stop the study
            print(f"study20: {job.name} FAILED: {e}", flush=True)
            failed.add(job.name)
    print(f"study20: {len(failed)} failed" if failed else "study20: nothing left to run")
    return 1 if failed else 0


def run_locked(stages: list[str] | None) -> int:
    """`run_pending` while holding `<ROOT>/train.lock`: a second `run` of the same study stops with a message
    instead of training the next pending job beside the first."""
    from gpg_em.train.lock import WorkdirBusy, WorkdirLock
    os.makedirs(ROOT, exist_ok=True)
    try:
        with WorkdirLock(ROOT):
            return run_pending(stages)
    except WorkdirBusy as e:
        print(f"study20: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "status", "report", "restore"))
    p.add_argument("--stage", action="append", choices=("base", "select", "seeds", "decoding", "task2", "ratecheck"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "study20"))
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.command == "run":
        return run_locked(args.stage)
    if args.command == "status":
        for j in jobs():
            state = "done" if j.done else "blocked" if j.blocked else "pending"
            print(f"{state:8s} {j.stage:8s} {j.name}")
        return 0
    from study20_report import report, restore
    if args.command == "restore":
        restored = restore(os.path.join(args.out, "runs"), ROOT, FIXED["total_steps"])
        for path in untestable():
            if path in restored:  # trained, untested, no checkpoint: it trains again
                shutil.rmtree(path)
                restored.remove(path)
                print(f"left out {path}: its test is pending and the results hold no checkpoint; it trains again")
        for path in restored:
            print(f"restored {path}")
        return 0
    try:
        return report(ROOT, args.out)
    except ValueError as e:
        if args.debug:
            raise
        print(f"study20: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
