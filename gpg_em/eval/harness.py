"""Benchmark a policy on held-out problems: greedy pass@1, sampled avg@k / pass@k, maj@k, EM-INF, adaptive T.

    result = evaluate_model(model, entries, formatter=PromptFormatter(), mode="maj", k=8,
                            max_new_tokens=96, seed=0)
    result["metrics"]  # {"avg@8": ..., "pass@1": ..., "pass@2": ..., ..., "maj@8": ...}

Modes and the decoding each one runs (k completions per problem):

  greedy    argmax decoding, k = 1                    -> pass@1
  avg       sampling at `temperature` / top-p / top-k -> avg@k, unbiased pass@{1,2,4,..,k}, maj@k
  maj       the same samples as avg (self-consistency)-> headline maj@k
  em_inf    EM-INF logits optimisation, then sampling -> as avg (headline avg@k)
  adaptive  adaptive temperature, then sampling       -> as avg (headline avg@k)

`evaluate_modes` runs one generation per distinct decoding, so avg and maj
share their samples (same compute, reported for both). Every sampled mode
uses the same per-chunk seeds, so modes are compared on common random numbers.

Correctness of a completion is the task's own reward reaching 1.0 (`reward_fn`,
default "auto": reasoning-gym's scorer for reasoning-gym entries, math-verify
for file benchmarks; partial credit counts in `reward_mean`, not in accuracy).
maj@k clusters the extracted answers by math-verify equivalence
(`gpg_em.eval.metrics.majority_index`). Compute is reported as generated
tokens and wall seconds (generation and scoring separately; the first sampler
call of each decoding includes JIT compilation, so `tokens_per_second_warm`
leaves it out when there are several calls).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import numpy as np

from gpg_em.eval import metrics as M
from gpg_em.models import Model
from gpg_em.rewards import DEFAULT_EXTRACTION, build_rewards, compute_rewards, extract_answer, math_equal
from gpg_em.rollout import AdaptiveTemperatureConfig, EMInfConfig, generate, sample

MODES = ("greedy", "avg", "maj", "em_inf", "adaptive")
CORRECT_THRESHOLD = 1.0  # a completion is correct when its task reward reaches this


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How completions are drawn; modes with equal Decodings share one generation."""
    greedy: bool
    num_samples: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    em_inf: EMInfConfig | None = None
    adaptive_temperature: AdaptiveTemperatureConfig | None = None

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v is not None}


