"""A run never silently loses or poisons work: rewards that fail, non-finite values, the workdir lock,
config changes on resume, metrics files, checkpoint fallback. (Signals: tests/test_train.py.)"""
import json
import logging
import os
import re
import socket
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.configuration import ConfigError, get
from gpg_em.errors import RunStopped, UserError
from gpg_em.rewards import RewardComponent, safe_rewards, score_rewards
from gpg_em.train import guard, resume
from gpg_em.train.lock import WorkdirBusy, WorkdirLock
from gpg_em.train.metrics import DISCARDED, MetricsWriter, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
ENTRY = {"answer": "1"}


# ------------------------------------------------------------------ rewards
@pytest.mark.parametrize("fn,n_errors,first", [
    (lambda p, c, e: (_ for _ in ()).throw(RuntimeError("boom")), 3, "RuntimeError: boom"),
    (lambda p, c, e: [1.0], 3, "returned 1 values for 3 completions"),
    (lambda p, c, e: ["1.0"] * len(c), 3, "TypeError: value 0 is '1.0' (str), not a number"),
    (lambda p, c, e: None, 3, "returned NoneType, not a list of 3 numbers"),
    (lambda p, c, e: [1.0, float("nan"), 2.0], 1, "value 1 is nan"),
    (lambda p, c, e: [1.0, 0.0, 2.0], 0, None),
])
def test_safe_rewards_describe_the_first_failure(fn, n_errors, first):
    values, counts = safe_rewards(fn, [""] * 3, ["a", "b", "c"], [ENTRY] * 3, timeout_s=None)
    assert counts["n_errors"] == n_errors and counts["first_error"] == first
    assert np.all(np.isfinite(values))


def test_score_rewards_names_the_failing_component():
    comps = [RewardComponent("good", lambda p, c, e: [1.0] * len(c)),
             RewardComponent("bad", lambda p, c, e: [float("inf")] + [0.0] * (len(c) - 1))]
    total, metrics, failures = score_rewards(comps, ["", ""], ["a", "b"], [ENTRY] * 2, timeout_s=None)
    assert total.tolist() == [1.0, 1.0]
    assert [(f.name, f.n_errors, f.first_error) for f in failures] == [("bad", 1, "value 0 is inf")]


def _failure(name, n, first="RuntimeError: x"):
    from gpg_em.rewards import RewardFailure
    return RewardFailure(name, n, 0, first)


def test_reward_failures_count_every_round_of_a_step():
    f = guard.RewardFailures(0.25, "step 3")
    f.add([_failure("r", 1, "first")], 8)  # round 1: 1 of 8
    f.add([], 8)  # round 2: clean
    assert f.error() is None and f.metrics() == {"reward/r/failed_fraction": 1 / 16}
    f.add([_failure("r", 6, "second")], 8)  # 7 of 24 > 0.25, counted over every round
    err = f.error()
    assert err.startswith("step 3: reward 'r' failed on 7 of 24 samples (first: first)")
    assert "reward.max_failure_fraction=0.25" in err


def test_any_reward_failure_stops_by_default():
    f = guard.RewardFailures(0.0, "step 1")
    f.add([_failure("other_signature", 1, "TypeError: missing argument")], 64)
    assert "reward 'other_signature' failed on 1 of 64 samples (first: TypeError: missing argument)" in f.error()
    with pytest.raises(guard.RewardError, match="other_signature"):
        guard.stop_on_reward_failures(f)


# ------------------------------------------------------------------ non-finite values
def test_non_finite_metrics_and_params_are_found():
    assert guard.nonfinite_metrics({"loss": float("nan"), "grad_norm": 1.0, "lr": float("inf")}) == ["loss=nan"]
    assert guard.params_finite({"a": jnp.ones(3), "b": {"c": jnp.zeros((2, 2)), "i": jnp.arange(3)}})
    assert not guard.params_finite({"a": jnp.ones(3), "b": {"c": jnp.array([[0.0, jnp.inf]])}})
    with pytest.raises(guard.NonFiniteError, match=r"step 7: non-finite grad_norm=inf.*last checkpoint: step 6"):
        guard.check_update({"step": 7, "loss": 1.0, "grad_norm": float("inf")}, {"a": jnp.ones(2)}, 6)
    with pytest.raises(guard.NonFiniteError, match=r"non-finite parameters.*last checkpoint: none yet"):
        guard.check_update({"step": 1, "loss": 1.0, "grad_norm": 1.0}, {"a": jnp.array([jnp.nan])}, None)


