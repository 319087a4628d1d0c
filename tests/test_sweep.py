"""experiments/sweep.py (grid -> runs, resume a half-finished sweep), aggregate.py, and `gpg-em eval` on a run."""
import argparse
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import aggregate  # noqa: E402
import sweep  # noqa: E402

TINY = os.path.join(ROOT, "configs", "tiny.py")
SMALL = {"total_steps": 2, "checkpoint_every": 1, "eval_every": 2, "rollout.group_size": 2,
         "rollout.max_new_tokens": 8, "eval.max_new_tokens": 8, "eval.num_prompts": 2, "data.eval_source.size": 2}


def test_grid_expansion_and_stable_names(tmp_path):
    grid = {"configs": [TINY], "overrides": {"optim.learning_rate": [0.001, 0.0001], "gpg.age": [True]},
            "fixed": {"total_steps": 2}, "seeds": [0, 1]}
    runs = sweep.expand(grid, root=str(tmp_path))
    assert [r.name for r in runs] == [
        "tiny__gpg.age=true__optim.learning_rate=0.001__seed0", "tiny__gpg.age=true__optim.learning_rate=0.001__seed1",
        "tiny__gpg.age=true__optim.learning_rate=0.0001__seed0",
        "tiny__gpg.age=true__optim.learning_rate=0.0001__seed1"]
    assert runs[1].overrides == (("gpg.age", "true"), ("optim.learning_rate", "0.001"), ("total_steps", "2"),
                                 ("seed", "1"))
    c = runs[1].resolve()
    assert (c.gpg.age, c.optim.learning_rate, c.total_steps, c.seed) == (True, 0.001, 2, 1)
    # Names depend on a run's own settings only: a grid that grows keeps the old names.
    bigger = dict(grid, overrides={"optim.learning_rate": [0.01, 0.001, 0.0001], "gpg.age": [True]})
    assert {r.name for r in runs} < {r.name for r in sweep.expand(bigger, root=str(tmp_path))}
    # Sub-grids inherit seeds/fixed; list-of-dict overrides give exactly those runs.
    nested = {"seeds": [3], "fixed": {"total_steps": 2}, "grids": [
        {"configs": [TINY]}, {"configs": [TINY], "overrides": [{"algorithm": "rloo"}, {"algorithm": "em_ft"}]}]}
    assert [r.name for r in sweep.expand(nested, root="r")] == [
        "tiny__seed3", "tiny__algorithm=rloo__seed3", "tiny__algorithm=em_ft__seed3"]
    with pytest.raises(ValueError, match="both named"):
        sweep.expand({"configs": [TINY, TINY]}, root="r")
    with pytest.raises(ValueError, match="both swept and fixed"):
        sweep.expand({"configs": [TINY], "overrides": {"seed": [1]}, "fixed": {"seed": 2}}, root="r")


