"""`save_pretrained`: Model -> a Hugging Face folder that transformers loads.

Writes config.json, model.safetensors (float32, HF names and layouts; tied
models omit lm_head.weight) and the tokenizer files. The safetensors file is
written tensor by tensor (the format is an 8-byte little-endian header size,
a JSON header of dtypes, shapes and byte offsets, then the raw bytes), so only
one tensor at a time is copied to float32 on the host. The header is padded
with spaces so that the data starts on a 64-byte boundary (the format
requires tensors to be contiguous, so a tensor after one whose size is not a
multiple of 64 bytes is not aligned): transformers memory-maps the file, and
its CPU kernels then read weights aligned as the ones they allocate.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from gpg_em.models.config import to_hf_config
from gpg_em.models.hf import Slot, param_table
from gpg_em.models.model import Model


def _leaf(params: dict, slot: Slot):
    for key in slot.path:
        params = params[key]
    return params


ALIGN = 64  # bytes; the data section starts on this boundary


def _header(table: dict[str, Slot]) -> bytes:
    """The safetensors JSON header for float32 tensors in table order.

    Tensors are contiguous (the format allows no gaps); the header is padded
    with spaces so that 8 + len(header) is a multiple of ALIGN.
    """
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, slot in table.items():
        size = 4 * int(np.prod(slot.shape))
        entries[name] = {"dtype": "F32", "shape": list(slot.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    return header + b" " * (-(8 + len(header)) % ALIGN)


def write_safetensors(model: Model, path: Path) -> None:
    """Streams the params of `model` to a float32 safetensors file in the HF layout."""
    table = param_table(model.config)
    header = _header(table)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for slot in table.values():
            x = np.asarray(_leaf(model.params, slot), dtype=np.float32)
            f.write(memoryview(np.ascontiguousarray(x.T if slot.transpose else x, dtype="<f4")))


def hf_config_json(model: Model) -> dict:
    """config.json contents: `to_hf_config` plus the pad token, for transformers' model classes."""
    config = to_hf_config(model.config)
    tokenizer = model.tokenizer
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None:
        config["pad_token_id"] = tokenizer.pad_token_id
    return config


def save_pretrained(model: Model, out_dir: str | os.PathLike) -> Path:
    """Writes `model` as a Hugging Face folder (config.json, model.safetensors, tokenizer); returns it.

    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads it and
    gives the same float32 logits; `load_pretrained(out_dir)` reads it back.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config_json(model), indent=2) + "\n")
    write_safetensors(model, out / "model.safetensors")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(out))
    return out