def test_keep_checkpoints_zero_is_refused():
    from gpg_em.train import checkpoint as ckpt
    with pytest.raises(ConfigError, match="keep_checkpoints"):
        get(TINY, [("keep_checkpoints", "0")])
    with pytest.raises(UserError, match="keep_checkpoints=0"):
        ckpt.manager("/nonexistent", 0)
    with pytest.raises(ConfigError, match="reward.max_failure_fraction"):
        get(TINY, [("reward.max_failure_fraction", "1.5")])


# ------------------------------------------------------------------ the workdir lock
def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_refuses_a_live_holder_and_replaces_a_stale_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "train.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(WorkdirBusy, match=f"in use by pid {holder.pid} on host {socket.gethostname()}"):
            WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "train.lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with WorkdirLock(str(tmp_path)):
        assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirBusy, match=f"pid {os.getpid()}"):
            WorkdirLock(str(tmp_path)).acquire()  # a second run in this very process
    assert not (tmp_path / "train.lock").exists()


def test_lock_of_another_host_is_not_guessed_stale(tmp_path):
    (tmp_path / "train.lock").write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere-vm"}))
    with pytest.raises(WorkdirBusy, match=r"host elsewhere-vm.*delete .*train.lock"):
        WorkdirLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / "train.lock").read_text())["host"] == "elsewhere-vm"


# ------------------------------------------------------------------ config changes on resume
def test_config_changes_are_named_and_free_keys_pass():
    saved = {"algorithm": "gpg", "total_steps": 10, "optim": {"learning_rate": 1e-6, "b1": 0.9},
             "train": {"remat": True}, "mesh": {"shape": [-1, 1, 1]}}
    current = {"algorithm": "grpo", "total_steps": 20, "optim": {"learning_rate": 1e-5, "b1": 0.9},
               "train": {"remat": False}, "mesh": {"shape": [1, 2, 1]}}
    diff = resume.changes(saved, current)
    assert [k for k, _, _ in diff] == ["algorithm", "mesh.shape", "optim.learning_rate", "total_steps", "train.remat"]
    assert [k for k, _, _ in resume.refused(diff, "")] == ["algorithm", "optim.learning_rate"]
    assert [k for k, _, _ in resume.refused(diff, "optim")] == ["algorithm"]
    assert resume.refused(diff, "algorithm, optim.learning_rate") == []
    assert resume.refused(diff, "*") == []
    assert [k for k, _, _ in resume.refused(diff, "optim.learning")] == ["algorithm", "optim.learning_rate"]


def test_check_config_refuses_naming_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"algorithm": "gpg", "seed": 0}))
    with pytest.raises(UserError, match=r"algorithm: 'gpg' -> 'grpo'.*allow_config_changes=algorithm"):
        resume.check_config(str(tmp_path), json.dumps({"algorithm": "grpo", "seed": 0}), "")
    assert resume.check_config(str(tmp_path), json.dumps({"algorithm": "grpo", "seed": 0}), "algorithm") == [
        ("algorithm", "gpg", "grpo")]


def test_keys_added_since_the_run_started_pass_only_at_their_default(tmp_path):
    # configs/base.py's kv_dtype default is "auto" (written here by hand, not read from the code)
    (tmp_path / "config.json").write_text(json.dumps({"algorithm": "gpg", "rollout": {"group_size": 8}}))
    now = {"algorithm": "gpg", "rollout": {"group_size": 8, "kv_dtype": "auto"}}
    assert resume.check_config(str(tmp_path), json.dumps(now), "") == [("rollout.kv_dtype", None, "auto")]
    now["rollout"]["kv_dtype"] = "bfloat16"
    with pytest.raises(UserError, match=r"rollout.kv_dtype: None -> 'bfloat16'"):
        resume.check_config(str(tmp_path), json.dumps(now), "")
    now["rollout"]["not_a_base_key"] = 1  # unknown to configs/base.py: refused as before
    with pytest.raises(UserError, match=r"rollout.not_a_base_key"):
        resume.check_config(str(tmp_path), json.dumps(now), "")


