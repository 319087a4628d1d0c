"""Decoder architecture description, shared by the Llama, Qwen2 and Qwen3 families.

`ModelConfig` is a frozen dataclass so it can be a static argument of jitted
functions. It is converted from and to a Hugging Face `config.json` dict.
"""
from __future__ import annotations

import dataclasses
from typing import Any

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a pre-norm RoPE decoder with grouped-query attention.

    `qkv_bias` is Qwen2's bias on the q/k/v projections; `qk_norm` is Qwen3's
    per-head RMSNorm on q and k before RoPE. `rope_scaling` is a sorted tuple
    of (key, value) pairs (hashable) in the Hugging Face format, e.g. Llama 3's
    `rope_type="llama3"` with `factor`, `low_freq_factor`, `high_freq_factor`,
    `original_max_position_embeddings`.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    model_type: str = "llama"
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    max_position_embeddings: int = 8192
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "float32"  # compute and parameter dtype: "float32" | "bfloat16"

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(
                f"model_type {self.model_type!r} is not supported; expected one of {sorted(ARCHITECTURES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {self.dtype!r} is not supported; expected 'float32' or 'bfloat16'")

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (self.num_heads * 2 + self.num_kv_heads * 2)
        layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * layer + d + head


def _eos_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def from_hf_config(hf: dict[str, Any], *, source: str = "config.json", dtype: str = "float32") -> ModelConfig:
    """Builds a ModelConfig from a Hugging Face config dict; `source` names it in errors."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"{source}: model_type {model_type!r} is not supported; expected one of {sorted(ARCHITECTURES)}")
    try:
        num_heads = int(hf["num_attention_heads"])
        hidden = int(hf["hidden_size"])
        scaling = hf.get("rope_scaling") or None
        rope_theta = hf.get("rope_theta")
        params = hf.get("rope_parameters") or {}
        if rope_theta is None:
            rope_theta = params.get("rope_theta", 10000.0)
        if scaling is None and params.get("rope_type", "default") != "default":
            scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        if scaling is not None:
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            if scaling.get("rope_type", scaling.get("type", "default")) == "default":
                scaling = None
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(hf["intermediate_size"]),
            num_layers=int(hf["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hidden // num_heads),
            model_type=model_type,
            rope_theta=float(rope_theta),
            rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
            qk_norm=model_type == "qwen3",
            max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=_eos_tuple(hf.get("eos_token_id")),
            dtype=dtype,
        )
    except KeyError as e:
        raise ValueError(f"{source}: missing field {e.args[0]!r} required for a {model_type} decoder") from None


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The Hugging Face config.json dict for `cfg` (float32 weights)."""
    eos = list(cfg.eos_token_ids)
    out = {
        "architectures": [ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling_dict,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "torch_dtype": "float32",
    }
    if cfg.model_type == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
    return out
