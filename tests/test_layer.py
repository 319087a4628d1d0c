"""The one layer definition (gpg_em.models.layer) against a numpy implementation of the layer maths.

An attention strategy written here (plain causal attention under a padding
mask) plugs into `layer.layer` at one place, in both activation layouts, and
gives the numpy layer's output; the Flax Decoder (which runs the same
function with its own strategy) gives it too.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpg_em.models import layer as L
from gpg_em.models.config import ModelConfig
from gpg_em.models.decoder import Decoder
from gpg_em.models.model import init_params
from gpg_em.rollout.decode_step import decode_weights, rope_cos_sin

EPS = 1e-6
CONFIGS = {
    "llama": ModelConfig(vocab_size=40, hidden_size=24, intermediate_size=40, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=6, rms_norm_eps=EPS),
    "qwen3": ModelConfig(vocab_size=40, hidden_size=24, intermediate_size=40, num_layers=1, num_heads=6,
                         num_kv_heads=2, head_dim=8, model_type="qwen3", qkv_bias=True, qk_norm=True,
                         rope_theta=1e6, rms_norm_eps=EPS),
}


def np_rms(x, scale):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * scale


def np_rope(x_BxTxHxD, pos_BxT, theta):
    d = x_BxTxHxD.shape[-1]
    inv = theta ** (-np.arange(0, d, 2) / d)
    ang = pos_BxT[..., None, None] * np.concatenate([inv, inv])  # [B, T, 1, D]
    rot = np.concatenate([-x_BxTxHxD[..., d // 2:], x_BxTxHxD[..., :d // 2]], axis=-1)
    return x_BxTxHxD * np.cos(ang) + rot * np.sin(ang)


def np_layer(lp, cfg, x, pos, mask_BxT):
    """The pre-norm layer in float64: causal grouped-query attention over valid tokens, SwiGLU MLP."""
    lp = jax.tree.map(lambda a: np.asarray(a, np.float64), lp)
    a, m = lp["attn"], lp["mlp"]
    B, T, _ = x.shape
    proj = lambda h, p, n: (h @ p["kernel"] + p.get("bias", 0)).reshape(B, T, n, cfg.head_dim)
    h = np_rms(x, lp["input_norm"]["scale"])
    q, k, v = proj(h, a["q_proj"], cfg.num_heads), proj(h, a["k_proj"], cfg.num_kv_heads), proj(h, a["v_proj"], cfg.num_kv_heads)
    if cfg.qk_norm:
        q, k = np_rms(q, a["q_norm"]["scale"]), np_rms(k, a["k_norm"]["scale"])
    q, k = np_rope(q, pos, cfg.rope_theta), np_rope(k, pos, cfg.rope_theta)
    g = cfg.num_heads // cfg.num_kv_heads
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)  # query head h reads kv-head h // g
    s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(cfg.head_dim)
    allowed = np.tril(np.ones((T, T), bool))[None] & mask_BxT[:, None, :]
    s = np.where(allowed[:, None], s, -1e30)  # padding queries see nothing: uniform, not compared
    p = np.exp(s - s.max(-1, keepdims=True))
    o = np.einsum("bhts,bshd->bthd", p / p.sum(-1, keepdims=True), v).reshape(B, T, -1)
    x = x + o @ a["o_proj"]["kernel"]
    h = np_rms(x, lp["post_attn_norm"]["scale"])
    gate = h @ m["gate_proj"]["kernel"]
    return x + (gate / (1 + np.exp(-gate)) * (h @ m["up_proj"]["kernel"])) @ m["down_proj"]["kernel"]


def token_major_attention(allowed_BxTxS):
    """A new strategy: q [B, T, H, Dh] over the T keys/values of its own row where allowed."""
    def attend(q, k, v):
        g = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
        s = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
        p = jax.nn.softmax(jnp.where(allowed_BxTxS[:, None], s, -1e30), axis=-1)
        return jnp.einsum("bhts,bshd->bthd", p, v), None
    return attend


def feature_major_attention(allowed_TxS):
    """The same strategy feature-major, one sequence whose T tokens are the columns: q [H, Dh, T]."""
    def attend(q, k, v):
        g = q.shape[0] // k.shape[0]
        k, v = jnp.repeat(k, g, axis=0), jnp.repeat(v, g, axis=0)
        s = jnp.einsum("hdt,hds->hts", q, k) * q.shape[1] ** -0.5
        p = jax.nn.softmax(jnp.where(allowed_TxS[None], s, -1e30), axis=-1)
        return jnp.einsum("hts,hds->hdt", p, v), None
    return attend


def random_case(cfg, seed=0, B=2, T=5):
    params = init_params(cfg, jax.random.PRNGKey(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    params = tree.unflatten([a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), bool)
    if B > 1:
        mask[1, :2] = False  # left padding
    pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    x = rng.normal(size=(B, T, cfg.hidden_size)).astype(np.float32)
    return params, x, pos, mask


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_token_major_layer_with_a_new_strategy_matches_numpy(name):
    cfg = CONFIGS[name]
    params, x, pos, mask = random_case(cfg)
    allowed = jnp.tril(jnp.ones((x.shape[1],) * 2, bool))[None] & jnp.asarray(mask)[:, None, :]
    got, state = L.layer(params["layers_0"], cfg, jnp.asarray(x), L.TokenMajor(cfg, jnp.asarray(pos)),
                         token_major_attention(allowed))
    want = np_layer(params["layers_0"], cfg, x.astype(np.float64), pos, mask)
    assert state is None
    np.testing.assert_allclose(np.asarray(got)[mask], want[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("transpose", [True, False])
def test_feature_major_layer_matches_numpy(name, transpose):
    """FeatureMajor on the decode step's weights ([out, in] `kernel_t`, or `kernel` read transposed)."""
    cfg = CONFIGS[name]
    params, x, pos, mask = random_case(cfg, seed=3, B=1, T=6)
    weights = decode_weights(params, cfg, transpose)
    ops = L.FeatureMajor(cfg, *rope_cos_sin(cfg, jnp.asarray(pos[0])))
    allowed = jnp.tril(jnp.ones((6, 6), bool))
    got, _ = L.layer(weights["layers_0"], cfg, jnp.asarray(x[0].T), ops, feature_major_attention(allowed))
    want = np_layer(params["layers_0"], cfg, x.astype(np.float64), pos, mask)[0]
    np.testing.assert_allclose(np.asarray(got).T, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flax_decoder_runs_the_same_layer(name):
    """One-layer Decoder = final norm of the numpy layer on the embeddings, and of `layer` with the test's strategy."""
    cfg = CONFIGS[name]
    params, _, pos, mask = random_case(cfg, seed=5)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, pos.shape)
    got, _ = Decoder(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(pos), jnp.asarray(mask))
    x = np.asarray(params["embed"])[ids]
    scale = np.asarray(params["final_norm"]["scale"], np.float64)
    want = np_rms(np_layer(params["layers_0"], cfg, x.astype(np.float64), pos, mask), scale)
    np.testing.assert_allclose(np.asarray(got)[mask], want[mask], rtol=1e-4, atol=1e-4)
    allowed = jnp.tril(jnp.ones((pos.shape[1],) * 2, bool))[None] & jnp.asarray(mask)[:, None, :]
    ops = L.TokenMajor(cfg, jnp.asarray(pos))
    mine, _ = L.layer(params["layers_0"], cfg, jnp.asarray(x), ops, token_major_attention(allowed))
    np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(ops.norm(mine, scale))[mask], rtol=1e-5, atol=1e-5)


