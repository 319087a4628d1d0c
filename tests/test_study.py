"""experiments/study20.py (learning-rate selection, job order) and study_stats.py (bootstrap intervals).

Interval widths are checked against closed-form standard errors (normal theory), not against the code.
"""
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import study20  # noqa: E402
import study20_report  # noqa: E402
from study_stats import bootstrap_mean, paired_difference  # noqa: E402


def test_constant_table_has_a_point_interval():
    iv = bootstrap_mean(np.full((3, 50), 0.25), replicates=500)
    assert (iv.mean, iv.low, iv.high, iv.seeds, iv.problems) == (0.25, 0.25, 0.25, 3, 50)


def test_one_seed_interval_matches_the_binomial_standard_error():
    rng = np.random.default_rng(1)
    x = (rng.random(2000) < 0.3).astype(float)[None, :]
    iv = bootstrap_mean(x, replicates=4000)
    p = x.mean()
    half = 1.959964 * np.sqrt(p * (1 - p) / x.size)  # normal-theory 95% half-width
    assert iv.mean == pytest.approx(p)
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.1)
    assert iv.low < p < iv.high


def test_two_way_interval_adds_seed_and_problem_variance():
    # x[s, p] = a[s] + b[p]: a replicate's mean is mean(a*) + mean(b*), so its variance is
    # var(a)/S + var(b)/P (population variances, resampling with replacement).
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 0.05, 6), rng.normal(0, 0.3, 400)
    x = a[:, None] + b[None, :]
    iv = bootstrap_mean(x, replicates=4000)
    half = 1.959964 * np.sqrt(a.var() / a.size + b.var() / b.size)
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.12)
    problems_only = 1.959964 * np.sqrt(b.var() / b.size)
    assert (iv.high - iv.low) / 2 > 1.1 * problems_only  # the seed term is really there


def test_paired_difference_cancels_shared_problem_difficulty():
    rng = np.random.default_rng(3)
    difficulty = rng.random(256)
    b = np.stack([(rng.random(256) < difficulty).astype(float) for _ in range(3)])
    a = np.clip(b + (rng.random((3, 256)) < 0.05), 0, 1)  # a = b, plus ~5% problems flipped to correct
    d = paired_difference(a, b, replicates=2000)
    assert d.mean == pytest.approx(a.mean() - b.mean())
    assert d.excludes_zero and d.low > 0
    unpaired_half = 1.959964 * np.sqrt(a.var() / a.size + b.var() / b.size)
    assert (d.high - d.low) / 2 < 0.5 * unpaired_half
    same = paired_difference(b, b, replicates=200)
    assert (same.mean, same.low, same.high, same.excludes_zero) == (0.0, 0.0, 0.0, False)
    # A reference without seeds (the base model) is broadcast over the seeds.
    base = b[0]
    d0 = paired_difference(a, base, replicates=200)
    assert d0.mean == pytest.approx((a - base[None]).mean())
    with pytest.raises(ValueError, match="differ in shape"):
        paired_difference(a, b[:2])


def _finish(run, val_pass, steps=20):
    os.makedirs(run.workdir, exist_ok=True)
    with open(os.path.join(run.workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "eval", "step": 0, "pass@1": 0.1}) + "\n")
        for s in range(1, steps + 1):
            f.write(json.dumps({"kind": "train", "step": s, "rollout_seconds": 1.0, "update_seconds": 2.0,
                                "cpu_seconds": 5.0, "reward_mean": 0.1, "entropy_mean": 1.0,
                                "sample_entropy_mean": 0.5, "task_reward_mean": 0.25 if s > 15 else 0.0}) + "\n")
        f.write(json.dumps({"kind": "eval", "step": steps, "pass@1": val_pass}) + "\n")