def test_print_one_command_per_run(tmp_path, capsys):
    spec = tmp_path / "grid.json"
    spec.write_text(json.dumps({"root": str(tmp_path / "runs"), "configs": [TINY], "seeds": [0, 1],
                                "overrides": {"rollout.temperature": [0.7]}, "fixed": {"total_steps": 3}}))
    assert sweep.main([str(spec), "--print"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"gpg-em train --config {TINY} --workdir {tmp_path}/runs/tiny__rollout.temperature=0.7__seed{s} "
                     f"--config.rollout.temperature=0.7 --config.total_steps=3 --config.seed={s}" for s in (0, 1)]


def _snapshot(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    return os.stat(path).st_mtime_ns, open(path, encoding="utf-8").read(), sorted(os.listdir(
        os.path.join(workdir, "checkpoints")))


@pytest.fixture(scope="module")
def half_finished_sweep(tmp_path_factory):
    """A 2-run sweep on configs/tiny.py whose second run is 'preempted' after step 1, then rerun."""
    from gpg_em.train.loop import Trainer
    root = str(tmp_path_factory.mktemp("sweep"))
    runs = sweep.expand({"configs": [TINY], "fixed": SMALL, "seeds": [0, 1]}, root=root)

    def preempted(config, workdir):
        trainer = Trainer(config, workdir)
        if workdir.endswith("seed1"):
            real_step = trainer.step
            def step(i):  # noqa: E306
                if i == 1:
                    raise RuntimeError("simulated preemption after step 1")
                return real_step(i)
            trainer.step = step
        return trainer

    first = sweep.execute(runs, make_trainer=preempted, log=lambda s: None)
    before = {r.name: _snapshot(r.workdir) for r in runs}
    status = {r.name: sweep.run_status(r.workdir, 2) for r in runs}
    partial = sweep.read_records(os.path.join(runs[1].workdir, "metrics.jsonl"))
    built = []
    second = sweep.execute(runs, make_trainer=lambda c, w: built.append(w) or Trainer(c, w), log=lambda s: None)
    return dict(runs=runs, first=first, before=before, status=status, partial=partial, second=second, built=built)


def test_a_signal_stops_the_whole_sweep(tmp_path):
    from gpg_em.errors import Interrupted
    runs = sweep.expand({"configs": [TINY], "fixed": SMALL, "seeds": [0, 1]}, root=str(tmp_path))
    started = []

    class Preempted:
        def __init__(self, config, workdir):
            started.append(workdir)

        def train(self):
            raise Interrupted("SIGTERM: stopped after step 1", 15)
    with pytest.raises(Interrupted):
        sweep.execute(runs, make_trainer=Preempted, log=lambda s: None)
    assert started == [runs[0].workdir]  # the second run never started


def test_sweep_resumes_without_redoing_finished_runs(half_finished_sweep):
    s = half_finished_sweep
    done, cut = s["runs"]
    assert s["first"] == {done.name: "trained", cut.name: "failed"}
    assert s["status"] == {done.name: "done", cut.name: "partial"} and s["before"][cut.name][2] == ["1"]
    assert s["second"] == {done.name: "skipped", cut.name: "resumed"}
    assert s["built"] == [cut.workdir]  # no Trainer was even built for the finished run
    assert _snapshot(done.workdir) == s["before"][done.name]  # metrics untouched (mtime and bytes), same ckpts
    records = sweep.read_records(os.path.join(cut.workdir, "metrics.jsonl"))
    assert [(r["kind"], r["step"]) for r in records] == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2)]
    assert records[:2] == s["partial"]  # resumed from checkpoint 1, step 1 not redone
    assert sweep.run_status(cut.workdir, 2) == "done"
    # A grid whose settings changed under the same names is refused, touching nothing.
    changed = sweep.expand({"configs": [TINY], "fixed": {**SMALL, "optim.learning_rate": 0.5}, "seeds": [0, 1]},
                           root=os.path.dirname(done.workdir))
    logs = []
    assert sweep.execute(changed, log=logs.append) == {done.name: "failed", cut.name: "failed"}
    assert "optim.learning_rate" in logs[0] and _snapshot(done.workdir) == s["before"][done.name]


def test_eval_cli_restores_a_run_and_matches_its_final_eval(half_finished_sweep, tmp_path, capsys):
    from gpg_em.eval import cli
    done = half_finished_sweep["runs"][0]
    p = argparse.ArgumentParser()
    cli.add_eval_parser(p.add_subparsers(dest="command"))
    out = tmp_path / "eval.json"
    cli.run_eval(p.parse_args(["eval", "--model", done.workdir, "--num-prompts", "2", "--mode", "greedy,avg",
                               "-k", "2", "--max-new-tokens", "8", "--out", str(out)]))
    saved = json.loads(out.read_text())
    assert saved["model"]["kind"] == "workdir" and saved["model"]["step"] == 2
    options = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}  # configs/base.py's eval task
    assert saved["problems"] == {"kind": "reasoning_gym", "task": "chain_sum", "options": options, "seed": 12345,
                                 "size": 2}
    final_eval = [r for r in sweep.read_records(os.path.join(done.workdir, "metrics.jsonl"))
                  if r["kind"] == "eval"][-1]
    greedy = saved["results"]["greedy"]
    # Same params, prompts, format and greedy decoding as the trainer's own final evaluation.
    assert greedy["tokens"] == final_eval["tokens"] and greedy["score"] == final_eval["pass@1"]
    assert saved["results"]["avg"]["k"] == 2 and len(saved["results"]["avg"]["problems"][0]["answers"]) == 2
    assert "greedy" in capsys.readouterr().out


# ---------------------------------------------------------------- aggregate on synthetic metrics

def _write_run(folder, seed, evals, rewards, entropies, seconds=(1.0, 2.0)):
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"seed": seed, "algorithm": "gpg"}, f)
    lines = []
    for step, acc in evals.items():
        lines.append({"kind": "eval", "step": step, "pass@1": acc})
    for i, (r, h) in enumerate(zip(rewards, entropies)):
        lines.append({"kind": "train", "step": i + 1, "reward_mean": r, "entropy_mean": h,
                      "rollout_seconds": seconds[0], "update_seconds": seconds[1]})
    lines.sort(key=lambda r: (r["step"], r["kind"] == "eval"))
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
        f.write('{"kind": "train", "st')  # a torn last line, as a kill mid-write leaves


