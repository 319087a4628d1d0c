"""The ladder of packed widths (gpg_em/train/shapes.py) and compiling the update ahead (gpg_em/train/ahead.py)."""
import math
import os
from fractions import Fraction

import jax
import numpy as np
import pytest

from gpg_em.configuration import ConfigError, get
from gpg_em.models.shared_prefix import lane_need, packing_index
from gpg_em.train import ahead, resume
from gpg_em.train.loop import Trainer
from gpg_em.train.metrics import read_metrics
from gpg_em.train.shapes import ladder, ladder_width, prompt_widths, shapes_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


@pytest.mark.parametrize("multiple,growth,cap,want", [
    (128, 1.25, 3072, [128, 256, 384, 512, 640, 896, 1152, 1536, 1920, 2432, 3072]),
    (128, 1.0, 1000, [128, 256, 384, 512, 640, 768, 896, 1000]),  # plain multiples, then the cap
    (128, 1.5, 3072, [128, 256, 384, 640, 1024, 1536, 2304, 3072]),
    (128, 2.0, 2048, [128, 256, 512, 1024, 2048]),
    (32, 1.25, 128, [32, 64, 96, 128]),
    (128, 1.25, 100, [100]),  # a cap below one multiple
])
def test_ladder_rungs(multiple, growth, cap, want):
    """Hand-computed: r_(k+1) = max(r_k + m, m * ceil(g * r_k / m)), e.g. 640 * 1.25 = 800 -> 896."""
    assert ladder(multiple, growth, cap) == want


@pytest.mark.parametrize("multiple,growth", [(128, 1.0), (128, 1.25), (128, 1.1), (64, 1.5), (16, 1.3), (96, 2.0)])
def test_width_holds_the_need_within_the_growth_factor(multiple, growth):
    """need <= width <= m * ceil(g * need / m) for every need up to the cap (exact rational arithmetic)."""
    cap = 40 * multiple + 7
    rungs = ladder(multiple, growth, cap)
    g = Fraction(growth).limit_denominator(1000)
    for need in range(1, cap + 1):
        width = ladder_width(need, rungs)
        bound = multiple * math.ceil(g * need / multiple)
        assert need <= width <= min(cap, max(bound, need)), (need, width)
        assert width in rungs


def test_prompt_widths_and_the_startup_count():
    assert prompt_widths(128, 512) == [128, 256, 512]
    assert prompt_widths(16, 100) == [16, 32, 64, 128]
    assert prompt_widths(512, 300) == [512]
    line = shapes_line([128, 256, 384], [128, 256], ahead=False)
    assert "6 shapes" in line and "compile ahead off" in line
    assert "2 shapes" in shapes_line(None, [128, 256], ahead=True)


def test_lane_need_matches_the_packing():
    """The need is the longest lane's slots: a packing of that width fits, one slot narrower does not."""
    rng = np.random.default_rng(0)
    mask = (np.arange(12)[None] < rng.integers(0, 17, size=(16, 1))).astype(np.int32)
    for lanes in (1, 2, 4):
        need = lane_need(mask, 4, lanes)
        packing_index(mask, 4, need, lanes)
        with pytest.raises(ValueError):
            packing_index(mask, 4, need - 1, lanes)


def test_compile_ahead_setting_and_config_keys():
    assert ahead.enabled("auto", "gpu") and not ahead.enabled("auto", "cpu")
    assert ahead.enabled("true", "cpu") and not ahead.enabled("False", "tpu") and ahead.enabled(True, "cpu")
    with pytest.raises(ValueError):
        ahead.enabled("sometimes", "gpu")
    with pytest.raises(ConfigError, match="train.compile_ahead"):
        get(TINY, [("train.compile_ahead", "yes")])
    with pytest.raises(ConfigError, match="train.pack_growth"):
        get(TINY, [("train.pack_growth", "0.9")])
    diff = [("train.pack_growth", 1.25, 1.5), ("train.compile_ahead", "auto", "true")]
    assert resume.refused(diff, "") == []  # execution only: a resume may change them


def test_nearest_rungs_first():
    assert ahead.nearest_first([32, 64, 96, 128], 64) == [96, 32, 128]
    assert ahead.nearest_first([32, 64, 96, 128], 128) == [96, 64, 32]


# completion tokens kept per row at each step (of 12): two groups of 4 rows in one lane, the first group's
# slots rounded up to a multiple of 4 (prompt_block(12)), need 8 * KEEP = 16, 40, 80 slots -> widths 32, 64, 96
# of the ladder 32, 64, 96 (cap 8 rows x 12 tokens); a row that stopped sooner keeps its own length
KEEP = (2, 5, 10)


def run_tiny(tmp_path, compile_ahead: str):
    c = get(TINY, [("total_steps", str(len(KEEP))), ("eval_every", "100"), ("checkpoint_every", "100"),
                   ("compilation_cache_dir", ""), ("rollout.min_prompt_width", "512"), ("algorithm", "em_rl"),
                   ("ppo.inner_epochs", "2"), ("rollout.max_new_tokens", "12"), ("train.pack_multiple", "32"), ("train.pack_growth", "1.25"),
                   ("train.compile_ahead", compile_ahead)])
    trainer = Trainer(c, str(tmp_path))
    assert trainer.rungs == [32, 64, 96] and trainer.ahead.on == (compile_ahead == "true")
    collect, pack_index, widths = trainer.collect, trainer.pack_index, []

    def collect_shorter(step):
        batch, info = collect(step)
        batch["completion_mask"] = batch["completion_mask"] * (np.arange(12)[None] < KEEP[step])
        trainer.ahead.wait()  # the compiles queued so far are done before the step needs them
        return batch, info

    def recording_pack_index(mask):
        index = pack_index(mask)
        widths.append(index.shape[1])
        return index

    trainer.collect, trainer.pack_index = collect_shorter, recording_pack_index
    initial = jax.tree.map(np.array, trainer.run.state.params)
    trainer.train()
    records = [r for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if r["kind"] == "train"]
    params = jax.tree.map(np.asarray, trainer.run.state.params)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, initial, params)))  # the run trained
    return params, records, widths


def test_compile_ahead_is_exact_and_new_widths_compile_nothing_in_the_step(tmp_path):
    params, records, widths = run_tiny(tmp_path / "jit", "false")
    params_ahead, records_ahead, widths_ahead = run_tiny(tmp_path / "ahead", "true")
    assert widths == widths_ahead and len(set(widths)) >= 3, widths
    jax.tree.map(np.testing.assert_array_equal, params, params_ahead)  # bit-identical
    assert [r["loss"] for r in records] == [r["loss"] for r in records_ahead]
    assert all(r["compiles_ahead"] == 0 for r in records)
    # step 1 compiles in the step, then the other 2 widths x (update, old log-probs) compile ahead
    assert records_ahead[0]["compiles"] > 0 and sum(r["compiles_ahead"] for r in records_ahead) >= 4
    new = [i for i in range(1, len(widths)) if widths[i] not in widths[:i]]
    assert new and all(records[i]["compiles"] > 0 for i in new)  # without: each new width compiles
    assert all(records_ahead[i]["compiles"] == 0 for i in new), [r["compiles"] for r in records_ahead]