def test_an_older_runs_config_reads_with_the_keys_added_since(tmp_path):
    from gpg_em.eval.policy import read_run_config
    # a run made before train.attention_block / rollout.decode_slots existed, with its own values elsewhere
    (tmp_path / "config.json").write_text(json.dumps(
        {"algorithm": "grpo", "train": {"remat": False}, "rollout": {"group_size": 4}, "model": {"tiny": {"x": 1}}}))
    c = read_run_config(str(tmp_path))
    assert (c.algorithm, c.train.remat, c.rollout.group_size, c.model.tiny.x) == ("grpo", False, 4, 1)
    assert (c.train.attention_block, c.rollout.decode_slots, c.rollout.kv_dtype) == (512, 0, "auto")


# ------------------------------------------------------------------ metrics.jsonl
def test_torn_last_line_is_dropped_and_cut_records_kept(tmp_path):
    lines = [{"kind": "eval", "step": 0}, {"kind": "train", "step": 1}, {"kind": "train", "step": 2}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"kind": "train", "st'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_metrics(tmp_path / "metrics.jsonl") == lines
    MetricsWriter(str(tmp_path), resume_step=1, tensorboard=False).close()
    assert read_metrics(tmp_path / "metrics.jsonl") == lines[:2]
    discarded = (tmp_path / DISCARDED).read_text().splitlines()
    assert discarded == [json.dumps(lines[2]), '{"kind": "train", "st']


def test_fresh_start_keeps_an_earlier_attempts_metrics(tmp_path):
    old = [{"kind": "eval", "step": 0, "x": 1}, {"kind": "train", "step": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    MetricsWriter(str(tmp_path), resume_step=0, tensorboard=False).close()
    assert read_metrics(tmp_path / "metrics.jsonl") == old[:1]
    assert read_metrics(tmp_path / DISCARDED) == old[1:]


def test_broken_middle_line_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON record"):
        MetricsWriter(str(tmp_path), resume_step=1, tensorboard=False)


# ------------------------------------------------------------------ the command line
def _main_with(monkeypatch, capsys, exc, argv=("export", "--workdir", "w", "--out", "o")):
    from gpg_em import cli

    def command(args, overrides):
        raise exc
    monkeypatch.setitem(cli.COMMANDS, "export", command)
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    return e.value.code, capsys.readouterr().err


def test_cli_prints_one_line_with_the_exit_status(monkeypatch, capsys):
    from gpg_em.errors import Interrupted
    code, err = _main_with(monkeypatch, capsys, UserError("--out o: not empty\n  (details)"))
    assert code == 2 and err == "gpg-em export: --out o: not empty (details) (--debug for the traceback)\n"
    code, err = _main_with(monkeypatch, capsys, guard.NonFiniteError("step 3: non-finite loss=nan"))
    assert code == 1 and err == "gpg-em export: step 3: non-finite loss=nan\n"
    code, err = _main_with(monkeypatch, capsys, Interrupted("SIGTERM: stopped after step 2", 15))
    assert code == 143 and err.count("\n") == 1
    with pytest.raises(UserError):
        _main_with(monkeypatch, capsys, UserError("x"), argv=("export", "--workdir", "w", "--out", "o", "--debug"))


def test_cli_refuses_keep_checkpoints_zero_in_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "gpg_em.cli", "train", "--config", TINY, "--workdir", str(tmp_path),
                          "--config.keep_checkpoints=0"], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "keep_checkpoints" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------ the trainer (tiny model)
def tiny(**overrides):
    return get(TINY, [(k, str(v)) for k, v in {"eval_every": 100, **overrides}.items()])


def _params(workdir, step):
    import jax
    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "loop"))
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return jax.tree.leaves(state["params"])