def test_learning_rate_is_chosen_on_validation_and_unlocks_other_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(study20, "ROOT", str(tmp_path))
    low, high = study20.LEARNING_RATES
    assert study20.chosen_lr("grpo") is None
    names = [j.name for j in study20.jobs() if not j.blocked]
    # the base model's rows first (they need no training), then seed 0 at every rate
    assert names[:4] == ["test  base chain_sum", "decode base chain_sum",
                         f"train grpo__lr={low:g}__seed0", f"train grpo__lr={high:g}__seed0"]
    assert not any("seed1" in n for n in names)  # later seeds wait for the choice
    _finish(study20.run_spec("grpo", low, 0), 0.20)
    assert study20.chosen_lr("grpo") is None  # one candidate still running
    _finish(study20.run_spec("grpo", high, 0), 0.25)
    assert study20.chosen_lr("grpo") == high
    _finish(study20.run_spec("dr_grpo", low, 0), 0.25)
    _finish(study20.run_spec("dr_grpo", high, 0), 0.25)
    assert study20.chosen_lr("dr_grpo") == low  # a tie goes to the smaller rate
    todo = [j for j in study20.jobs() if not j.done and not j.blocked]
    assert f"test  grpo__lr={high:g}__seed0" in [j.name for j in todo]
    assert f"train grpo__lr={high:g}__seed1" in [j.name for j in todo]
    assert not any(j.name.endswith(f" grpo__lr={low:g}__seed1") for j in todo)
    unfinished = study20.run_spec("rloo", low, 0)
    _finish(unfinished, 0.5, steps=12)  # stopped at step 12: no validation score yet
    assert study20.validation_score(unfinished) is None
    # EM-FT's candidates reach below the shared pair; the choice waits for all four
    assert study20.learning_rates("em_ft") == (1e-6, 3e-6, low, high)
    for lr, score in ((low, 0.03), (high, 0.03), (1e-6, 0.22)):
        _finish(study20.run_spec("em_ft", lr, 0), score)
    assert study20.chosen_lr("em_ft") is None
    _finish(study20.run_spec("em_ft", 3e-6, 0), 0.20)
    assert study20.chosen_lr("em_ft") == 1e-6
    # seed by seed across the tasks: task 2 at seed 0, then task 1 at seed 1, then task 2 at seed 1
    order = [(j.stage, j.name) for j in study20.jobs()]
    at = lambda stage, seed: order.index((stage, f"train grpo__lr={high:g}__seed{seed}"))
    assert at("task2", 0) < at("seeds", 1) < at("task2", 1) < at("seeds", 2) < at("task2", 2)