def decoding_for(mode: str, k: int, *, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 em_inf: EMInfConfig | None = None,
                 adaptive_temperature: AdaptiveTemperatureConfig | None = None) -> Decoding:
    """The decoding a mode runs (module docstring); EM-INF / adaptive defaults are the papers'."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {list(MODES)}")
    if k < 1:
        raise ValueError(f"k (samples per problem) must be >= 1, got {k}")
    if mode == "greedy":
        return Decoding(greedy=True, num_samples=1)
    sampled = dict(greedy=False, num_samples=k, temperature=temperature, top_p=top_p, top_k=top_k)
    if mode == "em_inf":
        return Decoding(**sampled, em_inf=em_inf or EMInfConfig())
    if mode == "adaptive":
        return Decoding(**sampled, adaptive_temperature=adaptive_temperature or AdaptiveTemperatureConfig())
    return Decoding(**sampled)


def headline(mode: str, k: int) -> str:
    return {"greedy": "pass@1", "maj": f"maj@{k}"}.get(mode, f"avg@{k}")


@dataclasses.dataclass
class Generations:
    """K completions for each of P problems, row p * K + j = sample j of problem p."""
    texts: list[str]  # [P * K]
    lengths: np.ndarray  # [P * K] generated tokens per completion
    entropy_sum: float  # sum of recorded token entropies over generated tokens
    seconds: float
    chunk_seconds: list[float]  # per sampler call; the first includes JIT compilation
    chunk_tokens: list[int]


def encode(tokenizer, texts: Sequence[str]) -> list:
    """Token ids of chat-formatted prompt texts, without adding special tokens: the template
    already wrote any BOS (as the trainer encodes them). Without a tokenizer the texts pass through."""
    if tokenizer is None:
        return list(texts)
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def generate_all(model: Model, prompts: Sequence[str], decoding: Decoding, *, max_new_tokens: int, seed: int,
                 rows_per_call: int = 64, decode_slots: int = 0) -> Generations:
    """Runs `decoding` over all prompt texts in chunks of about `rows_per_call` rows.

    `decode_slots` (0: all): rows of a chunk decoded at once (continuous batching, `sampler.sample`); it
    keeps each row's draws (samples equal up to float rounding of the logits, README "Continuous
    batching"), while `rows_per_call` changes the chunks and so their seeds.

    Chunks hold a fixed number of prompts; the last one is padded by repeating
    its final prompt (results dropped) so it reuses the compiled shapes.
    Chunk c samples with seed `seed * 1_000_003 + c`.
    """
    K = decoding.num_samples
    prompts = encode(model.tokenizer, prompts)
    per_call = max(1, rows_per_call // K)
    texts, lengths, ent, chunk_seconds = [], [], 0.0, []
    t0 = time.perf_counter()
    for c, start in enumerate(range(0, len(prompts), per_call)):
        tc = time.perf_counter()
        chunk = list(prompts[start:start + per_call])
        real = len(chunk) * K
        chunk += [chunk[-1]] * (min(per_call, len(prompts)) - len(chunk))
        out = generate(model, chunk, max_new_tokens=max_new_tokens, num_samples=K, temperature=decoding.temperature,
                       top_p=decoding.top_p, top_k=decoding.top_k, greedy=decoding.greedy,
                       seed=seed * 1_000_003 + c, chat_template=False, em_inf=decoding.em_inf,
                       adaptive_temperature=decoding.adaptive_temperature,
                       sampler=functools.partial(sample, decode_slots=decode_slots) if decode_slots else None)
        mask = np.asarray(out.mask[:real], np.float64)
        texts += list(out.texts[:real])
        lengths.append(mask.sum(1))
        ent += float((np.asarray(out.entropies[:real], np.float64) * mask).sum())
        chunk_seconds.append(time.perf_counter() - tc)
    return Generations(texts, np.concatenate(lengths).astype(np.int64), ent, time.perf_counter() - t0,
                       chunk_seconds, [int(x.sum()) for x in lengths])


def score(gens: Generations, entries: Sequence[dict], prompts: Sequence[str], K: int, *, reward_fn: str,
          extraction: str, timeout_s: float) -> tuple[np.ndarray, list[str | None], dict[str, float]]:
    """(task rewards [P, K], extracted answers [P * K], reward metrics) of the generations."""
    components = build_rewards(reward_fn, options={reward_fn: {"extraction": extraction}}
                               if reward_fn in ("auto", "math", "reasoning_gym") else None)
    rows_entries = [e for e in entries for _ in range(K)]
    rows_prompts = [p for p in prompts for _ in range(K)]
    rewards, reward_metrics = compute_rewards(components, rows_prompts, gens.texts, rows_entries, timeout_s)
    answers = [extract_answer(t, extraction) for t in gens.texts]
    return np.asarray(rewards, np.float64).reshape(len(entries), K), answers, reward_metrics


def accuracy_metrics(mode: str, correct_PxK: np.ndarray, answers_PxK: list[list[str | None]],
                     equal: Callable[[str, str], bool]) -> tuple[dict[str, float], list[int | None]]:
    """(metrics, majority index per problem): pass@1 for greedy (no vote); avg@k,
    pass@{1,2,4..k} and maj@k for sampled modes."""
    if mode == "greedy":
        return {"pass@1": M.avg_at_k(correct_PxK)}, [None] * len(answers_PxK)
    K = correct_PxK.shape[1]
    out = {f"avg@{K}": M.avg_at_k(correct_PxK)}
    out.update({f"pass@{k}": M.mean_pass_at_k(correct_PxK, k) for k in M.pass_k_values(K)})
    majority = [M.majority_index(a, equal) for a in answers_PxK]
    # maj@k = mean over problems of M.maj_at_k, with each vote taken once.
    out[f"maj@{K}"] = float(np.mean([0.0 if i is None else float(c[i]) for i, c in zip(majority, correct_PxK)]))
    return out, majority


def _problems(entries, answers_PxK, rewards_PxK, correct_PxK, majority, texts_PxK=None) -> list[dict[str, Any]]:
    out = []
    for p, e in enumerate(entries):
        rec = {"index": e.get("index", p), "gold": e.get("answer"), "answers": answers_PxK[p],
               "rewards": rewards_PxK[p].tolist(), "correct": correct_PxK[p].astype(int).tolist(),
               "majority": majority[p]}
        if texts_PxK is not None:
            rec["texts"] = texts_PxK[p]
        out.append(rec)
    return out


def evaluate_modes(model: Model, entries: Sequence[dict], *, formatter, modes: Sequence[str], k: int,
                   max_new_tokens: int, seed: int = 0, temperature: float = 1.0, top_p: float = 1.0,
                   top_k: int = 0, em_inf: EMInfConfig | None = None,
                   adaptive_temperature: AdaptiveTemperatureConfig | None = None, reward_fn: str = "auto",
                   extraction: str = DEFAULT_EXTRACTION, rows_per_call: int = 64, timeout_s: float = 30.0,
                   equal: Callable[[str, str], bool] = math_equal, keep_texts: bool = False,
                   decode_slots: int = 0) -> dict[str, dict[str, Any]]:
    """{mode: result} for every mode; one generation per distinct decoding (avg and maj share)."""
    if not entries:
        raise ValueError("no problems to evaluate")
    prompts = [formatter.text(e, model.tokenizer) for e in entries]
    options = dict(temperature=temperature, top_p=top_p, top_k=top_k, em_inf=em_inf,
                   adaptive_temperature=adaptive_temperature)
    done: dict[Decoding, tuple] = {}
    results = {}
    for mode in modes:
        dec = decoding_for(mode, k, **options)
        shared = dec in done
        if not shared:
            gens = generate_all(model, prompts, dec, max_new_tokens=max_new_tokens, seed=seed,
                                rows_per_call=rows_per_call, decode_slots=decode_slots)
            t0 = time.perf_counter()
            rewards, answers, reward_metrics = score(gens, entries, prompts, dec.num_samples, reward_fn=reward_fn,
                                                     extraction=extraction, timeout_s=timeout_s)
            done[dec] = (gens, rewards, answers, reward_metrics, time.perf_counter() - t0, mode, {})
        gens, rewards, answers, reward_metrics, score_seconds, first, votes = done[dec]
        results[mode] = _result(mode, dec, gens, rewards, answers, reward_metrics, score_seconds, entries, equal,
                                keep_texts, shared_with=first if shared else None, votes=votes)
    return results


def _result(mode, dec: Decoding, gens: Generations, rewards, answers, reward_metrics, score_seconds, entries,
            equal, keep_texts, shared_with, votes) -> dict[str, Any]:
    K = dec.num_samples
    correct = rewards >= CORRECT_THRESHOLD
    answers_PxK = [answers[p * K:(p + 1) * K] for p in range(len(entries))]
    t0 = time.perf_counter()
    if "acc" not in votes:  # avg and maj share samples: vote once
        votes["acc"] = accuracy_metrics(mode, correct, answers_PxK, equal)
    acc, majority = votes["acc"]
    vote_seconds = time.perf_counter() - t0
    tokens = int(gens.lengths.sum())
    name = headline(mode, K)
    texts = [gens.texts[p * K:(p + 1) * K] for p in range(len(entries))] if keep_texts else None
    return {
        "mode": mode, "decoding": dec.describe(), "k": K, "num_problems": len(entries),
        "headline": name, "score": acc[name], "metrics": acc,
        "reward_mean": float(rewards.mean()), "reward_metrics": reward_metrics,
        "tokens": tokens, "completion_length_mean": float(gens.lengths.mean()),
        "entropy_mean": gens.entropy_sum / max(tokens, 1),
        "generate_seconds": gens.seconds, "score_seconds": score_seconds + vote_seconds,
        "wall_seconds": gens.seconds + score_seconds + vote_seconds,
        "tokens_per_second": tokens / max(gens.seconds, 1e-9),
        # Without the first sampler call (JIT compilation); None with a single call.
        "tokens_per_second_warm": (sum(gens.chunk_tokens[1:]) / max(sum(gens.chunk_seconds[1:]), 1e-9)
                                   if len(gens.chunk_seconds) > 1 else None),
        "chunk_seconds": gens.chunk_seconds,
        "shared_generation_with": shared_with,
        "problems": _problems(entries, answers_PxK, rewards, correct, majority, texts),
    }


def evaluate_model(model: Model, entries: Sequence[dict], *, formatter, mode: str, k: int, max_new_tokens: int,
                   seed: int = 0, em_inf: EMInfConfig | None = None,
                   adaptive_temperature: AdaptiveTemperatureConfig | None = None, **kwargs) -> dict[str, Any]:
    """One mode's result (see `evaluate_modes` for the keyword options and the result layout)."""
    return evaluate_modes(model, entries, formatter=formatter, modes=[mode], k=k, max_new_tokens=max_new_tokens,
                          seed=seed, em_inf=em_inf, adaptive_temperature=adaptive_temperature, **kwargs)[mode]
