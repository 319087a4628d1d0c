"""Group advantages against hand-computed numbers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.losses.advantages import group_advantages, masked_mean, sequence_mean_batch_mean


@pytest.fixture(autouse=True)
def _strict_ranks():
    with jax.numpy_rank_promotion("raise"):
        yield


# Three groups of G=3: [0, 1, 2] (mean 1, Bessel std sqrt(2/2) = 1),
# [3, 3, 3] (invalid), [1, 0, 0] (mean 1/3, Bessel std sqrt((4/9+1/9+1/9)/2) = sqrt(1/3)).
REWARDS = [0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 1.0, 0.0, 0.0]
VALID = [True, True, True, False, False, False, True, True, True]
S3 = math.sqrt(1.0 / 3.0)


def test_mean_advantages():
    adv, valid = group_advantages(jnp.array(REWARDS), 3)
    np.testing.assert_allclose(adv, [-1, 0, 1, 0, 0, 0, 2 / 3, -1 / 3, -1 / 3], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(valid, VALID)


def test_rloo_advantages():
    # r_i - mean of the other two: 0 - 1.5, 1 - 1, 2 - 0.5; 1 - 0, 0 - 0.5, 0 - 0.5.
    adv, valid = group_advantages(jnp.array(REWARDS), 3, estimator="rloo")
    np.testing.assert_allclose(adv, [-1.5, 0, 1.5, 0, 0, 0, 1, -0.5, -0.5], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(valid, VALID)


def test_std_normalized_advantages():
    adv, valid = group_advantages(jnp.array(REWARDS), 3, std_normalize=True)
    expected = [-1 / 1.0001, 0, 1 / 1.0001, 0, 0, 0,
                (2 / 3) / (S3 + 1e-4), (-1 / 3) / (S3 + 1e-4), (-1 / 3) / (S3 + 1e-4)]
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(valid, VALID)


@pytest.mark.parametrize("estimator", ["mean", "rloo"])
@pytest.mark.parametrize("std_normalize", [False, True])
def test_invalid_group_exactly_zero(estimator, std_normalize):
    # 0.1 is inexact in float32: the group mean may differ from 0.1 by an ulp.
    adv, valid = group_advantages(jnp.array([0.1, 0.1, 0.1, 0.7, 0.2, 0.1]), 3,
                                  estimator=estimator, std_normalize=std_normalize)
    assert np.all(np.asarray(adv)[:3] == 0.0)
    np.testing.assert_array_equal(valid, [False] * 3 + [True] * 3)


@pytest.mark.parametrize("estimator", ["mean", "rloo"])
@pytest.mark.parametrize("std_normalize", [False, True])
def test_group_size_one_is_all_invalid(estimator, std_normalize):
    adv, valid = group_advantages(jnp.array([1.0, 2.0, 3.0]), 1,
                                  estimator=estimator, std_normalize=std_normalize)
    np.testing.assert_array_equal(adv, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(valid, [False, False, False])


def test_rloo_is_scaled_mean():
    # G/(G-1) (r_i - mean) with G = 4: rewards [1, 0, 0, 0], mean 1/4 -> 4/3 * [3/4, -1/4, ...].
    adv, _ = group_advantages(jnp.array([1.0, 0.0, 0.0, 0.0]), 4, estimator="rloo")
    np.testing.assert_allclose(adv, [1.0, -1 / 3, -1 / 3, -1 / 3], rtol=1e-6)


def test_jit_with_static_options_and_int_rewards():
    fn = jax.jit(group_advantages, static_argnames=("group_size", "estimator", "std_normalize"))
    adv, valid = fn(jnp.array([1, 0, 1, 1]), group_size=2, estimator="rloo")
    np.testing.assert_allclose(adv, [1.0, -1.0, 0.0, 0.0])
    assert adv.dtype == jnp.float32 and valid.dtype == jnp.bool_


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(jnp.zeros(6), 4)
    with pytest.raises(ValueError, match="estimator"):
        group_advantages(jnp.zeros(4), 2, estimator="median")


def test_masked_reductions_empty_mask_is_zero():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    mask = jnp.array([[1, 0], [0, 0]])
    assert float(masked_mean(x, mask)) == 1.0
    # per-row means [1, 0], batch mean 0.5.
    assert float(sequence_mean_batch_mean(x, mask)) == 0.5
    assert float(masked_mean(x, jnp.zeros((2, 2)))) == 0.0
