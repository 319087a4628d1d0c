"""The RL loop end to end on the tiny random model: learning, resampling, resume, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gpg_em.configuration import ConfigError, get
from gpg_em.train.loop import Trainer
from gpg_em.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def tiny(**overrides):
    return get(TINY, [(k, str(v)) for k, v in overrides.items()])


def train_records(workdir):
    return [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["kind"] == "train"]


def test_gpg_learns_a_stub_reward(tmp_path):
    c = tiny(**{"reward.fn": "stub_rewards:count_sevens", "total_steps": 24, "eval_every": 100,
                "checkpoint_every": 100, "optim.learning_rate": 3e-3, "rollout.group_size": 8})
    Trainer(c, str(tmp_path)).train()
    rewards = [r["reward_mean"] for r in train_records(tmp_path)]
    assert np.mean(rewards[-4:]) > 3 * np.mean(rewards[:4]) + 0.01, rewards


def test_em_ft_lowers_entropy(tmp_path):
    c = tiny(**{"algorithm": "em_ft", "total_steps": 10, "eval_every": 100, "checkpoint_every": 100,
                "optim.learning_rate": 1e-2, "em.ft_reduction": "token_mean"})
    Trainer(c, str(tmp_path)).train()
    ent = [r["sample_entropy_mean"] for r in train_records(tmp_path)]
    assert ent[-1] < 0.8 * ent[0], ent


@pytest.mark.parametrize("algorithm", ["grpo", "dr_grpo", "rloo", "em_rl"])
def test_every_algorithm_runs_a_step(tmp_path, algorithm):
    """Two inner epochs over two PPO mini-batches of one group each: four optimizer steps."""
    c = tiny(**{"algorithm": algorithm, "total_steps": 1, "eval_every": 100, "checkpoint_every": 100,
                "ppo.inner_epochs": 2, "ppo.mini_batches": 2})
    trainer = Trainer(c, str(tmp_path))
    record = trainer.train()
    assert np.isfinite(record["loss"]) and record["step"] == 1
    assert int(trainer.run.state.step) == 4


def test_beta_th_resampling_reaches_threshold_and_respects_limit(tmp_path):
    c = tiny(**{"reward.fn": "stub_rewards:mostly_invalid", "gpg.beta_th": 0.5, "gpg.max_rounds": 6,
                "rollout.prompts_per_step": 4, "total_steps": 3, "eval_every": 100, "checkpoint_every": 100})
    Trainer(c, str(tmp_path)).train()
    for r in train_records(tmp_path):
        assert 1 <= r["rounds"] <= 6
        assert r["hit_round_limit"] or r["batch_valid_groups"] >= 2  # beta_th * groups = 2
        assert r["inverse_alpha"] == pytest.approx(min(1.0, r["batch_valid_groups"] / 4))
    c = tiny(**{"reward.fn": "stub_rewards:mostly_invalid", "gpg.beta_th": 1.0, "gpg.max_rounds": 2,
                "total_steps": 1, "eval_every": 100, "checkpoint_every": 100})
    Trainer(c, str(tmp_path / "limit")).train()
    (r,) = train_records(tmp_path / "limit")
    assert r["rounds"] == 2 and r["hit_round_limit"] is True


def test_tolerated_reward_failures_are_counted_over_rounds(tmp_path):
    """With reward.max_failure_fraction=1 a broken reward scores 0 and the run goes on; every round counts."""
    c = tiny(**{"reward.fn": "stub_rewards:always_raises", "total_steps": 1, "eval_every": 100,
                "reward.max_failure_fraction": 1.0, "gpg.beta_th": 0.5, "gpg.max_rounds": 3})
    record = Trainer(c, str(tmp_path)).train()
    assert record["rounds"] == 3 and record["hit_round_limit"] is True  # all-zero rewards: no valid group
    assert record["reward/always_raises/n_errors"] == 3 * 2 * 4  # 3 rounds x 2 prompts x 4 samples
    assert record["reward/always_raises/failed_fraction"] == 1.0 and record["reward_mean"] == 0.0


def _cli(workdir, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]))
    for name in ("STUB_STALL_WHEN_EXISTS", "STUB_RELEASE_WHEN_EXISTS"):
        env.pop(name, None)
    return [sys.executable, "-m", "gpg_em.cli", "train", "--config", TINY, "--workdir", str(workdir),
            "--config.total_steps=6", "--config.checkpoint_every=2", "--config.eval_every=3",
            "--config.reward.fn=stub_rewards:count_sevens_or_stall", *extra], env


def _final_params(workdir):
    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "loop"))
    state = mngr.restore(6, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    import jax
    return jax.tree.leaves(state["params"])


def _comparable(records):
    # wall times differ, and a resumed process compiles again
    return [{k: v for k, v in r.items() if not k.endswith("_seconds") and not k.startswith("compile")} for r in records]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run the interrupted ones must equal."""
    ref_dir = tmp_path_factory.mktemp("reference")
    cmd, env = _cli(ref_dir)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return ref_dir


