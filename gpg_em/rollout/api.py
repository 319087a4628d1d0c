"""`generate`: strings or token ids in, completions with their log-probs and entropies out.

A host-side wrapper over the pure `sample`: tokenises (chat template),
left-pads to a bucketed width, samples, decodes texts. The trainer calls
`sample` directly with its own (sharded) params; `generate` is for the CLI,
evaluation and tests.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from gpg_em.models.model import Model
from gpg_em.rollout.adaptive_temperature import AdaptiveTemperatureConfig
from gpg_em.rollout.em_inf import EMInfConfig
from gpg_em.rollout.sampler import MIN_BUCKET, left_pad, sample
from gpg_em.rollout.sampling import SamplingConfig


@dataclasses.dataclass
class GenerationResult:
    """B = len(prompts) * num_samples rows, prompt-major (row i * G + j: sample j of prompt i)."""
    tokens: np.ndarray  # [B, N] int32, pad after the stop token
    mask: np.ndarray  # [B, N] int32, 1 on generated tokens up to and including the stop token
    logprobs: np.ndarray  # [B, N] float32, log-prob of each token under the tempered sampling policy
    entropies: np.ndarray  # [B, N] float32, full-vocabulary entropy of that policy
    texts: list[str]  # [B] decoded completions (special tokens skipped)
    prompt_ids: np.ndarray  # [B, P] int32, left-padded, repeated per sample
    prompt_mask: np.ndarray  # [B, P] int32
    num_samples: int


def encode_prompts(tokenizer, prompts: Sequence, chat_template: bool = True) -> list[list[int]]:
    """Token ids of each prompt: id lists pass through; strings are wrapped as one user turn of the
    chat template (with the generation prompt) or, without it, tokenised with the tokenizer's own
    special tokens (e.g. BOS)."""
    out = []
    for p in prompts:
        if not isinstance(p, str):
            out.append([int(t) for t in p])
            continue
        if tokenizer is None:
            raise ValueError("string prompts need a tokenizer; the model has none (pass token-id lists)")
        if chat_template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True)
            out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            out.append(list(tokenizer(p)["input_ids"]))
    if any(len(p) == 0 for p in out):
        raise ValueError("empty prompt: every prompt needs at least one token")
    return out


def default_stop_ids(model: Model) -> tuple[int, ...]:
    """The config's EOS ids plus the tokenizer's EOS id."""
    ids = list(model.config.eos_token_ids)
    eos = getattr(model.tokenizer, "eos_token_id", None) if model.tokenizer is not None else None
    if eos is not None and eos not in ids:
        ids.append(int(eos))
    return tuple(ids)


def _pad_id(model: Model, stop_ids: tuple[int, ...]) -> int:
    pad = getattr(model.tokenizer, "pad_token_id", None) if model.tokenizer is not None else None
    return int(pad) if pad is not None else (stop_ids[0] if stop_ids else 0)


def check_context(ids: Sequence[Sequence[int]], max_new_tokens: int, context: int) -> None:
    """Refuses a prompt whose tokens plus `max_new_tokens` exceed the model's context (nothing is truncated)."""
    for i, prompt in enumerate(ids):
        if len(prompt) + max_new_tokens > context:
            raise ValueError(f"prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} that is "
                             f"{len(prompt) + max_new_tokens} > the model's context of {context} tokens "
                             "(max_position_embeddings): shorten the prompt or lower max_new_tokens")


def generate(model: Model, prompts: Sequence, *, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False, seed: int = 0,
             chat_template: bool = True, em_inf: EMInfConfig | None = None,
             adaptive_temperature: AdaptiveTemperatureConfig | None = None,
             stop_token_ids: Sequence[int] | None = None, sampler=None,
             min_prompt_width: int = MIN_BUCKET, kv_dtype: str = "auto") -> GenerationResult:
    """Samples `num_samples` completions of up to `max_new_tokens` tokens for each prompt.

    `prompts`: strings (chat template applied when `chat_template`) or
    token-id lists. `stop_token_ids`: None = the model's EOS ids, [] = never
    stop early. Log-prob/entropy definitions: `gpg_em.rollout.sampling`.
    `sampler`: a function like `sample` (default), e.g. `sharded.process_sampler` on a mesh.
    `min_prompt_width`: prompts are left-padded to `prompt_bucket(longest, min_prompt_width)`.
    `kv_dtype`: the KV cache's dtype (`SamplingConfig.kv_dtype`).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if max_new_tokens < 1 or num_samples < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}, num_samples={num_samples}: both must be >= 1")
    ids = encode_prompts(model.tokenizer, prompts, chat_template)
    check_context(ids, max_new_tokens, model.config.max_position_embeddings)
    stop = default_stop_ids(model) if stop_token_ids is None else tuple(int(t) for t in stop_token_ids)
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy,
                              stop_token_ids=stop, pad_token_id=_pad_id(model, stop), em_inf=em_inf,
                              adaptive_temperature=adaptive_temperature, kv_dtype=kv_dtype)
    prompt_ids, prompt_mask = left_pad(ids, sampling.pad_token_id, min_width=min_prompt_width)
    out = (sampler or sample)(model.params, prompt_ids, prompt_mask, jax.random.PRNGKey(seed), cfg=model.config,
                 sampling=sampling, max_new_tokens=max_new_tokens, num_samples=num_samples)
    tokens, mask, logprobs, entropies = (np.asarray(a) for a in jax.device_get(out))
    texts = [model.tokenizer.decode(t[m.astype(bool)].tolist(), skip_special_tokens=True)
             if model.tokenizer is not None else "" for t, m in zip(tokens, mask)]
    return GenerationResult(tokens, mask, logprobs, entropies, texts,
                            np.repeat(prompt_ids, num_samples, 0), np.repeat(prompt_mask, num_samples, 0),
                            num_samples)
