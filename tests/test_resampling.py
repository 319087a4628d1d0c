"""beta_th resampling: threshold, round limit, padding from the last round, whole groups."""
import numpy as np
import pytest

from gpg_em.train.resampling import assemble_batch, count_valid_groups, needs_more, resample

G = 2


def make_round(round_index, valid_groups, n_groups=4):
    """A stub rollout: `ids` = 100 * round + row; valid groups score [1, 0], others [0, 0]."""
    rewards = np.zeros(n_groups * G, dtype=np.float32)
    for g in valid_groups:
        rewards[g * G] = 1.0
    ids = 100 * round_index + np.arange(n_groups * G)
    return {"rewards": rewards, "ids": ids, "tokens": np.stack([ids, ids + 1], axis=1)}


def test_count_valid_groups():
    assert count_valid_groups(np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), 2) == 1
    assert count_valid_groups(np.array([1.0, 2.0, 3.0]), 1) == 0  # G = 1: never valid
    with pytest.raises(ValueError):
        count_valid_groups(np.zeros(5), 2)


def test_needs_more_threshold():
    rounds = [make_round(0, [0])]
    assert needs_more(rounds, G, 4, 0.5)        # 1 < 2
    assert not needs_more(rounds, G, 4, 0.25)   # 1 >= 1
    assert needs_more([], G, 4, 0.0)            # nothing to train on yet
    with pytest.raises(ValueError, match="beta_th"):
        needs_more(rounds, G, 4, 1.5)


def test_mostly_invalid_reaches_threshold_and_pads_from_last_round():
    calls = []

    def rollout(r):  # only group 0 of each round of 4 is valid
        calls.append(r)
        return make_round(r, [0])

    # beta_th 0.5 * 4 groups = 2 valid groups -> two rounds.
    batch, info = resample(rollout, G, 4, 0.5, max_rounds=20)
    assert calls == [0, 1]
    assert info["n_rounds"] == 2 and not info["hit_round_limit"] and not info["short"]
    assert info["n_valid_groups"] == 2 and info["n_padding_groups"] == 2
    assert info["inverse_alpha"] == 0.5
    assert info["round_valid_groups"] == (1, 1)
    # valid: round 0 group 0 (ids 0, 1), round 1 group 0 (100, 101);
    # padding: round 1's invalid groups 1 and 2 (102..105), never round 0's.
    np.testing.assert_array_equal(batch["ids"], [0, 1, 100, 101, 102, 103, 104, 105])
    np.testing.assert_array_equal(batch["rewards"], [1, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch["tokens"][:, 1], batch["ids"] + 1)
    assert count_valid_groups(batch["rewards"], G) == 2


def test_round_limit_respected_and_reported():
    calls = []

    def rollout(r):  # never a valid group
        calls.append(r)
        return make_round(r, [])

    batch, info = resample(rollout, G, 4, 0.5, max_rounds=3)
    assert calls == [0, 1, 2]
    assert info["hit_round_limit"] and info["n_rounds"] == 3
    assert info["n_valid_groups"] == 0 and info["inverse_alpha"] == 0.0
    np.testing.assert_array_equal(batch["ids"], np.arange(200, 208))  # last round only


def test_cut_keeps_earliest_valid_whole_groups():
    def rollout(r):  # 3 of 4 groups valid per round
        return make_round(r, [0, 2, 3])

    # beta_th 1.0: 4 valid groups needed; round 0 has 3, round 1 brings 3 more -> cut to 4.
    batch, info = resample(rollout, G, 4, 1.0)
    assert info["n_rounds"] == 2 and info["n_valid_groups_total"] == 6
    assert info["n_valid_groups"] == 4 and info["n_padding_groups"] == 0
    assert info["inverse_alpha"] == 1.0
    np.testing.assert_array_equal(batch["ids"], [0, 1, 4, 5, 6, 7, 100, 101])
    # whole groups: every pair is rows 2g, 2g+1 of one round.
    pairs = batch["ids"].reshape(-1, G)
    assert np.all(pairs[:, 1] == pairs[:, 0] + 1) and np.all(pairs[:, 0] % 2 == 0)


def test_beta_zero_runs_exactly_one_round():
    calls = []
    batch, info = resample(lambda r: calls.append(r) or make_round(r, []), G, 4, 0.0)
    assert calls == [0] and not info["hit_round_limit"]
    assert len(batch["ids"]) == 8


def test_short_batch_is_reported_not_invented():
    # Two small rounds of 2 groups; 4 wanted. Valid: round 0 group 1; padding: round 1's
    # invalid groups (both) -> 3 groups < 4.
    rounds = [make_round(0, [1], n_groups=2), make_round(1, [], n_groups=2)]
    batch, info = assemble_batch(rounds, G, 4)
    assert info["short"] and info["n_groups"] == 3
    np.testing.assert_array_equal(batch["ids"], [2, 3, 100, 101, 102, 103])
    assert info["inverse_alpha"] == pytest.approx(1 / 3)  # computed on the batch


def test_inconsistent_rounds_raise():
    bad = make_round(1, [0])
    bad["ids"] = bad["ids"][:3]
    with pytest.raises(ValueError, match="leading dim"):
        assemble_batch([make_round(0, [0]), bad], G, 4)
    with pytest.raises(ValueError, match="keys"):
        assemble_batch([make_round(0, [0]), {"rewards": np.zeros(8)}], G, 4)
    with pytest.raises(ValueError, match="max_rounds"):
        resample(lambda r: make_round(r, []), G, 4, 0.5, max_rounds=0)
