"""Per-step token selection: temperature, top-k, top-p, and a cheap exact categorical draw.

Everything here works on one decode step's float32 logits `z [B, V]` and is
traced inside the sampler's jitted `while_loop`.

What is recorded (the contract with `gpg_em.models.logprobs`):
  logp[b]    = log softmax(z / T)[token]        T = temperature (untruncated)
  entropy[b] = -sum_v p_v log p_v,  p = softmax(z / T)  (full vocabulary)
These are exactly the training path's definitions, so the recorded log-probs
equal `completion_logprobs(..., temperature=T)` of the same tokens. Top-k /
top-p are sampling-time filters only: the token is drawn from the truncated,
renormalised distribution but its *untruncated* tempered log-prob is
recorded, so with truncation the samples are slightly off-policy with respect
to the recorded (and trained) policy (the missing tail mass, typically a few
percent at top_p=0.95). With EM-INF or adaptive temperature, `z` is the
modified logits: the record is the distribution actually sampled from.

Sampling uses inverse-CDF with one uniform per row in two levels (blocks of
the vocabulary, then tokens inside the chosen block) instead of
`jax.random.categorical`: Gumbel-max needs V random numbers per row (measured
~22 ms per step for 32 x 49152 on this CPU, a third of a decode step),
inverse-CDF needs one, and reuses the exp(z - max) already needed for the
log-normaliser and the entropy. It is exact up to float32 rounding
(probabilities below ~2^-24 of the row's mass are not resolved).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gpg_em.models.decoder import KV_DTYPES
from gpg_em.rollout.adaptive_temperature import AdaptiveTemperatureConfig
from gpg_em.rollout.em_inf import EMInfConfig

_BLOCK = 256  # tokens per block of the two-level inverse CDF


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How each token is chosen; static (hashable) argument of the jitted sampler.

    Order per step: EM-INF or adaptive temperature on the raw logits, then
    `/ temperature`, then top-k, then top-p, then a categorical draw
    (`greedy`: argmax, which none of the above changes). `stop_token_ids`
    end a sequence (the stop token itself is kept and masked in); an empty
    tuple never stops. `pad_token_id` fills positions after the stop.
    `kv_dtype`: the dtype the KV cache is stored in, "auto" (the model's compute
    dtype), "float32" or "bfloat16" (`gpg_em.models.decoder.cache_dtype`).
    """
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0
    em_inf: EMInfConfig | None = None
    adaptive_temperature: AdaptiveTemperatureConfig | None = None
    kv_dtype: str = "auto"

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature} (use greedy=True for argmax)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.em_inf is not None and self.adaptive_temperature is not None:
            raise ValueError("em_inf and adaptive_temperature are alternatives; set at most one")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {list(KV_DTYPES)}, got {self.kv_dtype!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))


class StepStats(NamedTuple):
    """Normaliser pieces of softmax(z) shared by logp, entropy and the draw."""
    shifted: jnp.ndarray  # [B, V] z - max(z)
    expz: jnp.ndarray  # [B, V] exp(z - max(z)), unnormalised probabilities
    total: jnp.ndarray  # [B] sum(expz)
    logz: jnp.ndarray  # [B] logsumexp(z) - max(z)


def softmax_stats(z_BxV: jnp.ndarray) -> StepStats:
    shifted = z_BxV - jnp.max(z_BxV, axis=-1, keepdims=True)
    expz = jnp.exp(shifted)
    total = jnp.sum(expz, axis=-1)
    return StepStats(shifted, expz, total, jnp.log(total))


def logprob_entropy(stats: StepStats, token_B: jnp.ndarray):
    """(logp [B], entropy [B]) of softmax(z) (the same formulas as the training path)."""
    logp = jnp.take_along_axis(stats.shifted, token_B[:, None], axis=-1)[:, 0] - stats.logz
    entropy = stats.logz - jnp.sum(stats.expz * stats.shifted, axis=-1) / stats.total
    return logp, entropy


def top_k_filter(z_BxV: jnp.ndarray, k: int) -> jnp.ndarray:
    """-inf outside the k largest logits per row (ties with the k-th are kept)."""
    kth = jax.lax.top_k(z_BxV, k)[0][:, -1:]
    return jnp.where(z_BxV >= kth, z_BxV, -jnp.inf)


def top_p_filter(z_BxV: jnp.ndarray, p: float) -> jnp.ndarray:
    """-inf outside the nucleus: the smallest top set of tokens whose probability sum reaches p.

    A token is kept when the mass of the tokens strictly more probable than it
    is below p (so the token that crosses p is kept; at least one always is).
    """
    probs = jax.nn.softmax(z_BxV, axis=-1)
    sorted_desc = -jnp.sort(-probs, axis=-1)
    mass_before = jnp.cumsum(sorted_desc, axis=-1) - sorted_desc
    n_keep = jnp.maximum(jnp.sum(mass_before < p, axis=-1, keepdims=True), 1)
    threshold = jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)
    return jnp.where(probs >= threshold, z_BxV, -jnp.inf)


