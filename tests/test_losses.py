"""GPG, GRPO, Dr.GRPO, RLOO, EM-FT and EM-RL against hand-computed numbers.

Every expected value below is worked out by hand in the comment beside it.
"""
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.losses import (LOSS_INPUTS, LOSSES, dr_grpo_loss, em_ft_loss, em_rl_reward, get_loss,
                           gpg_loss, grpo_loss, rloo_loss)


@pytest.fixture(autouse=True)
def _strict_ranks():
    with jax.numpy_rank_promotion("raise"):
        yield


def close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------- GPG
# G = 2, rewards [1, 0 | 1, 1]: A = [0.5, -0.5, 0, 0], one valid group of two -> inverse_alpha 1/2.
LOGP = jnp.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [-0.5, -0.5, -0.5], [-2.0, -2.0, -2.0]])
R_HALF = jnp.array([1.0, 0.0, 1.0, 1.0])
ONES = jnp.ones((4, 3))
# Unequal lengths 2, 1, 1, 3 tokens (7 in all, 3 in the valid group).
MASK_UNEQUAL = jnp.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]], dtype=bool)


def gpg(logp, mask, rewards, **kw):
    return gpg_loss(logp, mask, rewards, 2, **kw)


def test_gpg_equal_lengths_token_mean_equals_valid_token_mean():
    # l = -logp * A: row 0 -> 0.5 + 1 + 1.5 = 3, row 1 -> -0.5 * 3 = -1.5, rows 2-3 -> 0.
    # token mean 1.5 / 12 = 0.125; AGE / 0.5 -> 0.25; valid-token mean 1.5 / 6 = 0.25.
    loss_age, aux = gpg(LOGP, ONES, R_HALF)
    loss_plain, _ = gpg(LOGP, ONES, R_HALF, age=False)
    loss_valid, aux_v = gpg(LOGP, ONES, R_HALF, aggregation="valid_token_mean")
    close(loss_age, 0.25)
    close(loss_plain, 0.125)
    close(loss_valid, 0.25)
    close(aux["inverse_alpha"], 0.5)
    close(aux["valid_fraction"], 0.5)
    close(aux["loss_unscaled"], 0.125)
    close(aux_v["valid_token_fraction"], 0.5)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in aux.values())


def test_gpg_unequal_lengths_aggregations_differ():
    # row 0: 0.5 + 1 = 1.5, row 1: -0.5; sum 1.0.
    # token mean 1/7, AGE -> (1/7) / 0.5 = 2/7; valid-token mean 1/3 (3 valid tokens).
    loss_age, _ = gpg(LOGP, MASK_UNEQUAL, R_HALF)
    loss_valid, aux = gpg(LOGP, MASK_UNEQUAL, R_HALF, aggregation="valid_token_mean")
    close(loss_age, 2 / 7)
    close(loss_valid, 1 / 3)
    close(aux["valid_token_fraction"], 3 / 7)


@pytest.mark.parametrize("rewards, inverse_alpha, loss", [
    # no invalid group: A = [.5, -.5, -.5, .5]; l rows 3, -1.5, -0.75, 3 -> 3.75 / 12.
    ([1.0, 0.0, 0.0, 1.0], 1.0, 0.3125),
    # one of two invalid: see above.
    ([1.0, 0.0, 1.0, 1.0], 0.5, 0.25),
    # all invalid: no signal, loss exactly 0.
    ([1.0, 1.0, 0.0, 0.0], 0.0, 0.0),
])
def test_gpg_inverse_alpha(rewards, inverse_alpha, loss):
    value, aux = gpg(LOGP, ONES, jnp.array(rewards))
    close(aux["inverse_alpha"], inverse_alpha)
    close(value, loss)