def _steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir of two steps of the tiny config, checkpoints at steps 1 and 2."""
    from gpg_em.train.loop import Trainer
    workdir = str(tmp_path_factory.mktemp("trained"))
    Trainer(tiny(total_steps=2, checkpoint_every=1), workdir).train()
    assert _steps(workdir) == [1, 2]
    return workdir


@pytest.fixture
def workdir(trained, tmp_path):
    import shutil
    shutil.copytree(trained, tmp_path / "run")
    return str(tmp_path / "run")


def test_nan_stops_before_saving_and_config_changes_need_leave(workdir):
    from gpg_em.train.loop import Trainer
    metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
    good = _params(workdir, 2)
    with pytest.raises(UserError, match=r"optim.learning_rate: 1e-03 -> nan|optim.learning_rate: 0.001 -> nan"):
        Trainer(tiny(**{"total_steps": 4, "checkpoint_every": 1, "optim.learning_rate": "nan"}), workdir).train()
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics_before  # refused before writing
    c = tiny(**{"total_steps": 4, "checkpoint_every": 1, "optim.learning_rate": "nan",
                "resume.allow_config_changes": "optim.learning_rate"})
    with pytest.raises(guard.NonFiniteError, match=r"step 3: non-finite parameters.*last checkpoint: step 2"):
        Trainer(c, workdir).train()
    assert _steps(workdir) == [1, 2]  # nothing non-finite saved, nothing rotated out
    for a, b in zip(good, _params(workdir, 2)):
        np.testing.assert_array_equal(a, b)
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    change = [r for r in records if r["kind"] == "config_change"]
    assert [(r["key"], r["old"], r["new"], r["step"]) for r in change] == [
        ("optim.learning_rate", "0.001", "NaN", 2), ("resume.allow_config_changes", '""', '"optim.learning_rate"', 2),
        ("total_steps", "2", "4", 2)]
    assert not os.path.exists(os.path.join(workdir, "train.lock"))


def _truncate_state(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(max(os.path.getsize(os.path.join(root, f)) // 3, 1))


def _nan_checkpoint(trainer, workdir):
    import jax
    trainer.restore()
    trainer.run.state = trainer.run.state.replace(
        params=jax.tree.map(lambda x: x * jnp.nan, trainer.run.state.params))
    trainer.save(3)


@pytest.mark.parametrize("damage", ["truncated", "no_state", "empty", "nan"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(workdir, damage, capfd, caplog):
    import shutil
    from gpg_em.train.loop import Trainer
    c = tiny(total_steps=2, checkpoint_every=1)
    newest = os.path.join(workdir, "checkpoints", "2")
    if damage == "truncated":
        _truncate_state(newest)
    elif damage == "no_state":
        shutil.rmtree(os.path.join(newest, "state"))
    elif damage == "empty":
        shutil.rmtree(newest)
        os.makedirs(newest)
    else:
        _nan_checkpoint(Trainer(c, workdir), workdir)
        newest = os.path.join(workdir, "checkpoints", "3")
    trainer = Trainer(c, workdir)
    expected = 2 if damage == "nan" else 1
    assert trainer.restore() == expected
    assert not os.path.exists(newest)
    moved = os.listdir(os.path.join(workdir, "checkpoints_corrupt"))
    assert [m.split("-")[0] for m in moved] == [os.path.basename(newest)]
    err = capfd.readouterr().err
    assert f"checkpoint step {os.path.basename(newest)} is " in err and "trying the previous one" in err
    intact = os.path.join("checkpoints", str(expected), "")
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and intact in r.getMessage()]
    assert not warned, warned  # reading an intact step's metadata logs no orbax warning
    for a, b in zip(_params(workdir, expected), [np.asarray(x) for x in __import__("jax").tree.leaves(
            trainer.run.state.params)]):
        np.testing.assert_array_equal(a, b)


def test_shape_mismatch_is_one_line_naming_the_dimension(workdir):
    from gpg_em.train.loop import Trainer
    c = tiny(**{"total_steps": 2, "model.tiny.intermediate_size": 96, "resume.allow_config_changes": "model"})
    with pytest.raises(UserError) as e:
        Trainer(c, workdir).train()
    msg = str(e.value)
    assert "\n" not in msg and re.search(r"mlp/\w+/kernel is \(\d+, \d+\) in the checkpoint but \(\d+, \d+\) in this "
                                       r"run \(dim \d: 128 vs 96\)", msg), msg
    assert _steps(workdir) == [1, 2]
    c = tiny(**{"total_steps": 2, "optim.skip_nonfinite_updates": 2, "resume.allow_config_changes": "optim"})
    with pytest.raises(UserError, match=r"checkpoints/2: only the checkpoint has the array opt_state/1/0/count; "):
        Trainer(c, workdir).train()  # another optimizer's state: refused, not taken for a broken checkpoint
    assert _steps(workdir) == [1, 2] and not os.path.exists(os.path.join(workdir, "checkpoints_corrupt"))


def test_busy_workdir_is_refused_naming_the_holder(workdir):
    from gpg_em.train.loop import Trainer
    metrics_before = open(os.path.join(workdir, "metrics.jsonl")).read()
    with WorkdirLock(workdir):  # this process holds it, as a concurrent run would
        with pytest.raises(WorkdirBusy, match=f"in use by pid {os.getpid()}"):
            Trainer(tiny(total_steps=3), workdir).train()
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics_before


def test_failing_reward_stops_the_run_naming_it(tmp_path):
    from gpg_em.train.loop import Trainer
    c = tiny(**{"reward.fn": "stub_rewards:other_signature", "total_steps": 2})
    with pytest.raises(guard.RewardError) as e:
        Trainer(c, str(tmp_path)).train()
    assert "eval at step 0: reward 'other_signature' failed on 4 of 4 samples (first: TypeError:" in str(e.value)
    assert not os.listdir(tmp_path / "checkpoints")


# ------------------------------------------------------------------ argument validation
@pytest.mark.parametrize("argv,needle", [
    (["generate", "--prompt", "hi", "--max-new-tokens", "-1"], "generate --max-new-tokens -1: expected an integer >= 1"),
    (["generate", "--prompt", "hi", "--num-samples", "-2"], "generate --num-samples -2: expected an integer >= 1"),
    (["generate", "--prompt", "hi", "--num-samples", "0"], "generate --num-samples 0: expected an integer >= 1"),
    (["generate", "--prompt", "hi", "--top-p", "1.5"], "generate --top-p 1.5: expected in (0, 1]"),
    (["eval", "--model", "m", "--task-options", "{max_terms: 3}"], "--task-options '{max_terms: 3}': not JSON"),
    (["eval", "--model", "m", "--task-options", "[3]"], "--task-options '[3]': expected a JSON object"),
    (["eval", "--model", "m", "-k", "0"], "eval --num-samples 0: expected an integer >= 1"),
])
def test_bad_flags_are_one_line_errors(argv, needle, capsys):
    from gpg_em import cli
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and err.count("\n") == 1, err


def test_context_and_source_size_are_checked():
    from gpg_em.data import make_source
    from gpg_em.rollout.api import check_context
    check_context([[1] * 200], 56, 256)  # exactly the context: fine
    with pytest.raises(ValueError, match=r"prompt 1 has 201 tokens; with max_new_tokens=56 that is 257 > the "
                                         r"model's context of 256"):
        check_context([[1] * 3, [1] * 201], 56, 256)
    with pytest.raises(ValueError, match=r"size=0 \(source config key 'size'\)"):
        make_source({"kind": "reasoning_gym", "task": "chain_sum", "options": {}, "seed": 0, "size": 0})


def test_export_and_eval_refuse_what_would_lose_or_confuse(trained, tmp_path, capsys):
    from gpg_em import cli
    from gpg_em.eval.policy import restore_policy
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--workdir", trained, "--out", str(out)])
    assert e.value.code == 2 and "folder exists and is not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"]
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--workdir", str(tmp_path), "--out", str(tmp_path / "new")])
    assert e.value.code == 2 and "not a training run folder" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"--step 7: .* has no checkpoint of that step; it has steps \[1, 2\]"):
        restore_policy(trained, 7)


def test_skip_nonfinite_updates_leaves_the_state_and_counts():
    """optim.skip_nonfinite_updates=2: NaN gradients leave params and moments as they were, twice in a row;
    a third is applied (and the loop's finiteness check then stops the run)."""
    import optax
    from gpg_em.train.optim import OptimConfig, make_optimizer, skipped_updates
    tx, _ = make_optimizer(OptimConfig(learning_rate=0.1, skip_nonfinite_updates=2))
    params = {"w": jnp.array([1.0, 2.0])}
    state = tx.init(params)
    nan = {"w": jnp.array([jnp.nan, 1.0])}
    for n in (1, 2):
        updates, state = tx.update(nan, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_array_equal(params["w"], [1.0, 2.0])
        assert skipped_updates(state) == (n, n)
    third, _ = tx.update(nan, state, params)  # one too many in a row: applied, the params turn NaN
    assert not guard.params_finite(optax.apply_updates(params, third))
    updates, state = tx.update({"w": jnp.array([1.0, 1.0])}, state, params)  # a finite one resets the run
    assert skipped_updates(state) == (0, 2) and guard.params_finite(optax.apply_updates(params, updates))
    assert skipped_updates(make_optimizer(OptimConfig())[0].init(params)) == (0, 0)
    guard.check_update({"step": 4, "loss": float("nan"), "grad_norm": float("nan")}, params, 3, skipped=True)