def _assert_same_run(ref_dir, cut_dir):
    for a, b in zip(_final_params(ref_dir), _final_params(cut_dir)):
        np.testing.assert_array_equal(a, b)
    ref = _comparable(read_metrics(ref_dir / "metrics.jsonl"))
    assert _comparable(read_metrics(cut_dir / "metrics.jsonl")) == ref


def test_sigkill_and_resume_equals_uninterrupted(tmp_path, reference_run):
    """SIGKILL after checkpoint 4: the reward blocks from step 5 on, so the kill lands mid-step 5 however
    slowly this process polls; rerunning resumes from 4 and ends equal to the uninterrupted run."""
    ref_dir, cut_dir = reference_run, tmp_path / "cut"
    cmd, env = _cli(cut_dir)
    stall = dict(env, STUB_STALL_WHEN_EXISTS=str(cut_dir / "checkpoints" / "4"))
    with open(tmp_path / "stderr.txt", "w") as err:  # a file, not a pipe nobody reads until the end
        proc = subprocess.Popen(cmd, env=stall, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 600
    while not (cut_dir / "checkpoints" / "4").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut_dir / "checkpoints" / "6").exists()
    assert _train_steps(cut_dir) == [1, 2, 3, 4], "the kill should land in step 5"
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # the dead run's lock is stale: taken over
    _assert_same_run(ref_dir, cut_dir)


