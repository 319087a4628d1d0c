"""Tokenizers (with their chat templates) through transformers' AutoTokenizer, offline.

A Hugging Face folder carries tokenizer.json / tokenizer_config.json; a GGUF
file carries its vocabulary, merges and chat template as `tokenizer.ggml.*`
metadata, which transformers converts (several seconds for a 49k-token BPE).
Nothing is fetched or cached: `local_files_only=True` throughout.
"""
from __future__ import annotations

from pathlib import Path

from gpg_em.models.hf import ModelLoadError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(folder: Path) -> bool:
    """Whether a Hugging Face folder holds tokenizer files."""
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def load_tokenizer(folder: Path):
    """AutoTokenizer of a Hugging Face folder."""
    import transformers
    try:
        return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{folder}: tokenizer files could not be loaded ({e}); "
                             f"expected one of {list(_TOKENIZER_FILES)}") from None


def load_gguf_tokenizer(path: Path):
    """AutoTokenizer built from a GGUF file's tokenizer.ggml.* metadata."""
    import transformers
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name,
                                                          local_files_only=True)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        raise ModelLoadError(f"{path}: tokenizer could not be built from its tokenizer.ggml.* metadata ({e}); "
                             "expected a tokenizer model transformers converts (gpt2 BPE, llama SentencePiece)"
                             ) from None
