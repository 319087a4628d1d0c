"""Hugging Face checkpoint layout and streaming reads of safetensors folders.

`param_table(cfg)` is the one table between Hugging Face tensor names and our
param tree: loading (HF folders and, after renaming, GGUF files) and export
both walk it. HF `nn.Linear` weights are `[out, in]`; our kernels are
`[in, out]`, hence `Slot.transpose`.

Weights are read one tensor at a time and turned into their final array
before the next is read, so the host never holds a second full copy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Callable

import jax.numpy as jnp
import safetensors
from safetensors import safe_open

from gpg_em.models.config import ModelConfig, from_hf_config


class ModelLoadError(ValueError):
    """A checkpoint could not be read; the message names the file and what was expected."""


class ModelFileNotFoundError(ModelLoadError, FileNotFoundError):
    """A checkpoint file or folder does not exist."""


@dataclasses.dataclass(frozen=True)
class Slot:
    path: tuple[str, ...]  # keys into the param tree
    shape: tuple[int, ...]  # shape as stored by Hugging Face ([out, in] for Linear weights)
    transpose: bool  # HF Linear weight [out, in] <-> our kernel [in, out]


def _layer_table(cfg: ModelConfig, i: int) -> dict[str, Slot]:
    D, F, Dh = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_heads * Dh, cfg.num_kv_heads * Dh
    hf, me = f"model.layers.{i}.", f"layers_{i}"
    linears = {"self_attn.q_proj": ("attn", (q, D)), "self_attn.k_proj": ("attn", (kv, D)),
               "self_attn.v_proj": ("attn", (kv, D)), "self_attn.o_proj": ("attn", (D, q)),
               "mlp.gate_proj": ("mlp", (F, D)), "mlp.up_proj": ("mlp", (F, D)), "mlp.down_proj": ("mlp", (D, F))}
    table = {}
    for name, (block, shape) in linears.items():
        leaf = name.split(".")[1]
        table[f"{hf}{name}.weight"] = Slot((me, block, leaf, "kernel"), shape, True)
        if cfg.qkv_bias and leaf in ("q_proj", "k_proj", "v_proj"):
            table[f"{hf}{name}.bias"] = Slot((me, block, leaf, "bias"), shape[:1], False)
    if cfg.qk_norm:
        table[f"{hf}self_attn.q_norm.weight"] = Slot((me, "attn", "q_norm", "scale"), (Dh,), False)
        table[f"{hf}self_attn.k_norm.weight"] = Slot((me, "attn", "k_norm", "scale"), (Dh,), False)
    table[f"{hf}input_layernorm.weight"] = Slot((me, "input_norm", "scale"), (D,), False)
    table[f"{hf}post_attention_layernorm.weight"] = Slot((me, "post_attn_norm", "scale"), (D,), False)
    return table


def param_table(cfg: ModelConfig) -> dict[str, Slot]:
    """HF tensor name -> Slot for every parameter of `cfg`, in file order (embeddings, layers, norm, head)."""
    V, D = cfg.vocab_size, cfg.hidden_size
    table = {"model.embed_tokens.weight": Slot(("embed",), (V, D), False)}
    for i in range(cfg.num_layers):
        table.update(_layer_table(cfg, i))
    table["model.norm.weight"] = Slot(("final_norm", "scale"), (D,), False)
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = Slot(("lm_head",), (V, D), True)
    return table


def fill_params(table: dict[str, Slot], read: Callable, dtype: str, source: str) -> dict:
    """Builds the param tree by calling `read(hf_name)` once per slot.

    `read` returns the tensor in the HF layout (numpy or jax array); it is
    shape-checked, transposed if needed and cast to `dtype` before the next read.
    """
    params: dict = {}
    for name, slot in table.items():
        x = read(name)
        if tuple(x.shape) != slot.shape:
            raise ModelLoadError(f"{source}: tensor {name!r} has shape {tuple(x.shape)}; expected {slot.shape}")
        node = params
        for key in slot.path[:-1]:
            node = node.setdefault(key, {})
        node[slot.path[-1]] = jnp.array(x.T if slot.transpose else x, dtype=dtype)
        del x
    return params


def read_config(folder: Path) -> dict:
    """The parsed config.json of a Hugging Face model folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFileNotFoundError(
            f"{folder}: no config.json; expected a Hugging Face model folder (config.json + *.safetensors)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e}); expected a Hugging Face config.json") from None


def _open(path: Path, stack: contextlib.ExitStack):
    try:
        return stack.enter_context(safe_open(str(path), framework="flax"))
    except (safetensors.SafetensorError, OSError) as e:
        raise ModelLoadError(f"{path}: truncated or corrupt safetensors file ({e}); "
                             "expected an 8-byte header size, a JSON header and every tensor's bytes") from None


def _weight_files(folder: Path, stack: contextlib.ExitStack) -> dict[str, object]:
    """HF tensor name -> open safe_open handle, from the shard index or from every *.safetensors file."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise ModelLoadError(f"{index}: unreadable shard index ({e!r}); expected JSON with a "
                                 "'weight_map' from tensor names to shard files") from None
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise ModelFileNotFoundError(f"{folder / shard}: shard listed in {index.name} does not exist; "
                                             "expected every shard of the checkpoint")
        handles = {f: _open(folder / f, stack) for f in sorted(set(weight_map.values()))}
        return {name: handles[f] for name, f in weight_map.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelFileNotFoundError(f"{folder}: no *.safetensors file; expected model.safetensors "
                                     "or shards listed in model.safetensors.index.json")
    located = {}
    for f in files:
        handle = _open(f, stack)
        located.update({name: handle for name in handle.keys()})
    return located


def load_folder_params(folder: Path, cfg: ModelConfig) -> dict:
    """Streams the safetensors weights of `folder` into our param tree, in `cfg.dtype`."""
    with contextlib.ExitStack() as stack:
        located = _weight_files(folder, stack)

        def read(name):
            if name not in located:
                raise ModelLoadError(f"{folder}: tensor {name!r} is missing from the *.safetensors files; "
                                     f"expected every tensor of a {cfg.model_type} checkpoint")
            try:
                return located[name].get_tensor(name)
            except (safetensors.SafetensorError, OSError) as e:
                raise ModelLoadError(f"{folder}: tensor {name!r} could not be read ({e}); "
                                     "the safetensors file is truncated or corrupt") from None

        return fill_params(param_table(cfg), read, cfg.dtype, str(folder))


def folder_config(folder: Path, dtype: str) -> ModelConfig:
    """ModelConfig of a Hugging Face folder, errors naming its config.json."""
    try:
        return from_hf_config(read_config(folder), source=str(folder / "config.json"), dtype=dtype)
    except ModelLoadError:
        raise
    except ValueError as e:
        raise ModelLoadError(str(e)) from None
