"""Micro-batches that use every device: on 4 fake CPU devices (a subprocess, tests/micro_batch_checks.py)
the micro-batched update step equals the whole-batch step, packed or not, with PPO mini-batches, and its
compiled loop holds only the gradient's all-reduces on a data-parallel mesh; the row layout by hand."""
import json
import os

import numpy as np
import pytest

from gpg_em.train.step import _shard_major, _unsplit
from test_parallel import TESTS, TOL, _run

CASES = ["4,1,1 pack=False mini=1", "4,1,1 pack=True mini=1", "2,2,1 pack=False mini=1", "2,2,1 pack=True mini=1",
         "4,1,1 pack=True mini=2"]
DATA_PARALLEL = [c for c in CASES if c.startswith("4,1,1")]
MOVES = ("all-gather", "all-to-all", "collective-permute")  # collectives that move rows (or weights)


@pytest.fixture(scope="module")
def four_devices():
    proc = _run([os.path.join(TESTS, "micro_batch_checks.py")], devices=4, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_micro_batch_rows_come_from_every_shard():
    """16 rows on 2 shards (rows 0-7, 8-15), 4 micro-batches: micro-batch k = local chunk k of each shard."""
    rows = np.arange(16)
    split = np.asarray(_shard_major(rows, 2, 4))
    np.testing.assert_array_equal(split, [[0, 1, 8, 9], [2, 3, 10, 11], [4, 5, 12, 13], [6, 7, 14, 15]])
    np.testing.assert_array_equal(np.asarray(_unsplit(split, 2)), rows)
    lanes = np.arange(24).reshape(8, 3)  # [lanes, L]: lanes follow the rows' assignment, whole
    np.testing.assert_array_equal(np.asarray(_shard_major(lanes, 2, 4))[1], lanes[[1, 5]])
    np.testing.assert_array_equal(np.asarray(_shard_major(rows, 1, 4)), rows.reshape(4, 4))  # one shard


@pytest.mark.parametrize("case", CASES)
def test_micro_batched_step_equals_whole_batch_on_four_devices(four_devices, case):
    r = four_devices[case]
    assert r["moved"] > 100 * TOL  # a real update: params - gradient, so `params` compares the gradients
    assert r["params"] <= TOL, r
    assert set(r["metrics"]) >= {"loss", "grad_norm"} and max(r["metrics"].values()) <= TOL, r["metrics"]


def test_mini_batches_hold_the_same_rows_on_any_mesh(four_devices):
    """Which rows form a mini-batch changes the result: the 4-device pass equals the one-device one."""
    assert four_devices["4,1,1 pack=True mini=2"]["one_device_params"] <= TOL


@pytest.mark.parametrize("case", DATA_PARALLEL)
def test_data_parallel_micro_batch_loop_only_reduces_gradients(four_devices, case):
    """Mesh (4,1,1), weights replicated: inside the while loops only all-reduces (of gradient partial sums:
    each device computes its own rows of every micro-batch), no gather of rows or outputs; outside, no row
    is moved except (mini-batches) once, to spread each mini-batch over the devices, as its loss needs."""
    loop, top = four_devices[case]["collectives"]["loop"], four_devices[case]["collectives"]["top"]
    assert loop.get("all-reduce", 0) >= 1 and not any(loop.get(op) for op in MOVES), loop
    if case.endswith("mini=1"):
        assert not any(top.get(op) for op in MOVES), top