def test_report_tables_from_run_files(tmp_path, monkeypatch):
    monkeypatch.setattr(study20, "ROOT", str(tmp_path / "runs"))
    rng = np.random.default_rng(0)

    def test_eval(p_greedy, p_avg):
        problems = lambda p, k: [{"correct": [int(v) for v in rng.random(k) < p], "majority": 0} for _ in range(256)]
        avg = {"problems": problems(p_avg, 8), "k": 8, "entropy_mean": 0.5, "completion_length_mean": 20.0,
               "metrics": {"pass@8": 0.9, "maj@8": 0.4}, "wall_seconds": 100.0}
        return {"results": {"greedy": {"problems": problems(p_greedy, 1)}, "avg": avg}}

    for method, p in (("grpo", 0.2), ("gpg_age", 0.6)):
        for lr in study20.LEARNING_RATES:
            _finish(study20.run_spec(method, lr, 0), 0.3 if lr == study20.LEARNING_RATES[0] else 0.1)
        for seed in (0, 1):
            run = study20.run_spec(method, study20.LEARNING_RATES[0], seed)
            _finish(run, 0.3)
            with open(study20.test_path(run), "w") as f:
                json.dump(test_eval(p, p), f)
    with open(tmp_path / "runs" / "chain_sum" / "base_test_eval.json", "w") as f:
        json.dump(test_eval(0.2, 0.1), f)
    _finish(study20.run_spec("grpo", study20.LEARNING_RATES[0], 2), 0.3, steps=7)
    out = tmp_path / "out"
    study20_report.report(str(tmp_path / "runs"), str(out), methods=["grpo", "gpg_age"])
    text = (out / "results.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| gpg_age | 1e-05 | 2 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[5].endswith("*") and float(cells[5].split()[0]) > 0.3  # greedy - GRPO: ~0.4, excludes 0
    assert cells[8] == "60" and cells[9] == "100"  # 20 steps x (1 + 2) s wall, 20 x 5 s CPU
    base_row = next(line for line in text.splitlines() if line.startswith("| base model |"))
    base = json.load(open(tmp_path / "runs" / "chain_sum" / "base_test_eval.json"))["results"]
    want = [np.mean([np.mean(p["correct"]) for p in base[m]["problems"]]) for m in ("greedy", "avg")]
    got = [float(c.split()[0]) for c in [c.strip() for c in base_row.split("|")[1:-1]][3:5]]
    np.testing.assert_allclose(got, want, atol=5e-4)  # the base model's own scores (3 decimals)
    matrix = next(line for line in text.splitlines() if line.startswith("| gpg_age | +"))
    assert [c.strip() for c in matrix.split("|")[1:-1]][1].endswith("*")  # gpg_age - grpo resolved
    assert re.search(r"- gpg_age - grpo = 0\.[34]\d+ \[.*\(holds\)", text)  # the family-wise (Bonferroni) level too
    assert "| gpg_age | 2 | 0.500 | 20.0 | 0.900 | 0.400 | 100 |" in text  # what the policies generate
    seed1 = json.load(open(study20.test_path(study20.run_spec("gpg_age", study20.LEARNING_RATES[0], 1))))["results"]
    seed1 = [np.mean([np.mean(p["correct"]) for p in seed1[m]["problems"]]) for m in ("greedy", "avg")]
    per_seed = next(line for line in text.splitlines() if line.startswith("| gpg_age | 0.") and " / " in line)
    np.testing.assert_allclose([float(x) for x in per_seed.split("|")[3].split("/")], seed1, atol=5e-4)
    assert (out / "chain_sum_test.png").stat().st_size > 0 and (out / "chain_sum_training.png").stat().st_size > 0
    assert (out / "runs" / "chain_sum" / "grpo__lr=1e-05__seed1" / "test_eval.json").is_file()
    assert not (out / "runs" / "chain_sum" / "grpo__lr=1e-05__seed2").exists()  # still training: not copied


def test_a_signal_stops_the_study(tmp_path, monkeypatch):
    from gpg_em.errors import Interrupted
    monkeypatch.setattr(study20, "ROOT", str(tmp_path))
    ran = []

    def interrupted(runs, **kwargs):
        ran.append(runs[0].name)
        raise Interrupted("SIGTERM: stopped after step 3", 15)
    monkeypatch.setattr(study20.sweep, "execute", interrupted)
    assert study20.run_pending(["select"]) == 130
    assert ran == [f"grpo__lr={study20.LEARNING_RATES[0]:g}__seed0"]  # stopped, not on to the next job


def test_restore_copies_back_finished_runs_only(tmp_path, monkeypatch):
    """A fresh checkout: committed finished runs come back into the runs folder, a partial one does not."""
    monkeypatch.setattr(study20, "ROOT", str(tmp_path / "committed"))
    done, partial = study20.run_spec("grpo", 1e-5, 0), study20.run_spec("grpo", 3e-5, 0)
    _finish(done, 0.3)
    _finish(partial, 0.3, steps=12)
    with open(tmp_path / "committed" / "chain_sum" / "base_test_eval.json", "w") as f:
        f.write("{}")
    runs = tmp_path / "runs"
    got = study20_report.restore(str(tmp_path / "committed"), str(runs), 20)
    assert sorted(os.path.relpath(p, runs) for p in got) == ["chain_sum/base_test_eval.json",
                                                             "chain_sum/grpo__lr=1e-05__seed0"]
    assert (runs / "chain_sum" / "grpo__lr=1e-05__seed0" / "metrics.jsonl").read_text() == \
        open(os.path.join(done.workdir, "metrics.jsonl")).read()
    monkeypatch.setattr(study20, "ROOT", str(runs))
    assert study20.trained(study20.run_spec("grpo", 1e-5, 0))
    assert study20_report.restore(str(tmp_path / "committed"), str(runs), 20) == []  # nothing twice


def test_a_second_run_of_the_study_stops_with_a_message(tmp_path, monkeypatch, capsys):
    from gpg_em.train import lock
    monkeypatch.setattr(study20, "ROOT", str(tmp_path))
    monkeypatch.setattr(study20, "run_pending", lambda stages: pytest.fail("ran jobs beside a live study"))
    with open(tmp_path / lock.LOCK_NAME, "w") as f:
        json.dump(lock.owner(), f)  # held by a live process: this one
    assert study20.main(["run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"study20: {tmp_path}: in use by pid {os.getpid()}") and "\n" not in err
    os.remove(tmp_path / lock.LOCK_NAME)
    monkeypatch.setattr(study20, "run_pending", lambda stages: 0)
    assert study20.main(["run"]) == 0 and not (tmp_path / lock.LOCK_NAME).exists()  # taken, then released


def test_restore_leaves_out_a_run_whose_test_is_pending(tmp_path, monkeypatch, capsys):
    """The committed results hold no checkpoints: a chosen-rate run trained but not yet tested must train again
    (restored, its test would find nothing to evaluate); the other runs come back."""
    low, high = study20.LEARNING_RATES
    monkeypatch.setattr(study20, "ROOT", str(tmp_path / "out" / "runs"))
    _finish(study20.run_spec("grpo", low, 0), 0.3)
    _finish(study20.run_spec("grpo", high, 0), 0.1)  # not chosen: never tested, needed for the choice
    _finish(study20.run_spec("grpo", low, 1), 0.3)  # chosen rate, test pending
    with open(study20.test_path(study20.run_spec("grpo", low, 0)), "w") as f:
        f.write("{}")
    monkeypatch.setattr(study20, "ROOT", str(tmp_path / "runs"))
    assert study20.main(["restore", "--out", str(tmp_path / "out")]) == 0
    restored = sorted(os.listdir(tmp_path / "runs" / "chain_sum"))
    assert restored == [f"grpo__lr={low:g}__seed0", f"grpo__lr={high:g}__seed0"]
    assert "left out" in capsys.readouterr().out
    assert f"train grpo__lr={low:g}__seed1" in [j.name for j in study20.jobs() if not j.done]


def test_a_torn_test_file_stops_the_report_with_a_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study20, "ROOT", str(tmp_path / "runs"))
    run = study20.run_spec("grpo", study20.LEARNING_RATES[0], 0)
    _finish(run, 0.3)
    with open(study20.test_path(run), "w") as f:
        f.write('{"results": {"greedy": ')  # cut mid-write by hand
    assert study20.main(["report", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    named = os.path.join(os.path.basename(os.path.dirname(study20.test_path(run))), "test_eval.json")
    assert err.startswith("study20: ") and f"{named}: not valid JSON" in err and "\n" not in err
    with pytest.raises(ValueError):
        study20.main(["report", "--out", str(tmp_path / "out"), "--debug"])


def test_copied_flags_mark_wrong_answers_that_repeat_a_number_of_the_question():
    from study_copying import copied_flags
    questions = ["What is 59 * 19?", "What is 4 * 5?", "What is 4 * 5?", "Sum 1,200 and 3", "What is 7 * 8?"]
    questions.append("What is 123456789012345678901 + 1?")
    answers = ["19", "20", "5.0", "1200", None, "123456789012345678902"]
    golds = ["1121", "20", "20", "1203", "56", "5"]
    # 19 is an operand (wrong, copied); 20 is right; 5.0 == 5 (copied); 1,200 reads as 1200 (copied); no answer
    # the last is wrong but no copy: a 21-digit answer must not round onto the 21-digit operand
    np.testing.assert_array_equal(copied_flags(questions, answers, golds), [1, 0, 1, 1, 0, 0])


def test_copying_table_regenerates_the_questions_from_the_eval_spec():
    import reasoning_gym
    from study_copying import copying_rows
    spec = {"kind": "reasoning_gym", "task": "products", "seed": 7, "size": 6,
            "options": {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2}}
    data = reasoning_gym.create_dataset("products", seed=7, size=6, **spec["options"])
    operands = [re.findall(r"\d+", data[i]["question"])[0] for i in range(6)]

    def evaluation(copy_first: int):  # the first `copy_first` problems answer an operand, the rest the gold
        rows = [{"index": i, "gold": data[i]["answer"], "correct": [int(i >= copy_first)],
                 "answers": [operands[i] if i < copy_first else data[i]["answer"]]} for i in range(6)]
        return {"problems": spec, "results": {"greedy": {"problems": rows}}}

    runs = [{"method": "em_rl_token", "seed": s, "test": evaluation(c)} for s, c in ((0, 3), (1, 3), (2, 6))]
    rows = copying_rows(runs, ["em_rl_token"], evaluation(0))
    assert rows[2] == "| base model | - | 0.000 | 0.000 [0.000, 0.000] | - | - |"
    cells = [c.strip() for c in rows[3].split("|")[1:-1]]
    assert cells[:3] == ["em_rl_token", "3", "0.667"] and cells[3].startswith("0.667 [")
    assert cells[4] == "0.500 / 0.500 / 1.000"  # seed 2 answers every problem with an operand
    assert cells[5].startswith("0.667 [") and cells[5].endswith("*")  # every copy is new against the base
    other = evaluation(0)
    other["results"]["greedy"]["problems"][4]["gold"] = "1"  # not what the spec generates
    with pytest.raises(ValueError, match=r"regenerated problem 4 gives .* the eval's gold is '1'"):
        copying_rows(runs, ["em_rl_token"], other)


def _test_eval(path, greedy):
    with open(path, "w") as f:
        json.dump({"results": {"greedy": {"problems": [{"correct": [c]} for c in greedy]},
                               "avg": {"problems": [{"correct": [1, 0]}] * len(greedy), "k": 2, "entropy_mean": 0.1,
                                       "completion_length_mean": 6.0, "metrics": {"pass@2": 0.5, "maj@2": 0.5},
                                       "wall_seconds": 1.0}}}, f)


def test_a_rate_check_on_task_two_is_tested_but_never_chosen(tmp_path, monkeypatch):
    monkeypatch.setattr(study20, "ROOT", str(tmp_path / "runs"))
    low, high = study20.LEARNING_RATES
    check = study20.RATE_CHECK["em_rl_token"]
    task2 = lambda lr, seed: study20.run_spec("em_rl_token", lr, seed, study20.PRODUCTS)
    assert [j.blocked for j in study20.jobs() if j.stage == "ratecheck"] == [True] * len(study20.SEEDS)
    _finish(study20.run_spec("em_rl_token", low, 0), 0.30)  # chain_sum: the smaller shared rate wins
    _finish(study20.run_spec("em_rl_token", high, 0), 0.10)
    jobs = [j for j in study20.jobs() if j.stage == "ratecheck"]
    assert [j.name for j in jobs] == [f"{kind} {task2(check, s).name}" for s in study20.SEEDS
                                      for kind in ("train", "test ")]
    assert [j.blocked for j in jobs] == [False, True] * len(study20.SEEDS)  # a test waits for its training
    _finish(task2(low, 0), 0.09)
    _finish(task2(check, 0), 0.40)  # better on validation, yet only a check
    _test_eval(study20.test_path(task2(low, 0)), [1, 0, 0, 0])
    _test_eval(study20.test_path(task2(check, 0)), [1, 1, 1, 0])
    out = tmp_path / "out"
    study20_report.report(str(tmp_path / "runs"), str(out), methods=["em_rl_token"])
    products = (out / "results.md").read_text().split("## products")[1]
    grid, tested = products.split("### Rate check, tested")
    assert f"| em_rl_token | {low:g} | 1 | 0.250 [" in grid  # the grid's test table reads chain_sum's rate
    assert f"{check:g}" not in grid.split("### Test")[1]
    assert f"| em_rl_token | {check:g} | 0 | 0.100 | 0.400 | 0.500 | 0.250 |  |" in grid
    assert f"| em_rl_token | {low:g} | 0 | 0.100 | 0.090 | 0.500 | 0.250 | yes |" in grid
    assert "Paired greedy differences" not in grid  # one method: no pairs to compare
    rows = [line for line in tested.splitlines() if line.startswith("| em_rl_token at")]
    assert rows[0].startswith(f"| em_rl_token at {low:g} | {low:g} | 1 | 0.250 [")
    assert rows[1].startswith(f"| em_rl_token at {check:g} | {check:g} | 1 | 0.750 [")
    assert f"- em_rl_token at {check:g} - em_rl_token at {low:g} = 0.500 [" in tested  # 2 of 4 problems gained
    # without the selection task beside it, a method with several rates here has no rate to read
    shutil.rmtree(out / "runs" / "chain_sum")
    task_root = str(out / "runs" / "products")
    runs = study20_report.load_runs(task_root)
    assert study20_report.selection_task_rates(task_root, runs, ["em_rl_token"], selected=False) == {}
