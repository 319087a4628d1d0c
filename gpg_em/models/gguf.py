"""GGUF files (llama.cpp): metadata -> ModelConfig, tensors -> our param tree.

GGUF tensors are renamed to Hugging Face names and go through the same
`param_table` as safetensors folders. Shapes: ggml lists dimensions fastest
first (`ne = [in, out]`); `GGUFReader` exposes the data in numpy order
`[out, in]`, which is the HF layout, and `gguf.quants.dequantize` keeps it.

llama.cpp's converter permutes the rows of Llama's Q and K projections (each
head's rotary pairs interleaved: `reshape(H, 2, Dh/2, ...).swapaxes(1, 2)`);
`unpermute_rows` undoes it. Qwen2/Qwen3 files are not permuted.

Llama 3 frequency scaling is stored by llama.cpp as a `rope_freqs.weight`
tensor of per-frequency divisors rather than as metadata; `llama3_scaling`
recovers the Hugging Face parameters from it and checks they reproduce it.
"""
from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np

from gpg_em.models import rope
from gpg_em.models.config import ARCHITECTURES, ModelConfig
from gpg_em.models.hf import ModelLoadError, fill_params, param_table

_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
                "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                "ffn_norm": "post_attention_layernorm"}
_HF_TO_GGUF_LAYER = {v: k for k, v in _LAYER_NAMES.items()}