def _first_above(cum_BxN: jnp.ndarray, target_B: jnp.ndarray, weights_BxN: jnp.ndarray) -> jnp.ndarray:
    """Index of the first entry with cumulative mass > target, clamped to the last entry of positive weight.

    The clamp guards float rounding (target just above the last cumsum)
    from ever returning a zero-probability entry.
    """
    n = cum_BxN.shape[-1]
    idx = jnp.sum(cum_BxN <= target_B[:, None], axis=-1)
    last_positive = jnp.max(jnp.where(weights_BxN > 0, jnp.arange(n), 0), axis=-1)
    return jnp.minimum(idx, last_positive).astype(jnp.int32)


def categorical_inverse_cdf(weights_BxV: jnp.ndarray, uniform_B: jnp.ndarray) -> jnp.ndarray:
    """Token ids [B] drawn with probability proportional to the non-negative `weights`.

    Two levels: block sums [B, V/256] -> choose a block by inverse CDF of
    one uniform, then the same within the chosen block's 256 tokens. Costs
    one pass over V (the block sums) plus O(V/256 + 256) per row.
    """
    B, V = weights_BxV.shape
    nb = -(-V // _BLOCK)
    w = weights_BxV if nb * _BLOCK == V else jnp.pad(weights_BxV, ((0, 0), (0, nb * _BLOCK - V)))
    w = w.reshape(B, nb, _BLOCK)
    block_mass = jnp.sum(w, axis=-1)  # [B, nb]
    block_cum = jnp.cumsum(block_mass, axis=-1)
    target = uniform_B * block_cum[:, -1]
    block = _first_above(block_cum, target, block_mass)
    before = jnp.where(block > 0, jnp.take_along_axis(block_cum, jnp.maximum(block - 1, 0)[:, None], -1)[:, 0], 0.)
    inside = jnp.take_along_axis(w, block[:, None, None], axis=1)[:, 0]  # [B, 256]
    offset = _first_above(jnp.cumsum(inside, axis=-1), target - before, inside)
    return block * _BLOCK + offset


def row_uniforms(rng: jax.Array, steps_B: jnp.ndarray, row_ids_B: jnp.ndarray, total_rows: int) -> jnp.ndarray:
    """[B] float32: row b's uniform for its token steps[b], uniform(fold_in(rng, steps[b]), [total_rows])[row_ids[b]].

    The draw `choose_tokens` makes for row `row_ids[b]` at step `steps[b]` when every row of the batch is at the
    same step, here with each row at its own step (continuous batching refills a slot with a row that starts
    at token 0 while the others are further on). Costs B * total_rows uniforms.
    """
    one = lambda t, r: jax.random.uniform(jax.random.fold_in(rng, t), (total_rows,), jnp.float32)[r]
    return jax.vmap(one)(steps_B, row_ids_B)


def choose_tokens(z_BxV: jnp.ndarray, rng: jax.Array, sampling: SamplingConfig, row_ids_B=None,
                  total_rows: int = 0, uniform_B=None):
    """(token [B] int32, logp [B], entropy [B]) for one step of float32 logits z (already EM-INF'd).

    logp/entropy are of softmax(z / temperature), untruncated (module docstring).
    Row b draws uniform `row_ids[b]` of the step's `total_rows` uniforms
    (default: row b of B), so a row's draw does not depend on which other
    rows share the batch (the sampler drops finished rows mid-decode).
    `uniform_B` given: the rows' uniforms as they are (`row_uniforms`); `rng` is then unused.
    """
    z = z_BxV if sampling.temperature == 1.0 else z_BxV / sampling.temperature
    stats = softmax_stats(z)
    if sampling.greedy:
        token = jnp.argmax(z, axis=-1).astype(jnp.int32)
    else:
        weights = stats.expz
        if sampling.top_k or sampling.top_p < 1.0:
            zt = top_k_filter(z, sampling.top_k) if sampling.top_k else z
            zt = top_p_filter(zt, sampling.top_p) if sampling.top_p < 1.0 else zt
            weights = jnp.where(jnp.isfinite(zt), stats.expz, 0.)
        if uniform_B is None:
            uniform_B = jax.random.uniform(rng, (total_rows or z.shape[0],), jnp.float32)
            uniform_B = uniform_B if row_ids_B is None else uniform_B[row_ids_B]
        uniform = uniform_B
        token = categorical_inverse_cdf(weights, uniform)
    logp, entropy = logprob_entropy(stats, token)
    return token, logp, entropy
