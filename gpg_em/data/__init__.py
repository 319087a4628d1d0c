"""Prompt data: sources of entries, chat formatting, resumable batching, TFDS.

Trainer usage:
  source = make_source(cfg.data.source)              # sequence of entries
  fmt = PromptFormatter(system_prompt=..., instruction=...)
  it = PromptIterator(source, batch_size, seed=cfg.seed,
                      length_fn=make_length_fn(tokenizer, fmt), max_prompt_tokens=...)
  batch = next(it); ckpt["data"] = it.state(); ... it.restore(ckpt["data"])
"""
from gpg_em.data.formatting import DEFAULT_INSTRUCTION, PromptFormatter, make_length_fn
from gpg_em.data.iterator import PromptIterator
from gpg_em.data.sources import (ReasoningGymSource, gold_from_text, load_jsonl, load_parquet,
                                 make_entry, make_source)

# TFDS names import tensorflow_datasets (~1 s) only when used.
_LAZY = {"prepare_tfds", "TfdsSource", "tfds_source"}


def __getattr__(name):
    if name in _LAZY:
        from gpg_em.data import tfds
        return getattr(tfds, name)
    raise AttributeError(f"module 'gpg_em.data' has no attribute {name!r}")


__all__ = [
    "DEFAULT_INSTRUCTION", "PromptFormatter", "PromptIterator", "ReasoningGymSource",
    "TfdsSource", "gold_from_text", "load_jsonl", "load_parquet", "make_entry",
    "make_length_fn", "make_source", "prepare_tfds", "tfds_source",
]