def to_hf_name(name: str) -> str | None:
    """GGUF tensor name -> Hugging Face name ('blk.3.attn_q.bias' -> 'model.layers.3.self_attn.q_proj.bias')."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def to_gguf_name(hf_name: str) -> str:
    """Hugging Face tensor name -> GGUF name (inverse of `to_hf_name`)."""
    for g, h in _GLOBAL_NAMES.items():
        if h == hf_name:
            return g
    _, _, layer, *module, leaf = hf_name.split(".")
    return f"blk.{layer}.{_HF_TO_GGUF_LAYER['.'.join(module)]}.{leaf}"


def permute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's Q/K row order from the HF one: [H*Dh, ...] -> same shape."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF Q/K row order from llama.cpp's (inverse of `permute_rows`): [H*Dh, ...] -> same shape."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _f32(value) -> float:
    """A float32 metadata value as the shortest decimal that rounds to it (1e-06, not 9.99999997e-07)."""
    return float(str(np.float32(value)))


def _field(reader: gguf.GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def llama3_scaling(divisors: np.ndarray, base_cfg: ModelConfig, source: str) -> tuple | None:
    """Hugging Face rope_scaling pairs reproducing inv_freq / divisors [Dh/2], or None if all are 1.

    Llama 3 keeps short wavelengths, divides long ones by `factor` and blends
    in between with `smooth`, which is affine in 1/wavelength; the affine map
    is all that matters, so `low_freq_factor` is fixed to 1 and the rest fitted.
    """
    divisors = divisors.astype(np.float64)
    factor = float(divisors.max())
    if np.allclose(divisors, 1.0):
        return None
    if np.allclose(divisors, factor):
        return (("factor", factor), ("rope_type", "linear"))
    inv = rope.inverse_frequencies(base_cfg).astype(np.float64)
    x = inv / (2 * math.pi)  # 1 / wavelength
    smooth = (1 / divisors - 1 / factor) / (1 - 1 / factor)  # 0: divided by factor, 1: kept
    mid = (smooth > 1e-6) & (smooth < 1 - 1e-6)
    slope, intercept = _smooth_line(x, smooth, mid)
    scaling = None
    if slope > 0 and intercept < 0:
        scaling = (("factor", _tidy(factor)), ("high_freq_factor", _tidy(1 - 1 / intercept)),
                   ("low_freq_factor", 1.0), ("original_max_position_embeddings", _whole(_tidy(-slope / intercept))),
                   ("rope_type", "llama3"))
        got = rope.inverse_frequencies(base_cfg.replace(rope_scaling=scaling))
        if np.allclose(got, inv / divisors, rtol=1e-4, atol=0):
            return scaling
    raise ModelLoadError(f"{source}: rope_freqs.weight is not a Llama 3 frequency scaling; "
                         "expected divisors 1 (short wavelengths) to factor (long) with a smooth blend")


def _tidy(value: float) -> float:
    """`value` rounded to 3 decimals when that moves it by under 1e-6 relative (fits give 4.0000002)."""
    rounded = round(float(value), 3)
    return rounded if abs(rounded - value) <= 1e-6 * abs(value) else float(value)


def _whole(value: float) -> float | int:
    return int(value) if value.is_integer() else value


def _smooth_line(x: np.ndarray, smooth: np.ndarray, mid: np.ndarray) -> tuple[float, float]:
    """slope, intercept of smooth = slope * x + intercept: fitted through the blended points, and
    steep enough that fully divided points fall at or below 0 and kept ones at or above 1."""
    if mid.sum() >= 2:
        return tuple(np.polyfit(x[mid], smooth[mid], 1))
    divided, kept = x[smooth <= 1e-6], x[smooth >= 1 - 1e-6]
    if mid.sum() == 0:
        if not (divided.size and kept.size):
            return 0.0, 0.0
        slope = 1 / (kept.min() - divided.max())
        return slope, -slope * divided.max()
    xm, sm = float(x[mid][0]), float(smooth[mid][0])
    bounds = [sm / (xm - divided.max())] if divided.size else []
    bounds += [(1 - sm) / (kept.min() - xm)] if kept.size else []
    slope = max(bounds, default=0.0)
    return slope, sm - slope * xm


def _tensors(reader: gguf.GGUFReader) -> dict:
    return {t.name: t for t in reader.tensors}


def gguf_config(reader: gguf.GGUFReader, source: str, dtype: str) -> ModelConfig:
    """ModelConfig from GGUF metadata ({arch}.* keys, tokenizer.ggml.* ids) and tensor presence."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{source}: general.architecture {arch!r} is not supported; "
                             f"expected one of {sorted(ARCHITECTURES)}")
    tensors = _tensors(reader)
    if "token_embd.weight" not in tensors:
        raise ModelLoadError(f"{source}: tensor 'token_embd.weight' is missing; expected a {arch} GGUF model")

    def need(key):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise ModelLoadError(f"{source}: metadata key '{arch}.{key}' is missing; expected a {arch} GGUF model")
        return value

    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = _field(reader, f"{arch}.attention.key_length") or _field(reader, f"{arch}.rope.dimension_count")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    cfg = ModelConfig(
        vocab_size=int(tensors["token_embd.weight"].shape[1]),  # ne = [D, V]
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(head_dim or hidden // heads),
        model_type=arch,
        rope_theta=_f32(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensors,
        qkv_bias=arch == "qwen2" or "blk.0.attn_q.bias" in tensors,
        qk_norm=arch == "qwen3",
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 8192)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        dtype=dtype,
    )
    return cfg.replace(rope_scaling=_rope_scaling(reader, cfg, source))


def _rope_scaling(reader: gguf.GGUFReader, cfg: ModelConfig, source: str) -> tuple | None:
    arch = cfg.model_type
    kind = _field(reader, f"{arch}.rope.scaling.type", "none")
    tensors = _tensors(reader)
    if kind == "linear":
        return (("factor", float(_field(reader, f"{arch}.rope.scaling.factor"))), ("rope_type", "linear"))
    if kind != "none":
        raise ModelLoadError(f"{source}: rope scaling type {kind!r} is not supported; expected 'none' or 'linear' "
                             "(or Llama 3 scaling as a rope_freqs.weight tensor)")
    if "rope_freqs.weight" in tensors:
        return llama3_scaling(_dequantize(tensors["rope_freqs.weight"], source), cfg, source)
    return None


def _dequantize(tensor, source: str) -> np.ndarray:
    """float32 array in numpy order (HF layout) of one GGUF tensor."""
    kind = gguf.GGMLQuantizationType(tensor.tensor_type)
    try:
        return np.asarray(gguf.quants.dequantize(tensor.data, kind), np.float32)
    except NotImplementedError:
        raise ModelLoadError(f"{source}: tensor {tensor.name!r} has GGUF type {kind.name}, which cannot be "
                             "dequantised; expected F32, F16, BF16 or a ggml block quantisation "
                             "(Q8_0, Q4_0, Q4_1, K-quants, ...)") from None


def _reader_fn(reader: gguf.GGUFReader, cfg: ModelConfig, source: str):
    by_hf = {to_hf_name(t.name): t for t in reader.tensors}
    heads = {"self_attn.q_proj": cfg.num_heads, "self_attn.k_proj": cfg.num_kv_heads}

    def read(hf_name: str) -> np.ndarray:
        if hf_name not in by_hf:
            raise ModelLoadError(f"{source}: tensor {to_gguf_name(hf_name)!r} is missing; "
                                 f"expected every tensor of a {cfg.model_type} model")
        w = _dequantize(by_hf[hf_name], source)
        module = ".".join(hf_name.split(".")[-3:-1])
        if cfg.model_type == "llama" and module in heads:
            w = unpermute_rows(w, heads[module])
        return w

    return read


def open_gguf(path: Path) -> gguf.GGUFReader:
    """A memory-mapped reader, errors naming the file."""
    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({e}); expected the GGUF magic, "
                             "version and a complete tensor table") from None


def load_gguf_params(reader: gguf.GGUFReader, source: str, dtype: str) -> tuple[ModelConfig, dict]:
    """(config, params) of an open GGUF file, dequantised to float32 and cast to `dtype` tensor by tensor."""
    cfg = gguf_config(reader, source, dtype)
    return cfg, fill_params(param_table(cfg), _reader_fn(reader, cfg, source), dtype, source)
