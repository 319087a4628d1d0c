"""Shared fixtures: tiny random checkpoints (HF folders and GGUF files) and SmolLM2-135M.

Session-scoped, so each checkpoint is built (and SmolLM2 loaded, by us and by
transformers) once per test session. Factories:

    tiny_hf_dir(kind)            -> Path of a transformers folder; kind in TINY_KINDS
    tiny_gguf(kind, qtype="F32") -> Path of the same weights as a GGUF file
    torch_model(path)            -> transformers' float32 model of a folder or GGUF file
    smollm2 / smollm2_torch      -> our Model / transformers' model, from the built-in GGUF
    smollm2_hf_dir               -> SmolLM2 exported by save_pretrained

Plain helpers (`from conftest import ...`): pad_batch, torch_logits (explicit
positions, so left padding matches), assert_logits_match, chat_ids,
random_ids, write_gguf, build_tiny_checkpoint.

Tiny tokenizers: for model_type qwen2/qwen3 transformers' AutoTokenizer
substitutes Qwen2Tokenizer's digit-splitting pre-tokenizer, so the same
tokenizer.json gives different ids on digits per kind; compare ids within a kind.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

# kind -> (transformers config class name, config overrides)
_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32}
TINY_KINDS = {
    "llama3": ("LlamaConfig", {"rope_scaling": _LLAMA3_ROPE, "rope_theta": 10000.0, "tie_word_embeddings": False}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True, "rope_theta": 1e6}),
    "qwen3": ("Qwen3Config", {"head_dim": 24, "tie_word_embeddings": False, "rope_theta": 1e6}),
    "llama_sharded": ("LlamaConfig", {"tie_word_embeddings": True, "rope_theta": 10000.0}),
}
TINY_VOCAB = 320  # 3 special tokens + 256 bytes + 61 merges
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_CORPUS = ["The quick brown fox jumps over the lazy dog.", "What is 12 + 30? The answer is 42.",
           "Please reason step by step, and put your final answer in a box.", "1 2 3 4 5 6 7 8 9 10"]


def build_tiny_tokenizer(out_dir: Path):
    """A byte-level BPE tokenizer of TINY_VOCAB tokens with a ChatML template, saved to `out_dir`.

    Ids 0, 1, 2 are <|endoftext|> (pad), <|im_start|> (bos), <|im_end|> (eos), as in SmolLM2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(str(out_dir))
    return fast


