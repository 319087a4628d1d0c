"""A byte-level tokenizer with a ChatML chat template, built offline.

For tiny random models (tests, `configs/tiny.py`): ids 0-255 are the bytes
(in GPT-2's printable byte-to-unicode alphabet), then <|endoftext|>,
<|im_start|>, <|im_end|>. Any text round-trips exactly.
"""
from __future__ import annotations

from gpg_em.models.gguf_tokenizer import byte_alphabet

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def byte_tokenizer():
    """A transformers PreTrainedTokenizerFast over bytes; eos = <|im_end|> (id 258)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_chars = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {ch: i for i, ch in enumerate(byte_chars)}
    for j, tok in enumerate(SPECIAL_TOKENS):
        vocab[tok] = 256 + j
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>", bos_token=None)
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _byte_of(ch: str) -> int:
    """Inverse of GPT-2's bytes_to_unicode for one character."""
    return _BYTE_OF[ch]


_BYTE_OF = {ch: b for b, ch in byte_alphabet().items()}