def test_aggregate_table_and_plots(tmp_path):
    root = tmp_path / "runs"
    _write_run(root / "gpg__seed0", 0, {0: 0.2, 2: 0.6, 4: 0.5}, [0.1, 0.2, 0.3, 0.4], [2.0, 1.8, 1.6, 1.4])
    _write_run(root / "gpg__seed1", 1, {0: 0.2, 2: 0.4, 4: 0.7}, [0.1, 0.3, 0.5, 0.7], [2.0, 1.6, 1.2, 0.8])
    _write_run(root / "grpo__seed0", 0, {0: 0.2, 4: 0.3}, [0.0, 0.1, 0.1, 0.2], [2.0, 2.0, 2.0, 2.0], (3.0, 4.0))
    out = tmp_path / "results"
    written = aggregate.aggregate([str(root)], str(out), window=2)
    table = (out / "results.md").read_text()
    # gpg: final pass@1 0.5, 0.7 -> 0.600 ± 0.141; best 0.6, 0.7 -> 0.650 ± 0.071;
    # reward over the last 2 steps (0.3+0.4)/2, (0.5+0.7)/2 -> 0.350, 0.600 -> 0.475 ± 0.177;
    # entropy (1.6+1.4)/2, (1.2+0.8)/2 -> 1.5, 1.0 -> 1.250 ± 0.354; seconds 4 x 3 = 12 for each seed.
    assert ("| gpg | 2 | 4 | 0.200 ± 0.000 | 0.600 ± 0.141 | 0.650 ± 0.071 | 0.475 ± 0.177 | 1.250 ± 0.354 "
            "| 12 ± 0 |") in table
    assert "| grpo | 1 | 4 | 0.200 | 0.300 | 0.300 | 0.150 | 2.000 | 28 |" in table
    assert "reward (last 2)" in table
    for key in ("step", "time"):
        png = open(written[key], "rb").read()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The command line regenerates the same table.
    assert aggregate.main([str(root), "--out", str(tmp_path / "again"), "--window", "2"]) == 0
    assert (tmp_path / "again" / "results.md").read_text() == table
    # Time curves: the x of a step is the seeds' mean cumulative rollout + update seconds.
    groups = aggregate.group_runs([aggregate.load_run(f) for f in aggregate.find_runs([str(root)])])
    x, mean, lo, hi, std, n = aggregate.seed_curves(groups["gpg"], "eval", "pass@1", "time")
    assert x.tolist() == [0.0, 6.0, 12.0] and mean.tolist() == pytest.approx([0.2, 0.5, 0.6]) and n == 2
    assert lo.tolist() == pytest.approx([0.2, 0.4, 0.5]) and hi.tolist() == pytest.approx([0.2, 0.6, 0.7])


def test_aggregate_appends_eval_tables(tmp_path):
    root = tmp_path / "runs"
    _write_run(root / "gpg__seed0", 0, {0: 0.2}, [0.1], [2.0])
    result = {"metrics": {"pass@1": 0.25}, "k": 1, "headline": "pass@1", "score": 0.25,
              "shared_generation_with": None, "reward_mean": 0.25, "entropy_mean": 1.5, "tokens": 640,
              "generate_seconds": 12.5, "tokens_per_second": 51.2}
    evals = tmp_path / "decoding.json"
    evals.write_text(json.dumps({"argv": ["--mode", "greedy"], "results": {"greedy": result}}))
    assert aggregate.main([str(root), "--out", str(tmp_path / "out"), "--eval", str(evals)]) == 0
    text = (tmp_path / "out" / "results.md").read_text()
    assert "Decoding, `decoding.json` (gpg-em eval --mode greedy)" in text
    row = next(line for line in text.splitlines() if line.startswith("greedy"))
    assert row.split()[:3] == ["greedy", "pass@1", "0.250"] and "640" in row.split() and "12.5" in row.split()


def test_aggregate_reports_the_task_reward_not_an_intrinsic_one(tmp_path):
    folder = tmp_path / "runs" / "em_rl__seed0"
    os.makedirs(folder)
    lines = [{"kind": "train", "step": s, "reward_mean": -2.0, "task_reward_mean": 0.25 * s, "entropy_mean": 1.0,
              "rollout_seconds": 1.0, "update_seconds": 1.0} for s in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    aggregate.aggregate([str(tmp_path / "runs")], str(tmp_path / "out"), window=2)
    # task reward over the last 2 steps: (0.25 + 0.5) / 2 = 0.375 (the EM-RL reward -2.0 is not reported)
    assert "| em_rl | 1 | 2 | - | - | - | 0.375 | 1.000 | 4 |" in (tmp_path / "out" / "results.md").read_text()