def _randomize(model, seed: int) -> None:
    """Weights large enough that layout mistakes show: kernels N(0, 0.2), norms N(1, 0.1), biases N(0, 0.2)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            mean = 1.0 if name.endswith("norm.weight") else 0.0
            std = 0.1 if name.endswith("norm.weight") else 0.2
            p.copy_(torch.randn(p.shape, generator=gen) * std + mean)


def build_tiny_checkpoint(kind: str, out_dir: Path) -> Path:
    """A random 2-layer transformers checkpoint of `kind` plus the tiny tokenizer, saved to `out_dir`."""
    import transformers
    cls_name, overrides = TINY_KINDS[kind]
    config = getattr(transformers, cls_name)(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    _randomize(model, seed=sorted(TINY_KINDS).index(kind))
    shard = {"max_shard_size": "40KB"} if kind.endswith("sharded") else {}
    model.save_pretrained(str(out_dir), **shard)
    build_tiny_tokenizer(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """Factory: kind in TINY_KINDS -> folder of a tiny random transformers checkpoint (built once)."""
    @functools.cache
    def make(kind: str) -> Path:
        return build_tiny_checkpoint(kind, tmp_path_factory.mktemp(f"tiny_{kind}"))
    return make


# ---------------------------------------------------------------- GGUF writing

def _hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def _write_gguf_metadata(writer, hf: dict, arch: str) -> None:
    writer.add_context_length(hf["max_position_embeddings"])
    writer.add_embedding_length(hf["hidden_size"])
    writer.add_block_count(hf["num_hidden_layers"])
    writer.add_feed_forward_length(hf["intermediate_size"])
    writer.add_head_count(hf["num_attention_heads"])
    writer.add_head_count_kv(hf["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(hf["rms_norm_eps"])
    writer.add_rope_freq_base(hf.get("rope_theta") or hf["rope_parameters"]["rope_theta"])
    writer.add_key_length(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    writer.add_vocab_size(hf["vocab_size"])


def _write_gguf_tokenizer(writer, folder: Path, pre: str = "default", add_bos: bool | None = None,
                          user_defined: tuple = ()) -> None:
    """tokenizer.ggml.* metadata of a byte-level BPE tokenizer.json (llama.cpp's 'gpt2' model).

    `pre` names the pre-tokenizer split, `add_bos` writes tokenizer.ggml.add_bos_token, and tokens in
    `user_defined` are typed 4 (llama.cpp's user-defined: matched whole, not special)."""
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in spec["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 4 if t in user_defined else 1 for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHATML)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)


def write_gguf(folder: Path, path: Path, qtype: str = "F32", *, arch: str | None = None,
               tensor_types: dict | None = None, drop: tuple = (), tokenizer: bool | dict = True) -> Path:
    """Writes the checkpoint in `folder` as a llama.cpp-style GGUF file.

    2-D weights are stored as `qtype` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, ...),
    1-D ones as F32; Llama Q/K rows are permuted as llama.cpp does and Llama 3
    rope scaling becomes a `rope_freqs.weight` tensor. `tensor_types` forces
    numpy dtypes per GGUF name, `drop` leaves GGUF tensors out, `arch`
    overrides general.architecture (all three to make bad files). `tokenizer` False leaves the
    tokenizer out; a dict passes options to `_write_gguf_tokenizer`.
    """
    import gguf
    from gpg_em.models import from_hf_config, rope
    from gpg_em.models.gguf import permute_rows, to_gguf_name

    hf = json.loads((folder / "config.json").read_text())
    cfg = from_hf_config(hf)
    writer = gguf.GGUFWriter(str(path), arch or hf["model_type"])
    _write_gguf_metadata(writer, hf, arch or hf["model_type"])
    if tokenizer:
        _write_gguf_tokenizer(writer, folder, **(tokenizer if isinstance(tokenizer, dict) else {}))
    tensors = {to_gguf_name(k): v for k, v in _hf_tensors(folder).items()}
    if cfg.tie_embeddings:
        tensors.pop("output.weight", None)
    if cfg.rope_scaling:
        tensors["rope_freqs.weight"] = rope.inverse_frequencies(cfg.replace(rope_scaling=None)) / \
            rope.inverse_frequencies(cfg)
    for name, w in tensors.items():
        if name in drop:
            continue
        if cfg.model_type == "llama" and (".attn_q." in name or ".attn_k." in name):
            w = permute_rows(w, cfg.num_heads if ".attn_q." in name else cfg.num_kv_heads)
        if tensor_types and name in tensor_types:
            writer.add_tensor(name, w.astype(tensor_types[name]))
        elif w.ndim == 2 and qtype != "F32":
            kind = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(name, gguf.quants.quantize(w.astype(np.float32), kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, w.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf_dir, tmp_path_factory):
    """Factory: (kind, qtype="F32") -> GGUF file of the tiny checkpoint `kind` (built once)."""
    @functools.cache
    def make(kind: str, qtype: str = "F32") -> Path:
        out = tmp_path_factory.mktemp(f"gguf_{kind}_{qtype}") / f"tiny-{kind}.{qtype}.gguf"
        return write_gguf(tiny_hf_dir(kind), out, qtype)
    return make


# ---------------------------------------------------------------- batches and comparisons

ATOL = 1e-3
PROMPTS = ["What is 17 + 25?", "Hi",
           "Please reason step by step: a farmer has 3 fields of 12 cows each. How many cows?"]


def pad_batch(seqs: list[list[int]], side: str, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ids [B, T], mask [B, T] with each sequence left- or right-aligned."""
    T = max(len(s) for s in seqs)
    ids, mask = np.full((len(seqs), T), pad_id, np.int32), np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        cols = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, cols], mask[i, cols] = s, 1
    return ids, mask


def torch_logits(model, ids, mask) -> np.ndarray:
    """transformers' float32 logits [B, T, V]; explicit positions cumsum(mask) - 1 (needed for left padding)."""
    import torch
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions, dtype=torch.long))
    return out.logits.float().numpy()


def assert_logits_match(ours, ref, mask, atol=ATOL):
    real = np.asarray(mask).astype(bool)
    ours, ref = np.asarray(ours)[real], np.asarray(ref)[real]  # [N, V]
    assert np.abs(ours - ref).max() <= atol, np.abs(ours - ref).max()
    np.testing.assert_array_equal(ours.argmax(-1), ref.argmax(-1))


def chat_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          return_dict=True)["input_ids"] for p in PROMPTS]


def random_ids(vocab: int, lengths=(13, 5, 9), seed=0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [list(rng.randint(0, vocab, n)) for n in lengths]


# ---------------------------------------------------------------- transformers references

def torch_model_from(path: Path):
    """transformers' float32 eval model of a HF folder or a GGUF file.

    GGUF goes through transformers' own GGUF reader (`load_gguf_checkpoint`:
    its dequantisation, renaming and Q/K un-permutation) rather than
    `from_pretrained(gguf_file=...)`, which additionally requires `accelerate`.
    """
    import torch
    import transformers
    if Path(path).is_dir():
        return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    path = Path(path)
    config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(state, strict=False)
    expected_missing = ["lm_head.weight"] if config.tie_word_embeddings else []
    assert list(result.missing_keys) == expected_missing and not result.unexpected_keys, result
    model.tie_weights()
    return model


@pytest.fixture(scope="session")
def torch_model():
    """Factory: HF folder or GGUF path -> transformers' float32 model (cached per path)."""
    return functools.cache(torch_model_from)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as our float32 Model, from the built-in Q4_1 GGUF (with tokenizer)."""
    from gpg_em.models import load_pretrained
    return load_pretrained("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_torch(torch_model):
    """transformers' float32 SmolLM2-135M-Instruct, loaded from the same GGUF file."""
    from gpg_em.models.loading import builtin_path
    return torch_model(builtin_path("smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def smollm2_hf_dir(smollm2, tmp_path_factory):
    """SmolLM2 (dequantised, float32) exported with `save_pretrained` as a Hugging Face folder."""
    from gpg_em.models import save_pretrained
    return save_pretrained(smollm2, tmp_path_factory.mktemp("smollm2_hf"))
