"""The native CPU EM-INF / adaptive-temperature kernel (gpg_em/kernels/logits_cpu.cc) against a float64
numpy EM-INF written from the definitions (test_em_inf.em_inf_f64), the straightforward XLA formulations
(`em_inf_logits`, `adaptive_tau`), and in the sampler: the same tokens with the kernel, with the fused XLA
formulations and with the straightforward ones."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.kernels import logits_kernel_available
from gpg_em.rollout import (AdaptiveTemperatureConfig, EMInfConfig, adaptive_tau, em_inf_logits, generate, logits_cpu,
                            sampler)
from test_em_inf import em_inf_f64, entropy_np, logits_batch
from test_sampler import PROMPT_IDS, tiny

pytestmark = pytest.mark.skipif(not logits_kernel_available(),
                                reason="the CPU logits kernel needs a C++ compiler and an x86-64 CPU")


@pytest.mark.parametrize("cfg", [EMInfConfig(), EMInfConfig(n_steps=1, delta=0.0),
                                 EMInfConfig(lr=0.05, n_steps=12, kl_weight=0.05, delta=1.0)])
@pytest.mark.parametrize("vocab", [500, 37, 1003])
def test_em_inf_kernel_equals_float64_definition(cfg, vocab):
    """Rows from near-uniform to peaked, vocabularies that are not whole vectors (tail lanes)."""
    z = logits_batch(7, rows=16, vocab=vocab)
    got = np.asarray(jax.jit(lambda z: logits_cpu.em_inf_logits_cpu(z, cfg))(z))
    np.testing.assert_allclose(got, em_inf_f64(z, cfg), atol=1e-4, rtol=1e-5)
    below = entropy_np(z) < cfg.delta
    np.testing.assert_array_equal(got[below], np.asarray(z)[below])  # stopped rows: untouched, bit for bit


def test_em_inf_kernel_equals_xla_formulation():
    """Against the straightforward formulation at a 49k-wide vocabulary, on LLM-like rows (std 1 .. 12): both
    are float32, so they agree to float tolerance (near-zero gradient entries make Adam's sign sensitive)."""
    z = logits_batch(8, rows=8, vocab=49152) * jnp.geomspace(10.0, 1.0, 8)[:, None]
    cfg = EMInfConfig()
    got = np.asarray(logits_cpu.em_inf_logits_cpu(z, cfg))
    want = np.asarray(em_inf_logits(z, cfg))
    np.testing.assert_allclose(got, want, atol=2e-3)
    assert np.mean(np.abs(got - want)) < 1e-5
    np.testing.assert_allclose(entropy_np(got), entropy_np(want), atol=1e-4)


def test_em_inf_kernel_far_from_zero_and_unaliased():
    """Logits offset by 1000 (exp's reference is the row maximum) give the same result as unshifted ones;
    with its input still needed afterwards, the call copies instead of overwriting it."""
    z = logits_batch(9, rows=6, vocab=300)
    cfg = EMInfConfig(delta=0.0)
    both = jax.jit(lambda z: (logits_cpu.em_inf_logits_cpu(z, cfg), z * 1.0))
    x, z_after = both(z + 1000.0)
    np.testing.assert_array_equal(z_after, z + 1000.0)
    np.testing.assert_allclose(np.asarray(x) - 1000.0, em_inf_f64(z, cfg), atol=2e-3)


def test_kernel_rejects_logits_that_are_not_a_matrix():
    with pytest.raises(Exception, match="expects logits \\[rows, vocab\\]"):
        logits_cpu.em_inf_logits_cpu(jnp.zeros((3, 4, 5)), EMInfConfig()).block_until_ready()


@pytest.mark.parametrize("alpha,delta", [(0.5, 0.3), (0.4, 0.1), (0.6, 1.0)])
@pytest.mark.parametrize("vocab", [500, 45])
def test_adaptive_temperature_kernel_equals_bisection(alpha, delta, vocab):
    """tau to the bisection's precision (relative 1e3^(2^-20) ~ 7e-6), feasible, maximal; logits z / tau exactly."""
    z = logits_batch(4, vocab=vocab)
    cfg = AdaptiveTemperatureConfig(alpha=alpha, delta=delta)
    y, tau = (np.asarray(a) for a in logits_cpu.adaptive_temperature_cpu(z, cfg))
    np.testing.assert_allclose(tau, adaptive_tau(z, cfg), rtol=2e-5)
    np.testing.assert_array_equal(y, np.asarray(z) / tau[:, None])
    target = np.maximum(alpha * entropy_np(z), delta)
    assert np.all(entropy_np(y) <= target + 1e-4)
    moved = tau < 1.0
    assert moved.sum() > 5 and np.all(entropy_np(np.asarray(z)[moved] / (1.0001 * tau[moved, None])) > target[moved])


def test_adaptive_temperature_kernel_hand_computed():
    """As test_em_inf's hand-computed case: an unreachable target gives tau_min, a peaked row tau = 1."""
    z = jnp.asarray([[0.0, 0.0, -30.0], [1.0, 1.0, 1.0], [10.0, 0.0, 0.0]], jnp.float32)
    _, tau = logits_cpu.adaptive_temperature_cpu(z, AdaptiveTemperatureConfig(alpha=0.5, delta=0.3))
    np.testing.assert_allclose(tau, [1e-3, 1e-3, 1.0], rtol=1e-6)


@pytest.mark.parametrize("method", ["em_inf", "adaptive_temperature"])
def test_sampler_same_tokens_with_and_without_the_kernel(monkeypatch, method):
    """`generate` draws the same tokens for fixed seeds with the native kernel, with the fused XLA formulation
    and with the straightforward one (what the sampler ran before either existed)."""
    kw = {"em_inf": EMInfConfig()} if method == "em_inf" else {"adaptive_temperature": AdaptiveTemperatureConfig()}
    model = tiny(30.0)

    def run():
        jax.clear_caches()  # the choice is made when the sampler is traced
        return generate(model, PROMPT_IDS, max_new_tokens=12, num_samples=3, seed=11, **kw)
    assert logits_cpu.use_logits_kernel()
    native = run()
    monkeypatch.setenv("GPG_EM_CPU_LOGITS_KERNEL", "0")
    assert not logits_cpu.use_logits_kernel()
    fused = run()
    monkeypatch.setattr(sampler, "em_inf_logits_fused", em_inf_logits)
    monkeypatch.setattr(sampler, "adaptive_tau_newton", adaptive_tau)
    straightforward = run()
    jax.clear_caches()
    for other in (fused, straightforward):
        np.testing.assert_array_equal(native.tokens, other.tokens)
        np.testing.assert_array_equal(native.mask, other.mask)
        np.testing.assert_allclose(native.logprobs, other.logprobs, atol=1e-4)
        np.testing.assert_allclose(native.entropies, other.entropies, atol=1e-4)


def test_logits_kernel_unavailable_without_a_compiler(monkeypatch, tmp_path):
    """No compiler: a warning that says so, and the sampler keeps the XLA formulations; afterwards the
    kernel loads (and registers) again."""
    from gpg_em.kernels import build
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setenv("GPG_EM_KERNEL_CACHE", str(tmp_path))  # nothing built there yet
    build.logits_kernel_available.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="CPU logits kernel unavailable .*nonexistent.*run as XLA"):
            assert build.logits_kernel_available() is False
        assert not logits_cpu.use_logits_kernel()
    finally:
        build.logits_kernel_available.cache_clear()
    monkeypatch.undo()
    assert build.logits_kernel_available()
    z = logits_batch(1, rows=3, vocab=40)
    np.testing.assert_allclose(logits_cpu.em_inf_logits_cpu(z, EMInfConfig()), em_inf_logits(z, EMInfConfig()),
                               atol=1e-4)
