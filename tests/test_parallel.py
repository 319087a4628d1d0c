"""Scale-out: sharded update step and sampler on 8 fake CPU devices equal the single-device run; two
processes (CPU collectives) train like one; `gpg-em plan` reports per-device memory; mesh config errors.

The 8-device checks run in a subprocess: XLA_FLAGS must be set before JAX starts its backend, and the
rest of the test session runs on one device."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from gpg_em.configuration import ConfigError, get
from gpg_em.models import init_params
from gpg_em.parallel import mesh_shape
from gpg_em.train.loop import Trainer
from parallel_checks import CFG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
TINY = os.path.join(ROOT, "configs", "tiny.py")
TOL = 1e-5


def _run(args, devices: int, extra_env=None, timeout=600):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([TESTS, ROOT]), **(extra_env or {}))
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def eight_devices():
    proc = _run([os.path.join(TESTS, "parallel_checks.py")], devices=8)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("mesh", ["8,1,1", "1,8,1", "2,2,2", "1,2,4"])
def test_update_step_on_mesh_equals_single_device(eight_devices, mesh):
    r = eight_devices["meshes"][mesh]
    assert eight_devices["moved"] > 100 * TOL and eight_devices["grad_max"] > 100 * TOL  # a real update
    assert r["loss"] <= TOL and r["grads"] <= TOL and r["params"] <= TOL, r


@pytest.mark.parametrize("mesh", ["8,1,1", "1,8,1", "2,2,2", "1,2,4"])
def test_greedy_sampler_tokens_identical_across_meshes(eight_devices, mesh):
    assert eight_devices["tokens_distinct_rows"] > 1  # not a degenerate constant output
    r = eight_devices["meshes"][mesh]
    assert r["tokens_equal"] and "data" in r["token_spec"], r["token_spec"]


def test_cpu_mesh_decode_reads_transposed_kernels_sharded_transposed(eight_devices):
    """On CPU devices the sharded decode reads kernel.T [out, in], sharded with the spec reversed."""
    layout = eight_devices["meshes"]["1,2,4"]["decode_layout"]
    q_shape, q_spec = layout["q_t"]
    assert q_spec == ["tensor", "fsdp"] and q_shape == [64, 32] and layout["q_t_equal"]  # q_proj [32, 64]
    head_shape, head_spec = layout["head_t"]
    assert head_spec == ["tensor", "fsdp"] and head_shape[0] > head_shape[1]  # lm_head [D, V] -> [V, D]


@pytest.mark.parametrize("mesh,fsdp,tensor", [("1,2,4", 2, 4), ("1,8,1", 8, 1), ("2,2,2", 2, 2)])
def test_params_and_adam_moments_are_sharded_not_replicated(eight_devices, mesh, fsdp, tensor):
    placed = eight_devices["meshes"][mesh]["placement"]
    q = placed["q_proj"]  # [embed, heads] -> (fsdp, tensor)
    assert q["spec"] == ["fsdp", "tensor"] and q["n_shards"] == 8
    assert q["shard_shape"] == [q["shape"][0] // fsdp, q["shape"][1] // tensor]
    assert placed["down_proj"]["shard_shape"] == [64 // tensor, 32 // fsdp]  # [mlp, embed]
    mu = placed["adam_mu_q_proj"]  # optimizer state follows its parameter, behind the unsharded layer axis
    assert mu["spec"] == ["None"] + q["spec"] and mu["n_shards"] == 8
    assert mu["shape"] == [2] + q["shape"] and mu["shard_shape"] == [2] + q["shard_shape"]


@pytest.mark.parametrize("shape,n,expected", [((-1, 1, 1), 8, (8, 1, 1)), ((1, -1, 4), 8, (1, 2, 4)),
                                              ([2, 2, 2], 8, (2, 2, 2))])
def test_mesh_shape_resolves_the_rest(shape, n, expected):
    assert mesh_shape(shape, n) == expected


@pytest.mark.parametrize("shape,needle", [((3, 1, 1), "3 devices but there are 8"), ((-1, 3, 1), "do not divide"),
                                          ((1, 8), "expected 3 sizes"), ((-1, -1, 2), "expected 3 sizes")])
def test_bad_mesh_shape_names_the_key(shape, needle):
    with pytest.raises(ValueError) as e:
        mesh_shape(shape, 8)
    assert "mesh.shape" in str(e.value) and needle in str(e.value)


def test_bad_mesh_shape_in_config_is_refused():
    with pytest.raises(ConfigError, match="mesh.shape"):
        get(TINY, [("mesh.shape", "1,2")])
    assert tuple(get(TINY, [("mesh.shape", "1,2,4")]).mesh.shape) == (1, 2, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(tmp_path):
    """2 processes x 2 CPU devices, mesh (1,2,2): each process holds half the rows (fsdp spans the
    processes) and half of every weight; 3 steps with a collective checkpoint round trip in between
    end at the parameters of one process on one device fed the whole batch."""
    import parallel_worker
    worker = os.path.join(TESTS, "parallel_worker.py")
    parallel_worker.main("1,1,1", str(tmp_path / "ref"), str(tmp_path / "ref.npz"))  # here, on one device
    port = _free_port()
    env = lambda i: dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                         TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join([TESTS, ROOT]),
                         GPG_EM_COORDINATOR=f"127.0.0.1:{port}", GPG_EM_NUM_PROCESSES="2", GPG_EM_PROCESS_ID=str(i))
    cmd = [sys.executable, worker, "1,2,2", str(tmp_path / "mp"), str(tmp_path / "mp.npz")]
    procs = [subprocess.Popen(cmd, env=env(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    assert "process 1/2 rows slice(4, 8, None) devices 4" in outs[1][0]
    a, b = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "mp.npz")
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 10
    for k in a.files:
        np.testing.assert_allclose(b[k], a[k], atol=TOL, rtol=0, err_msg=k)
    init = np.asarray(init_params(CFG, jax.random.PRNGKey(0))["embed"])
    assert np.abs(a["['embed']"] - init).max() > 100 * TOL  # the steps moved the weights


# Adam's eps 1e-6 rather than 1e-8: for a gradient entry near 0, m / (sqrt(v) + eps) turns float32
# summation-order noise (~1e-10, which differs between any two partitionings) into up to lr / (4 eps)
# times that in the update; with eps = 1e-8 that alone reaches 2e-5 on one weight after two steps.
_OVERRIDES = ("--config.total_steps=2", "--config.eval_every=2", "--config.checkpoint_every=2",
              "--config.reward.fn=stub_rewards:count_sevens", "--config.optim.learning_rate=3e-3",
              "--config.optim.eps=1e-6")


def _train_cmd(workdir, *extra):
    return ["-m", "gpg_em.cli", "train", "--config", TINY, "--workdir", str(workdir), *_OVERRIDES, *extra]


def _final_state(workdir, like=None):
    """The step-2 train state; `like` (a restored state) gives the target placement: here one device,
    whatever mesh saved it."""
    import orbax.checkpoint as ocp
    target = None if like is None else jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state", "loop"))
    return mngr.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]


def test_two_process_training_loop_equals_one_process(tmp_path):
    """The whole loop on 2 processes x 1 device, mesh (1,2,1): each samples, scores and feeds its own
    prompt and holds half of every weight; the final checkpoint and the losses equal a one-process run."""
    overrides = [tuple(a[len("--config."):].split("=", 1)) for a in _OVERRIDES]
    Trainer(get(TINY, overrides), str(tmp_path / "ref")).train()  # here, on one device
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *_train_cmd(tmp_path / "mp", "--config.mesh.shape=1,2,1")],
                              env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
                                       JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
                                       PYTHONPATH=os.pathsep.join([TESTS, ROOT]),
                                       GPG_EM_COORDINATOR=f"127.0.0.1:{port}", GPG_EM_NUM_PROCESSES="2",
                                       GPG_EM_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    ref_state = _final_state(tmp_path / "ref")
    mp_state = _final_state(tmp_path / "mp", like=ref_state)  # saved sharded over 2 processes, read on 1
    for a, b in zip(jax.tree.leaves(ref_state["params"]), jax.tree.leaves(mp_state["params"])):
        np.testing.assert_allclose(b, a, atol=TOL, rtol=0)
    ref_loss = [r["loss"] for r in map(json.loads, open(tmp_path / "ref" / "metrics.jsonl")) if r["kind"] == "train"]
    mp_loss = [r["loss"] for r in map(json.loads, open(tmp_path / "mp" / "metrics.jsonl")) if r["kind"] == "train"]
    assert len(mp_loss) == 2 and max(ref_loss) > 0 and np.allclose(mp_loss, ref_loss, atol=TOL)


def _plan(mesh):
    proc = _run(["-m", "gpg_em.cli", "plan", "--config", TINY, "--mesh", mesh,
                 "--devices", "8", "--json"], devices=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plan_reports_per_device_memory_that_shrinks_with_fsdp():
    dp, sharded = _plan("8,1,1"), _plan("1,2,4")
    assert dp["devices"] == sharded["devices"] == 8 and sharded["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}
    for part in ("update", "sampler"):
        assert all(v >= 0 for v in sharded[part].values()) and sharded[part]["total"] > 0
    assert dp["update"]["activations"] > 0 and dp["sampler"]["kv_cache"] > 0
    # (8,1,1) replicates every weight; (1,2,4) splits most of them 8 ways
    assert sharded["update"]["params"] < 0.5 * dp["update"]["params"]
    assert sharded["update"]["optimizer"] < 0.5 * dp["update"]["optimizer"]
    assert sharded["sampler"]["kv_cache"] < dp["sampler"]["kv_cache"]  # KV heads split over tensor