def test_gpg_gradient_matches_hand_formula():
    # d loss / d logp[i,t] = -A_i * mask / (sum(mask) * inverse_alpha) = -A_i * mask / 3.5.
    grad = jax.grad(lambda lp: gpg(lp, MASK_UNEQUAL, R_HALF)[0])(LOGP)
    close(grad, [[-1 / 7, -1 / 7, 0], [1 / 7, 0, 0], [0, 0, 0], [0, 0, 0]])
    # valid-token mean: -A_i * mask / sum(mask * valid) = -A_i * mask / 3.
    grad_v = jax.grad(lambda lp: gpg(lp, MASK_UNEQUAL, R_HALF, aggregation="valid_token_mean")[0])(LOGP)
    close(grad_v, [[-1 / 6, -1 / 6, 0], [1 / 6, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_gpg_std_normalize():
    # A = +-0.5 / (std + 1e-4), Bessel std of [1, 0] = sqrt(0.5): the loss scales by 1 / (std + 1e-4).
    loss, _ = gpg(LOGP, ONES, R_HALF, std_normalize=True)
    close(loss, 0.25 / (math.sqrt(0.5) + 1e-4))


def test_gpg_jit_static_options():
    fn = jax.jit(gpg_loss, static_argnames=("group_size", "std_normalize", "age", "aggregation"))
    loss, aux = fn(LOGP, MASK_UNEQUAL, R_HALF, group_size=2, aggregation="valid_token_mean")
    close(loss, 1 / 3)
    close(aux["inverse_alpha"], 0.5)


def test_gpg_rejects_double_age_switch():
    with pytest.raises(ValueError, match="valid_token_mean"):
        gpg(LOGP, ONES, R_HALF, aggregation="valid_token_mean", age=False)
    with pytest.raises(ValueError, match="aggregation"):
        gpg(LOGP, ONES, R_HALF, aggregation="seq_mean")


# ---------------------------------------------------------------------------- GPG: scale_batch, AGE per micro-step
def test_gpg_scale_batch_divides_by_the_batch_std():
    # rewards [1, 0 | 1, 1]: batch mean 3/4, Bessel var (3 * 1/16 + 9/16) / 3 = 1/4 -> std 1/2.
    # A = [0.5, -0.5, 0, 0] / (0.5 + 1e-4); l = -logp * A, token mean over 12 tokens, AGE / (1/2).
    a = 0.5 / (0.5 + 1e-4)
    loss, aux = gpg(LOGP, ONES, R_HALF, std_normalize=True, scale_batch=True)
    close(aux["advantage_abs_max"], a)
    close(loss, (a * 6 - a * 3) / 12 / 0.5)  # row 0: -(-6) * a; row 1: -(-3) * (-a)
    with pytest.raises(ValueError, match="needs std_normalize"):
        gpg(LOGP, ONES, R_HALF, scale_batch=True)


# G = 2, B = 8. rewards [1, 0 | 0, 1 | 1, 1 | 1, 1]: groups 0, 1 valid (A = [.5, -.5], [-.5, .5]), 2, 3 not.
# Lengths 2, 1, 1, 2 | 2, 2, 2, 2 (14 tokens). Per-token l = -logp * A:
# row 0 (-1, -2) * .5 -> .5 + 1 = 1.5; row 1 (-2) * -.5 -> -1; row 2 (-1) * -.5 -> -.5; row 3 (-1, -1) * .5 -> 1.
# Rows 0-3: sum 1, 6 tokens; rows 4-7: 0, 8 tokens.
AGE_LOGP = jnp.array([[-1.0, -2.0], [-2.0, -9.0], [-1.0, -9.0], [-1.0, -1.0]] + [[-3.0, -3.0]] * 4)
AGE_MASK = jnp.array([[1, 1], [1, 0], [1, 0], [1, 1]] + [[1, 1]] * 4)
AGE_R = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("K,D,expected", [
    (1, 1, 1 / 14 / 0.5),  # whole batch: token mean 1/14, inverse_alpha 2/4
    (2, 1, (1 / 6 / 1.0 + 0.0) / 2),  # step 0: rows 0-3, alpha^-1 = 1; step 1: no valid group, 0
    (1, 2, (1 / 6 + 0.0) / 2 / 0.5),  # one step, two devices: token means 1/6 and 0, alpha^-1 = 2/4
    (2, 2, (0.5 / 3 + 0.5 / 3 + 0 + 0) / 4),  # rows 0-1: 1.5 - 1 over 3 tokens; rows 2-3: 1 - .5 over 3
])
def test_gpg_age_per_micro_step(K, D, expected):
    loss, _ = gpg_loss(AGE_LOGP, AGE_MASK, AGE_R, 2, age_micro_steps=K, age_devices=D)
    close(loss, expected)


def test_gpg_age_per_micro_step_gradient():
    # K = 2: the first micro-step's tokens weigh 1 / (2 steps * 6 tokens * alpha^-1 = 1); d/dlogp = -A / 12.
    grad = jax.grad(lambda lp: gpg_loss(lp, AGE_MASK, AGE_R, 2, age_micro_steps=2)[0])(AGE_LOGP)
    w = 0.5 / 12
    close(grad, [[-w, -w], [w, 0], [w, 0], [-w, -w]] + [[0, 0]] * 4)
    with pytest.raises(ValueError, match="does not split 8 rows"):
        gpg_loss(AGE_LOGP, AGE_MASK, AGE_R, 2, age_micro_steps=3)
    with pytest.raises(ValueError, match="token_mean form"):
        gpg_loss(AGE_LOGP, AGE_MASK, AGE_R, 2, age_micro_steps=2, aggregation="valid_token_mean")


# ---------------------------------------------------------------------------- GRPO
# Two samples, rewards [1, 0]: Bessel std sqrt(0.5), A = +-0.5 / (sqrt(0.5) + 1e-4) = +-a.
A = 0.5 / (math.sqrt(0.5) + 1e-4)
LOGP2 = jnp.array([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
RATIOS = np.array([[1.0, 1.5, 0.5], [0.5, 1.1, 1.5]])
OLD2 = LOGP2 - jnp.log(jnp.array(RATIOS, dtype=jnp.float32))  # exp(logp - old) = RATIOS


def test_grpo_clipping_inside_and_outside_range():
    # row 0 (A = a):  ratio 1 -> -a;  1.5 -> -min(1.5a, 1.2a) = -1.2a (clipped);
    #                 0.5 -> -min(0.5a, 0.8a) = -0.5a (outside the range, not clipped). mean -2.7a/3.
    # row 1 (A = -a): 0.5 -> -min(-0.5a, -0.8a) = 0.8a (clipped); 1.1 -> 1.1a;
    #                 1.5 -> -min(-1.5a, -1.2a) = 1.5a (not clipped). mean 3.4a/3.
    # loss = (-2.7a + 3.4a) / 6 = 0.7a / 6.
    loss, aux = grpo_loss(LOGP2, OLD2, None, jnp.ones((2, 3)), jnp.array([1.0, 0.0]), 2)
    close(loss, 0.7 * A / 6)
    close(aux["clip_fraction"], 2 / 6)
    close(aux["clip_low_fraction"], 1 / 6)
    close(aux["clip_high_fraction"], 1 / 6)
    close(aux["ratio_mean"], 6.1 / 6)
    assert "kl" not in aux


def test_grpo_gradient_zero_on_clipped_tokens():
    # d(-ratio*A)/dlogp = -ratio*A on unclipped tokens, 0 on clipped ones; / (3 tokens * 2 rows).
    grad = jax.grad(lambda lp: grpo_loss(lp, OLD2, None, jnp.ones((2, 3)),
                                         jnp.array([1.0, 0.0]), 2)[0])(LOGP2)
    close(grad, [[-A / 6, 0.0, -0.5 * A / 6], [0.0, 1.1 * A / 6, 1.5 * A / 6]])


def test_grpo_kl_term():
    # On-policy (ratio 1), beta 0.1, ref - logp = d; k3 = exp(d) - d - 1: d = 0 -> 0, d = ln2 -> 1 - ln2.
    # row 0 (2 tokens): (-a + 0) + (-a + 0.1(1 - ln2))  -> / 2;  row 1 (1 token): a + 0.1(1 - ln2).
    logp = jnp.array([[-1.0, -1.0], [-1.0, -1.0]])
    d = jnp.array([[0.0, math.log(2.0)], [math.log(2.0), math.log(3.0)]])
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    k = 1.0 - math.log(2.0)
    fn = lambda lp: grpo_loss(lp, None, logp + d, mask, jnp.array([1.0, 0.0]), 2, kl_coef=0.1)
    loss, aux = fn(logp)
    close(loss, ((-2 * A + 0.1 * k) / 2 + (A + 0.1 * k)) / 2)
    close(aux["kl"], 2 * k / 3)
    close(aux["policy_loss"], 0.0)
    # d/dlogp: -A (ratio 1) + 0.1 * (1 - exp(d)); row 0 / (2 tokens * 2 rows), row 1 / (1 * 2).
    grad = jax.grad(lambda lp: fn(lp)[0])(logp)
    close(grad, [[-A / 4, (-A - 0.1) / 4], [(A - 0.1) / 2, 0.0]])


def test_grpo_kl_without_ref_raises():
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(LOGP2, OLD2, None, jnp.ones((2, 3)), jnp.array([1.0, 0.0]), 2, kl_coef=0.04)


def test_grpo_old_logprobs_are_constant():
    # Passing old = logp must give the on-policy REINFORCE gradient, not 0 (old is stop_gradient).
    grad = jax.grad(lambda lp: grpo_loss(lp, lp, None, jnp.ones((2, 3)),
                                         jnp.array([1.0, 0.0]), 2)[0])(LOGP2)
    close(grad, [[-A / 6] * 3, [A / 6] * 3])


# ---------------------------------------------------------------------------- Dr.GRPO, RLOO
def test_dr_grpo_denominator_is_batch_times_max_length():
    # A = [0.5, -0.5] (no std); on-policy l = -A; sum(l * mask) = -0.5*3 + 0.5*1 = -1;
    # / (B * L_max) = / (2 * 4), with L_max = 4 > T = 3.
    mask = jnp.array([[1, 1, 1], [1, 0, 0]])
    fn = lambda lp: dr_grpo_loss(lp, None, mask, jnp.array([1.0, 0.0]), 2, max_completion_length=4)
    loss, _ = fn(LOGP2)
    close(loss, -1 / 8)
    grad = jax.grad(lambda lp: fn(lp)[0])(LOGP2)
    close(grad, [[-1 / 16] * 3, [1 / 16, 0, 0]])


def test_rloo_loss():
    # G = 3, rewards [0, 1, 2]: A = [0 - 1.5, 1 - 1, 2 - 0.5] = [-1.5, 0, 1.5].
    # row 0 on-policy: l = 1.5 per token, mean 1.5; row 1: 0;
    # row 2: ratio 2 -> -min(2 * 1.5, 1.2 * 1.5) = -1.8 (clipped), 1 token. loss (1.5 + 0 - 1.8) / 3.
    logp = jnp.zeros((3, 2))
    old = jnp.array([[0.0, 0.0], [0.0, 0.0], [-math.log(2.0), 0.0]])
    mask = jnp.array([[1, 1], [1, 0], [1, 0]])
    loss, aux = rloo_loss(logp, old, None, mask, jnp.array([0.0, 1.0, 2.0]), 3)
    close(loss, -0.1)
    close(aux["clip_fraction"], 1 / 4)
    close(aux["advantage_abs_max"], 1.5)


# ---------------------------------------------------------------------------- aggregation, KL clamp, entropy
# RLOO, G = 2, rewards [1, 0]: A = [1 - 0, 0 - 1] = [1, -1]; on-policy l = -A per token;
# lengths 3 and 1 (4 tokens).
MASK_31 = jnp.array([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("aggregation,loss,grad", [
    # seq_mean: (mean(-1,-1,-1) + mean(1)) / 2 = 0; d/dlogp = -A / (|o_i| * B).
    ("seq_mean", 0.0, [[-1 / 6] * 3, [1 / 2, 0, 0]]),
    # token_mean: (-3 + 1) / 4 tokens = -0.5; d/dlogp = -A / 4.
    ("token_mean", -0.5, [[-1 / 4] * 3, [1 / 4, 0, 0]]),
    # fixed_length, L_max = 4: (-3 + 1) / (2 * 4) = -0.25; d/dlogp = -A / 8.
    ("fixed_length", -0.25, [[-1 / 8] * 3, [1 / 8, 0, 0]]),
])
def test_ratio_loss_aggregations(aggregation, loss, grad):
    fn = lambda lp: rloo_loss(lp, None, None, MASK_31, jnp.array([1.0, 0.0]), 2, aggregation=aggregation,
                              max_completion_length=4)[0]
    close(fn(LOGP2), loss)
    close(jax.grad(fn)(LOGP2), grad)


def test_unknown_aggregation_is_named():
    with pytest.raises(ValueError, match="unknown loss aggregation 'token_sum'"):
        grpo_loss(LOGP2, None, None, MASK_31, jnp.array([1.0, 0.0]), 2, aggregation="token_sum")
    with pytest.raises(ValueError, match="fixed_length' needs max_completion_length"):
        grpo_loss(LOGP2, None, None, MASK_31, jnp.array([1.0, 0.0]), 2, aggregation="fixed_length")


def test_k3_kl_clamp():
    # Equal rewards: A = 0, only the KL remains. ref - logp = d; k3 = exp(d) - d - 1:
    # d = 3 -> e^3 - 4 = 16.0855 -> 10 (clamped); d = 0.5 -> e^0.5 - 1.5 = 0.1487213;
    # d = -20 -> 19 + e^-20 -> 10 (clamped); d = 0 -> 0.
    logp = jnp.zeros((2, 2))
    ref = jnp.array([[3.0, 0.5], [-20.0, 0.0]])
    fn = lambda lp: grpo_loss(lp, None, ref, jnp.ones((2, 2)), jnp.array([1.0, 1.0]), 2, kl_coef=0.1,
                              kl_clamp=10.0)
    loss, aux = fn(logp)
    close(loss, 0.1 * ((10 + 0.1487213) / 2 + (10 + 0) / 2) / 2)  # seq_mean
    close(aux["kl"], (10 + 0.1487213 + 10 + 0) / 4)
    # dk3/dlogp = 1 - exp(d), 0 where clamped; * 0.1 / (2 tokens * 2 rows).
    close(jax.grad(lambda lp: fn(lp)[0])(logp), [[0.0, 0.1 * (1 - math.exp(0.5)) / 4], [0.0, 0.0]])
    # Without the clamp the same tokens count in full: e^3 - 4 and 19 + e^-20.
    _, aux = grpo_loss(logp, None, ref, jnp.ones((2, 2)), jnp.array([1.0, 1.0]), 2, kl_coef=0.1)
    close(aux["kl"], (math.exp(3) - 4 + 0.1487213 + 19 + math.exp(-20)) / 4)


def test_dr_grpo_kl():
    # A = [0.5, -0.5]; ref - logp = ln 2 everywhere: k3 = 2 - ln2 - 1 = 1 - ln2 = k.
    # l = -A + 0.1 k; sum over 3 + 1 tokens = -1.5 + 0.5 + 0.4 k; / (B * L_max = 2 * 4).
    k = 1 - math.log(2.0)
    fn = lambda lp: dr_grpo_loss(lp, None, MASK_31, jnp.array([1.0, 0.0]), 2, max_completion_length=4,
                                 ref_logprobs=LOGP2 + math.log(2.0), kl_coef=0.1)
    loss, aux = fn(LOGP2)
    close(loss, (-1 + 0.4 * k) / 8)
    close(aux["kl"], k)
    # d/dlogp: -A + 0.1 (1 - e^{ln 2}) = -A - 0.1, / 8.
    close(jax.grad(lambda lp: fn(lp)[0])(LOGP2), [[-0.075] * 3, [0.05, 0, 0]])
    with pytest.raises(ValueError, match="ref_logprobs"):
        dr_grpo_loss(LOGP2, None, MASK_31, jnp.array([1.0, 0.0]), 2, max_completion_length=4, kl_coef=0.1)


def test_entropy_bonus():
    # RLOO token_mean as above (-0.5) minus 0.01 * token mean of H = (1 + 2 + 3 + 4) / 4 = 2.5.
    h = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    fn = lambda ent: rloo_loss(LOGP2, None, None, MASK_31, jnp.array([1.0, 0.0]), 2, entropies=ent,
                               entropy_coef=0.01, aggregation="token_mean")
    loss, aux = fn(h)
    close(loss, -0.5 - 0.01 * 2.5)
    close(aux["entropy_bonus"], 2.5)
    close(jax.grad(lambda e: fn(e)[0])(h), [[-0.0025] * 3, [-0.0025, 0, 0]])


# ---------------------------------------------------------------------------- EM-FT, EM-RL
def test_em_ft_reductions_and_gradients():
    h = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    # seq_sum: ((1 + 2) + 4) / 2 = 3.5; token_mean: 7 / 3.
    close(em_ft_loss(h, mask)[0], 3.5)
    close(em_ft_loss(h, mask, reduction="token_mean")[0], 7 / 3)
    close(jax.grad(lambda x: em_ft_loss(x, mask)[0])(h), np.asarray(mask) / 2)
    close(jax.grad(lambda x: em_ft_loss(x, mask, reduction="token_mean")[0])(h), np.asarray(mask) / 3)


EM_MASK = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # third completion is empty
EM_LOGP = jnp.array([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [-1.0, -1.0, -1.0]])
EM_H = jnp.array([[0.5, 1.5, 9.0], [2.0, 9.0, 9.0], [9.0, 9.0, 9.0]])


@pytest.mark.parametrize("kind, reduction, expected", [
    ("trajectory", "sum", [-3.0, -4.0, 0.0]),   # -1-2, -4, empty
    ("trajectory", "mean", [-1.5, -4.0, 0.0]),  # -3/2, -4/1, empty -> 0
    ("token", "sum", [-2.0, -2.0, 0.0]),        # -(0.5+1.5), -2, empty
    ("token", "mean", [-1.0, -2.0, 0.0]),       # -2/2, -2/1, empty -> 0
])
def test_em_rl_reward(kind, reduction, expected):
    r = em_rl_reward(EM_MASK, logprobs=EM_LOGP, entropies=EM_H, kind=kind, reduction=reduction)
    close(r, expected)
    assert np.all(np.isfinite(r))
    # No gradient flows through a reward.
    grad = jax.grad(lambda lp, h: jnp.sum(em_rl_reward(EM_MASK, logprobs=lp, entropies=h, kind=kind,
                                                       reduction=reduction)), argnums=(0, 1))(EM_LOGP, EM_H)
    assert all(np.all(np.asarray(g) == 0.0) for g in grad)


def test_em_rl_missing_argument_is_named():
    with pytest.raises(ValueError, match="logprobs"):
        em_rl_reward(EM_MASK, entropies=EM_H, kind="trajectory")
    with pytest.raises(ValueError, match="entropies"):
        em_rl_reward(EM_MASK, logprobs=EM_LOGP, kind="token")


# ---------------------------------------------------------------------------- degenerate batches
RL_LOSSES = {
    "gpg": lambda lp, m, r: gpg_loss(lp, m, r, 2),
    "gpg_valid": lambda lp, m, r: gpg_loss(lp, m, r, 2, aggregation="valid_token_mean"),
    "gpg_std": lambda lp, m, r: gpg_loss(lp, m, r, 2, std_normalize=True),
    "grpo": lambda lp, m, r: grpo_loss(lp, lp - 0.3, None, m, r, 2),
    "dr_grpo": lambda lp, m, r: dr_grpo_loss(lp, lp - 0.3, m, r, 2, max_completion_length=3),
    "rloo": lambda lp, m, r: rloo_loss(lp, lp - 0.3, None, m, r, 2),
}
DEGENERATE = {
    "all_invalid": (ONES, jnp.array([1.0, 1.0, 0.0, 0.0])),
    "fully_masked": (jnp.zeros((4, 3)), R_HALF),
    "fully_masked_all_invalid": (jnp.zeros((4, 3)), jnp.zeros(4)),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize("name", sorted(RL_LOSSES))
def test_degenerate_batches_are_exactly_zero(name, case):
    mask, rewards = DEGENERATE[case]
    fn = RL_LOSSES[name]
    loss, aux = fn(LOGP, mask, rewards)
    grad = jax.grad(lambda lp: fn(lp, mask, rewards)[0])(LOGP)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0.0)
    assert all(np.isfinite(v) for v in aux.values())


@pytest.mark.parametrize("name", sorted(RL_LOSSES))
def test_empty_completion_rows_are_finite(name):
    mask = MASK_UNEQUAL.at[1].set(False).at[2].set(False)
    fn = RL_LOSSES[name]
    loss, aux = fn(LOGP, mask, R_HALF)
    grad = jax.grad(lambda lp: fn(lp, mask, R_HALF)[0])(LOGP)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert np.all(np.asarray(grad)[1:3] == 0.0)
    assert all(np.isfinite(v) for v in aux.values())


def test_kl_and_em_ft_finite_when_fully_masked():
    zeros = jnp.zeros((4, 3))
    for loss_fn in (lambda lp: grpo_loss(lp, None, lp + 1.0, zeros, jnp.zeros(4), 2, kl_coef=0.1),
                    lambda lp: rloo_loss(lp, None, lp + 1.0, zeros, jnp.zeros(4), 2, kl_coef=0.1),
                    lambda h: em_ft_loss(h, zeros),
                    lambda h: em_ft_loss(h, zeros, reduction="token_mean")):
        loss, aux = loss_fn(LOGP)
        grad = jax.grad(lambda x: loss_fn(x)[0])(LOGP)
        assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0.0)
        assert all(np.isfinite(v) for v in aux.values())


# ---------------------------------------------------------------------------- registry
def test_registry_names_and_inputs():
    assert set(LOSSES) == {"gpg", "grpo", "dr_grpo", "rloo", "em_ft"}
    assert get_loss("gpg") is gpg_loss
    with pytest.raises(KeyError, match="unknown loss"):
        get_loss("ppo")
    for name, inputs in LOSS_INPUTS.items():
        params = inspect.signature(LOSSES[name]).parameters
        assert all(k in params for k in inputs), name