def test_sigterm_saves_a_checkpoint_and_resume_equals_uninterrupted(tmp_path, reference_run):
    """Preemption: SIGTERM during step 3 finishes that step, saves it (off the checkpoint_every=2 schedule)
    and exits 143 with one line; rerunning the command resumes and ends equal to the uninterrupted run.
    The reward holds step 3 until the signal is sent, so the signal lands there however slowly this polls."""
    cut_dir, release = tmp_path / "cut", tmp_path / "release"
    cmd, env = _cli(cut_dir)
    stall = dict(env, STUB_STALL_WHEN_EXISTS=str(cut_dir / "checkpoints" / "2"), STUB_RELEASE_WHEN_EXISTS=str(release))
    proc = subprocess.Popen(cmd, env=stall, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (cut_dir / "checkpoints" / "2").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    seen = []
    for line in proc.stderr:  # release step 3 only once the handler has logged the request
        seen.append(line)
        if "finishing the current step" in line:
            break
    release.touch()
    err = "".join(seen) + proc.communicate()[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    (line,) = [x for x in err.splitlines() if x.startswith("gpg-em train:")]
    assert "stopped after step 3 of 6" in line and "rerun the same command to resume" in line, line
    assert (cut_dir / "checkpoints" / "3").exists() and not (cut_dir / "train.lock").exists()
    assert _train_steps(cut_dir) == [1, 2, 3]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    _assert_same_run(reference_run, cut_dir)


def _train_steps(workdir):
    return [r["step"] for r in read_metrics(workdir / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.parametrize("override,needle", [
    (("rollout.prompts_per_step", "3"), None),
    (("train.micro_batch_size", "3"), "train.micro_batch_size"),
    (("reward.fn", "no_such_module:fn"), "reward.fn"),
    (("data.source.task", "no_such_task"), "no_such_task"),
    (("algorithm", "ppo"), "algorithm"),
    (("rollout.gropu_size", "4"), "rollout.group_size"),
    (("rollout.min_prompt_width", "0"), "rollout.min_prompt_width"),
])
def test_bad_config_is_refused_with_the_key(tmp_path, override, needle):
    if needle is None:
        get(TINY, [override])  # 3 prompts x 4 samples is fine
        return
    with pytest.raises((ConfigError, ValueError, KeyError)) as e:
        c = get(TINY, [override])
        Trainer(c, str(tmp_path))
    assert needle in str(e.value)
    assert not os.path.exists(tmp_path / "metrics.jsonl")


def test_update_and_sampler_compile_once_per_prompt_bucket(tmp_path, monkeypatch):
    """Across the steps of a run nothing recompiles: one update/log-prob executable per distinct
    (prompt bucket: powers of two >= 16, packed width: multiples of train.pack_multiple), one decode
    executable per distinct sampler shape, whatever the steps."""
    from gpg_em.rollout import sampler
    c = tiny(**{"algorithm": "grpo", "total_steps": 4, "eval_every": 2, "checkpoint_every": 100,
                "ppo.inner_epochs": 2, "train.pack_multiple": 8})
    trainer = Trainer(c, str(tmp_path))
    update, logprobs, decode = trainer.run.update, trainer.run.logprobs, sampler.decode
    widths, decode_shapes, decode_before = [], [], decode._cache_size()

    def recording_update(state, arrays, rng):
        widths.append((arrays["prompt_ids"].shape[1], arrays["pack_index"].shape[1]))
        return update(state, arrays, rng)

    def recording_decode(params, state, min_live=0, *, cfg, sampling):
        decode_shapes.append((state.tokens.shape, state.prompt_mask.shape, sampling))
        return decode(params, state, min_live, cfg=cfg, sampling=sampling)

    trainer.run.update = recording_update
    monkeypatch.setattr(sampler, "decode", recording_decode)
    trainer.train()
    assert len(widths) == 4 * 2 and len(decode_shapes) >= 4  # 4 steps x 2 inner epochs; rollouts + evals
    assert update._cache_size() == len(set(widths)) and logprobs._cache_size() == len(set(widths))
    # (the decode cache is process-wide: earlier tests may already hold some of these shapes)
    assert decode._cache_size() - decode_before <= len(set(decode_shapes)) < len(decode_shapes)


_CACHE_PROBE = """
import collections, sys, tempfile
import jax.monitoring
events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name]))
from gpg_em.configuration import get
from gpg_em.train.loop import Trainer
c = get(sys.argv[1], [("total_steps", "2"), ("eval_every", "100"), ("checkpoint_every", "100"),
                      ("compilation_cache_dir", sys.argv[2])])
Trainer(c, tempfile.mkdtemp()).train()
print("EVENTS", events["/jax/compilation_cache/cache_hits"], events["/jax/compilation_cache/cache_misses"])
"""


def test_second_run_compiles_nothing(tmp_path):
    """The persistent compilation cache (config key compilation_cache_dir) serves every executable of a rerun."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT]))
    counts = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE, TINY, str(tmp_path / "xla")], env=env,
                             check=True, capture_output=True, text=True).stdout
        counts.append([int(x) for x in out.split("EVENTS")[1].split()])
    (hits1, misses1), (hits2, misses2) = counts
    assert misses1 > 0 and hits2 >= misses1 and misses2 == 0, counts