def test_layer_spec_is_the_params_tree():
    """The Decoder declares exactly `layer_spec`'s parameters: names, shapes and logical axes."""
    from gpg_em.models.model import logical_axes
    cfg = CONFIGS["qwen3"]
    spec, axes = L.layer_spec(cfg), logical_axes(cfg)["layers_0"]
    shapes = jax.tree.map(lambda a: a.shape, init_params(cfg, jax.random.PRNGKey(0))["layers_0"])
    is_spec = lambda s: isinstance(s, L.ParamSpec)
    assert jax.tree.map(lambda s: s.shape, spec, is_leaf=is_spec) == shapes
    assert jax.tree.map(lambda s: tuple(s.axes), spec, is_leaf=is_spec) == jax.tree.map(tuple, axes, is_leaf=lambda a: not isinstance(a, dict))
    a = axes["attn"]
    assert shapes["attn"]["q_proj"]["kernel"] == (24, 48) and tuple(a["q_proj"]["kernel"]) == ("embed", "heads")
    assert shapes["attn"]["k_proj"]["bias"] == (16,) and tuple(a["k_proj"]["bias"]) == ("kv_heads",)
    assert shapes["attn"]["q_norm"]["scale"] == (8,) and tuple(a["q_norm"]["scale"]) == ("head_dim",)
    assert shapes["mlp"]["down_proj"]["kernel"] == (40, 24) and tuple(axes["mlp"]["down_proj"]["kernel"]) == ("mlp", "embed")
