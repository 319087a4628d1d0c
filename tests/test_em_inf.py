"""EM-INF logit optimisation and the adaptive-temperature baseline, alone and inside the sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpg_em.models import completion_logprobs
from gpg_em.rollout import (AdaptiveTemperatureConfig, EMInfConfig, adaptive_tau, adaptive_tau_newton, em_inf_logits,
                            em_inf_logits_fused, entropy_of_logits, generate)
from test_sampler import PROMPT_IDS, tiny


def logits_batch(seed=0, rows=24, vocab=500):
    """Rows from near-uniform to peaked (entropies ~0.05 .. 6 nats), like an LLM's next-token logits."""
    rng = np.random.RandomState(seed)
    scales = np.geomspace(0.1, 12.0, rows)[:, None]
    return jnp.asarray(rng.randn(rows, vocab) * scales, jnp.float32)


def entropy_np(z):
    z = np.asarray(z, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    return -(p * np.log(np.maximum(p, 1e-300))).sum(-1)


# ---------------------------------------------------------------- EM-INF

def em_inf_f64(z, cfg: EMInfConfig):
    """EM-INF in float64 numpy: softmax, entropy, the gradient of H + kl KL(p || q) and Adam, per row, a row
    frozen once its entropy is below delta (checked before each step)."""
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    z = np.asarray(z, np.float64)
    p, x = softmax(z), z.copy()
    m, v, active = np.zeros_like(z), np.zeros_like(z), np.ones(len(z), bool)
    for t in range(1, cfg.n_steps + 1):
        q = softmax(x)
        logq = np.log(q)
        h = -(q * logq).sum(-1)
        active &= h >= cfg.delta
        g = -q * (logq + h[:, None]) + cfg.kl_weight * (q - p)
        m_t, v_t = cfg.b1 * m + (1 - cfg.b1) * g, cfg.b2 * v + (1 - cfg.b2) * g * g
        x_t = x - cfg.lr * (m_t / (1 - cfg.b1 ** t)) / (np.sqrt(v_t / (1 - cfg.b2 ** t)) + cfg.eps)
        a = active[:, None]
        x, m, v = np.where(a, x_t, x), np.where(a, m_t, m), np.where(a, v_t, v)
    return x



def test_em_inf_f64_hand_computed():
    """One step on [0, ln 2]: q = p = [1/3, 2/3], H = ln 3 - (2/3) ln 2, dH/dx_j = -q_j (log q_j + H),
    so g = [1, -1] * (2/9) ln 2 (the KL term is 0 at x = z); Adam's first step is lr * sign(g)."""
    z = np.array([[0.0, np.log(2.0)]])
    g = np.array([1.0, -1.0]) * (2 / 9) * np.log(2.0)
    np.testing.assert_allclose(em_inf_f64(z, EMInfConfig(n_steps=1, delta=0.0)),
                               z - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-12)


def test_em_inf_lowers_entropy_keeps_top_token():
    z = logits_batch()
    cfg = EMInfConfig()  # released defaults: lr 0.1, 5 steps, kl 0.001, delta 0.3
    x = em_inf_logits(z, cfg)
    h0, h1 = entropy_np(z), entropy_np(x)
    assert np.all(h1 <= np.maximum(cfg.delta, h0) + 1e-5)
    assert np.all(h1[h0 > cfg.delta] < h0[h0 > cfg.delta])  # every row above delta got sharper
    np.testing.assert_array_equal(np.argmax(x, -1), np.argmax(z, -1))
    np.testing.assert_array_equal(x[h0 < cfg.delta], z[h0 < cfg.delta])  # already confident: untouched


def test_em_inf_zero_steps_is_identity():
    z = logits_batch(1)
    np.testing.assert_array_equal(em_inf_logits(z, EMInfConfig(n_steps=0)), z)


@pytest.mark.parametrize("n_steps", [1, 4])
def test_em_inf_equals_optax_adam_on_autodiff_loss(n_steps):
    """The hand-written gradient and Adam against optax.adam on jax.grad of the stated loss (delta=0: no stop)."""
    z = logits_batch(2, rows=6)
    cfg = EMInfConfig(lr=0.1, n_steps=n_steps, kl_weight=0.05, delta=0.0)
    p = jax.nn.softmax(z, -1)

    def loss(x):
        logq = jax.nn.log_softmax(x, -1)
        h = -jnp.sum(jnp.exp(logq) * logq, -1)
        kl = jnp.sum(p * (jnp.log(p) - logq), -1)
        return jnp.sum(h + cfg.kl_weight * kl)  # rows are independent: a sum optimises each row

    opt = optax.adam(cfg.lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    x, state = z, opt.init(z)
    for _ in range(n_steps):
        updates, state = opt.update(jax.grad(loss)(x), state)
        x = optax.apply_updates(x, updates)
    np.testing.assert_allclose(em_inf_logits(z, cfg), x, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [EMInfConfig(), EMInfConfig(n_steps=1, delta=0.0),
                                 EMInfConfig(lr=0.05, n_steps=12, kl_weight=0.05, delta=1.0)])
@pytest.mark.parametrize("vocab", [500, 37])
def test_em_inf_fused_equals_float64_definition_and_straightforward(cfg, vocab):
    z = logits_batch(7, rows=16, vocab=vocab)
    fused = np.asarray(jax.jit(lambda z: em_inf_logits_fused(z, cfg))(z))
    np.testing.assert_allclose(fused, em_inf_f64(z, cfg), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(fused, em_inf_logits(z, cfg), atol=2e-4, rtol=1e-5)
    below = entropy_np(z) < cfg.delta
    np.testing.assert_array_equal(fused[below], np.asarray(z)[below])


def test_em_inf_fused_falls_back_beyond_exp_range():
    """lr * n_steps large enough to move logits 30 from the row maximum: the straightforward formulation runs."""
    z = logits_batch(5, rows=4, vocab=50)
    cfg = EMInfConfig(lr=1.0, n_steps=40, delta=0.0)
    np.testing.assert_array_equal(em_inf_logits_fused(z, cfg), em_inf_logits(z, cfg))


def test_em_inf_stops_each_row_below_delta():
    """A row below delta is frozen (more steps change nothing) and ends just under delta, not far below."""
    z = logits_batch(3)
    cfg = EMInfConfig(lr=0.1, n_steps=40, delta=1.0)
    x = np.asarray(em_inf_logits(z, cfg))
    x_more = np.asarray(em_inf_logits(z, EMInfConfig(lr=0.1, n_steps=60, delta=1.0)))
    h0, h = entropy_np(z), entropy_np(x)
    stopped = (h0 > cfg.delta) & (h < cfg.delta)
    assert stopped.sum() >= 5
    np.testing.assert_array_equal(x_more[stopped], x[stopped])
    assert np.all(h[stopped] > 0.5 * cfg.delta)
    assert np.all(entropy_np(x_more[h0 > cfg.delta]) <= h[h0 > cfg.delta] + 1e-6)


def test_generate_em_inf_zero_steps_equals_plain_sampling():
    model = tiny()
    plain = generate(model, PROMPT_IDS, max_new_tokens=8, num_samples=2, seed=4, temperature=0.9)
    em0 = generate(model, PROMPT_IDS, max_new_tokens=8, num_samples=2, seed=4, temperature=0.9,
                   em_inf=EMInfConfig(n_steps=0))
    np.testing.assert_array_equal(plain.tokens, em0.tokens)
    np.testing.assert_array_equal(plain.logprobs, em0.logprobs)


def test_generate_em_inf_records_sharper_policy():
    """Recorded entropies are the optimised policy's: <= max(delta, the model's own entropy there)."""
    model, cfg = tiny(50.0), EMInfConfig()
    result = generate(model, PROMPT_IDS, max_new_tokens=10, num_samples=2, seed=5, em_inf=cfg)
    _, h_model = completion_logprobs(model.params, model.config, jnp.asarray(result.prompt_ids),
                                     jnp.asarray(result.prompt_mask), jnp.asarray(result.tokens),
                                     jnp.asarray(result.mask))
    m = result.mask.astype(bool)
    h_model = np.asarray(h_model)[m]
    assert np.all(result.entropies[m] <= np.maximum(cfg.delta, h_model) + 1e-4)
    assert np.mean(result.entropies[m]) < 0.8 * np.mean(h_model)


# ---------------------------------------------------------------- adaptive temperature

@pytest.mark.parametrize("alpha,delta", [(0.5, 0.3), (0.4, 0.1), (0.6, 1.0)])
def test_adaptive_tau_meets_target_and_is_maximal(alpha, delta):
    z = logits_batch(4)
    cfg = AdaptiveTemperatureConfig(alpha=alpha, delta=delta)
    tau = np.asarray(adaptive_tau(z, cfg))
    h0 = entropy_np(z)
    target = np.maximum(alpha * h0, delta)
    assert np.all(entropy_np(np.asarray(z) / tau[:, None]) <= target + 1e-4)
    at_top = tau == 1.0
    assert np.all(h0[at_top] <= target[at_top] + 1e-6)  # tau = 1 only where no sharpening is needed
    assert np.all(entropy_np(np.asarray(z)[~at_top] / (1.01 * tau[~at_top, None])) > target[~at_top])
    assert np.all(tau > cfg.tau_min) and at_top.sum() < len(tau) - 5


@pytest.mark.parametrize("alpha,delta", [(0.5, 0.3), (0.4, 0.1), (0.6, 1.0)])
def test_adaptive_tau_newton_equals_bisection(alpha, delta):
    """The Newton-bracketed tau equals the bisection's to its precision (relative 1e3^(2^-20) ~ 7e-6)."""
    z = logits_batch(4)
    cfg = AdaptiveTemperatureConfig(alpha=alpha, delta=delta)
    np.testing.assert_allclose(adaptive_tau_newton(z, cfg), adaptive_tau(z, cfg), rtol=2e-5)
    hand = jnp.asarray([[0.0, 0.0, -30.0], [1.0, 1.0, 1.0], [10.0, 0.0, 0.0]], jnp.float32)
    want = [1e-3, 1e-3, 1.0] if delta < np.log(2) else [1.0, 1e-3, 1.0]  # H: ln 2, ln 3, ~0.001 (see below)
    np.testing.assert_allclose(adaptive_tau_newton(hand, cfg), want, rtol=1e-6)


def test_adaptive_tau_hand_computed():
    """Two equal logits and one far below: H(z/tau) ~ ln 2 for every tau <= 1, so a target below ln 2
    is unreachable (tau_min); a uniform row has H = ln 3 and no tau helps either; a peaked row keeps tau=1."""
    z = jnp.asarray([[0.0, 0.0, -30.0], [1.0, 1.0, 1.0], [10.0, 0.0, 0.0]], jnp.float32)
    cfg = AdaptiveTemperatureConfig(alpha=0.5, delta=0.3)
    np.testing.assert_allclose(adaptive_tau(z, cfg), [1e-3, 1e-3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(entropy_of_logits(z), entropy_np(z), atol=1e-5)
    np.testing.assert_allclose(entropy_np(z)[:2], [np.log(2), np.log(3)], atol=1e-5)


def test_generate_adaptive_temperature_runs_and_sharpens():
    model, cfg = tiny(50.0), AdaptiveTemperatureConfig(alpha=0.5, delta=0.3)
    result = generate(model, PROMPT_IDS, max_new_tokens=10, num_samples=2, seed=6, adaptive_temperature=cfg)
    _, h_model = completion_logprobs(model.params, model.config, jnp.asarray(result.prompt_ids),
                                     jnp.asarray(result.prompt_mask), jnp.asarray(result.tokens),
                                     jnp.asarray(result.mask))
    m = result.mask.astype(bool)
    h_model = np.asarray(h_model)[m]
    assert np.all(result.entropies[m] <= np.maximum(0.5 * h_model, 0.3) + 1e-3)


# ---------------------------------------------------------------- command line

def test_generate_command_with_em_inf(tiny_hf_dir, capsys):
    import json
    from gpg_em.cli import main
    main(["generate", "--model", str(tiny_hf_dir("qwen2")), "--prompt", "What is 12 + 30?", "--prompt", "Hi",
          "--num-samples", "2", "--max-new-tokens", "6", "--temperature", "1", "--em-inf", "--em-inf-steps", "3",
          "--jsonl"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["prompt"], d["sample"]) for d in lines] == [("What is 12 + 30?", 0), ("What is 12 + 30?", 1),
                                                           ("Hi", 0), ("Hi", 1)]
    assert all(1 <= d["num_tokens"] <= 6 and d["logprob"] <= 0 for d in lines)


def test_generate_command_rejects_two_decoders(tiny_hf_dir):
    from gpg_em.cli import main
    with pytest.raises(SystemExit, match="--em-inf and --adaptive-temperature"):
        main(["generate", "--model", str(tiny_hf_dir("qwen2")), "--prompt", "Hi", "--em-inf",
              "--adaptive-temperature"])
