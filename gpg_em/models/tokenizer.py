"""Tokenizers (with their chat templates), offline and without PyTorch.

A Hugging Face folder carries tokenizer.json / tokenizer_config.json, read by
transformers' AutoTokenizer; a GGUF file carries its vocabulary, merges and
chat template as `tokenizer.ggml.*` metadata, rebuilt by `gguf_tokenizer`
(transformers' own GGUF route imports PyTorch). Nothing is fetched or cached:
`local_files_only=True` throughout.
"""
from __future__ import annotations

from pathlib import Path

from gpg_em.models import gguf_tokenizer
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


def load_gguf_tokenizer(reader, path: Path):
    """Tokenizer built from the tokenizer.ggml.* metadata of an open GGUF file (`reader`) at `path`."""
    try:
        return gguf_tokenizer.tokenizer_from_metadata(gguf_tokenizer.read_metadata(reader), str(path))
    except ModelLoadError:
        raise
    except Exception as e:  # malformed metadata: an index, a type or tokenizers' own (plain) Exception
        raise ModelLoadError(f"{path}: tokenizer could not be built from its tokenizer.ggml.* metadata "
                             f"({type(e).__name__}: {e}); expected byte-level BPE tokens, merges and ids") from None
