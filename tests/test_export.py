"""save_pretrained: our Model -> Hugging Face folder -> transformers gives the same logits."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from conftest import assert_logits_match, chat_ids, pad_batch, random_ids, torch_logits
from gpg_em.models import forward, load_pretrained, save_pretrained


def test_smollm2_export_loads_in_transformers(smollm2, smollm2_hf_dir, torch_model):
    """GGUF -> our Model -> save_pretrained -> transformers.from_pretrained: same logits."""
    exported = torch_model(smollm2_hf_dir)
    assert exported.config.tie_word_embeddings and exported.config.rope_parameters["rope_theta"] == 100000.0
    ids, mask = pad_batch(chat_ids(smollm2.tokenizer), "left", smollm2.tokenizer.pad_token_id)
    ref = torch_logits(exported, ids, mask)
    try:
        assert_logits_match(forward(smollm2, ids, mask), ref, mask)
    except AssertionError as e:  # say whether transformers itself disagrees between the two loads of one model
        import torch
        from gpg_em.models.loading import builtin_path
        gguf = torch_logits(torch_model(builtin_path("smollm2-135m-instruct")), ids, mask)
        real = mask.astype(bool)
        raise AssertionError(f"{e}; transformers export vs GGUF load: max |diff| "
                             f"{np.abs(ref - gguf)[real].max()}; torch CPU capability "
                             f"{torch.backends.cpu.get_cpu_capability()}") from None


def test_smollm2_export_files(smollm2, smollm2_hf_dir):
    config = json.loads((smollm2_hf_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["eos_token_id"] == 2
    with safe_open(str(smollm2_hf_dir / "model.safetensors"), framework="numpy") as f:
        names = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert "lm_head.weight" not in names and len(names) == 2 + 9 * 30
    assert q.dtype == np.float32 and q.shape == (576, 576)
    np.testing.assert_array_equal(q, np.asarray(smollm2.params["layers_0"]["attn"]["q_proj"]["kernel"]).T)
    assert (smollm2_hf_dir / "tokenizer.json").is_file()
    header_size = int.from_bytes((smollm2_hf_dir / "model.safetensors").read_bytes()[:8], "little")
    assert (8 + header_size) % 64 == 0  # the data starts on a 64-byte boundary


@pytest.mark.parametrize("kind", ["llama3", "qwen2", "qwen3"])
def test_tiny_round_trip(tiny_hf_dir, torch_model, tmp_path, kind):
    """folder -> ours -> save_pretrained -> transformers and ours again: same logits, same config."""
    model = load_pretrained(tiny_hf_dir(kind))
    out = save_pretrained(model, tmp_path / "export")
    again = load_pretrained(out)
    assert again.config == model.config
    ids, mask = pad_batch(random_ids(model.config.vocab_size), "left")
    ours = forward(model, ids, mask)
    np.testing.assert_array_equal(np.asarray(forward(again, ids, mask)), np.asarray(ours))
    assert_logits_match(ours, torch_logits(torch_model(out), ids, mask), mask)
    messages = [{"role": "user", "content": "hi"}]
    assert again.tokenizer.apply_chat_template(messages, tokenize=False) == \
        model.tokenizer.apply_chat_template(messages, tokenize=False)


def test_bfloat16_export_is_float32(tiny_hf_dir, tmp_path):
    model = load_pretrained(tiny_hf_dir("qwen2"), dtype="bfloat16")
    out = save_pretrained(model, tmp_path / "bf16")
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        embed = f.get_tensor("model.embed_tokens.weight")
    assert embed.dtype == np.float32
    np.testing.assert_array_equal(embed, np.asarray(model.params["embed"], np.float32))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
