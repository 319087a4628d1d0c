"""A GGUF file's tokenizer, built from its `tokenizer.ggml.*` metadata without PyTorch.

llama.cpp stores a byte-level BPE tokenizer (`tokenizer.ggml.model == "gpt2"`:
SmolLM2, Llama 3, Qwen2/2.5/3) as metadata:

    tokens      [V] strings, in GPT-2's printable byte alphabet
    token_type  [V] ints (1 normal, 3 control, 4 user-defined, 6 byte)
    merges      [M] "left right" strings, best first
    pre         the name of the pre-tokenizer split (llama.cpp's `llama-bpe`, `qwen2`, ...)
    bos/eos/unknown/padding_token_id, add_bos_token, chat_template

which is rebuilt here as a `tokenizers.Tokenizer` (BPE model, byte-level pre-tokenizer and decoder,
control tokens as special added tokens, user-defined ones as plain added tokens) inside a
transformers `PreTrainedTokenizerFast`, so the chat template and `decode` work as for a Hugging Face
folder. transformers' own GGUF route reads the file through PyTorch; this one needs only `gguf`.
`tests/test_tokenizer_gguf.py` holds the two equal (token ids of chat-templated prompts, special
tokens, decode) on the shipped model and on tiny files.

Split expressions by `tokenizer.ggml.pre` name: the published pre-tokenizer regexes of Llama 3
(tiktoken cl100k with 1-3 digit numbers) and Qwen2 (single digits). An unnamed or unknown `pre`
gets GPT-2's own split (tokenizers' `ByteLevel(use_regex=True)`), which is SmolLM2's.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from gpg_em.models.hf import ModelLoadError

_CONTROL, _USER_DEFINED = 3, 4

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
}


def read_metadata(reader) -> dict:
    """`tokenizer.*` fields of an open `gguf.GGUFReader` -> {key without 'tokenizer.': python value}."""
    return {key[len("tokenizer."):]: field.contents()
            for key, field in reader.fields.items() if key.startswith("tokenizer.")}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable Latin-1 bytes map to themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


def _spelled(tokens: Sequence[str]) -> list[str]:
    """Tokens in the byte alphabet; one outside it (a raw-text special like '<think>') is re-spelled
    byte by byte, as the BPE model sees only the alphabet."""
    table = byte_alphabet()
    alphabet = set(table.values())
    return [t if set(t) <= alphabet else "".join(table[b] for b in t.encode("utf-8")) for t in tokens]


def _backend(meta: Mapping):
    """The `tokenizers.Tokenizer` of byte-level BPE metadata."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens, types = list(meta["ggml.tokens"]), list(meta.get("ggml.token_type") or [1] * len(meta["ggml.tokens"]))
    vocab = {tok: i for i, tok in enumerate(_spelled(tokens))}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("ggml.merges", [])]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    split = SPLITS.get(meta.get("ggml.pre"))
    backend.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True) if split is None else
                             pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                      pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                               use_regex=False)]))
    backend.decoder = decoders.ByteLevel()
    alphabet = set(byte_alphabet().values())
    # A control token outside the byte alphabet is a mislabel in some files: adding it would grow
    # the vocabulary past the model's rows.
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t, k in zip(tokens, types) if k == _CONTROL and set(t) <= alphabet])
    backend.add_tokens([AddedToken(t, normalized=False, special=False)
                        for t, k in zip(tokens, types) if k == _USER_DEFINED])
    bos_id = meta.get("ggml.bos_token_id")
    if meta.get("ggml.add_bos_token") and bos_id is not None:
        bos = (tokens[bos_id], bos_id)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]}:0 $A:0", pair=f"{bos[0]}:0 $A:0 {bos[0]}:1 $B:1", special_tokens=[bos])
    return backend


def _special(meta: Mapping, key: str) -> str | None:
    """The token text of `tokenizer.ggml.<key>` (an id), or None when the file has none."""
    index = meta.get(f"ggml.{key}")
    return None if index is None else meta["ggml.tokens"][index]


def tokenizer_from_metadata(meta: Mapping, where: str):
    """`tokenizer.*` metadata (see `read_metadata`) -> a transformers PreTrainedTokenizerFast."""
    import transformers

    kind = meta.get("ggml.model")
    if kind != "gpt2":
        raise ModelLoadError(f"{where}: tokenizer.ggml.model is {kind!r}; expected 'gpt2' (byte-level BPE: "
                             "Llama 3, Qwen2/2.5/3, SmolLM2); for other tokenizers load the model's Hugging Face "
                             "folder instead")
    if "ggml.tokens" not in meta:
        raise ModelLoadError(f"{where}: tokenizer.ggml.tokens is missing; expected the vocabulary as metadata")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_backend(meta), bos_token=_special(meta, "bos_token_id"),
        eos_token=_special(meta, "eos_token_id"), unk_token=_special(meta, "unknown_token_id"),
        pad_token=_special(meta, "padding_token_id"))
    if "chat_template" in meta:
        fast.chat_template = meta["chat_template"]
    return fast
