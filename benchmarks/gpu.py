"""GPU figures: the RL-step benchmark's work on a Qwen2.5-0.5B-sized random-weight policy in bfloat16.

    python benchmarks/gpu.py [--steps 5] [--warmup 2] [--prompts 4] [--sampler-batches 4x8,64x8] [--json FILE]

Three measurements in one process, on whatever accelerator JAX sees (it
also runs on a CPU, slowly, with `--small` dimensions for a smoke test):

1. Sampler tokens/s: `gpg_em.rollout.sample` at temperature 1 with no stop
   tokens (so every row makes exactly `--new-tokens`), prefill included,
   compilation excluded (one warm-up call), median of `--repeats` calls, for
   each `prompts x samples` in `--sampler-batches`. Beside it, when PyTorch
   with CUDA is importable, transformers' `generate` on a Qwen2 model of the
   same dimensions (its own random weights, bfloat16, SDPA attention) on the
   same prompt ids, same count of tokens.
2. One full RL step, as `benchmarks/train_step.py` runs it (GRPO objective,
   beta 0, one update per step, 4 prompts x 8 samples of reasoning-gym
   chain_sum, <= 128 new tokens, T = 1, byte tokenizer; `--prompts` changes
   the 4): median step time
   after `--warmup` steps and the split.
3. MFU: useful FLOPs per step, 2 x (matmul parameters) per generated token
   plus 6 x (matmul parameters) per trained token, over the median step
   time, against the bfloat16 matmul peak measured here (an 8192^3 product)
   and against the device's nominal dense bf16 peak where it is known.

Random weights sample almost uniformly over 151,936 ids, so completions run to
the full 128 tokens: the step does its worst-case work.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import COMPILE_EVENT, gpg_em_config, matmul_params, matmul_peak  # noqa: E402

# Qwen2.5-0.5B: hidden 896, 24 layers, 14 query / 2 KV heads of 64, MLP 4864, vocab 151936, q/k/v bias, tied head
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                  num_kv_heads=2, head_dim=64, model_type="qwen2", qkv_bias=True, tie_embeddings=True,
                  rope_theta=1e6, rms_norm_eps=1e-6)
SMALL = dict(QWEN25_05B, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
             head_dim=16)
NOMINAL_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense, SXM data sheets


def config(a):
    import ml_collections
    c = gpg_em_config(a.new_tokens)
    c.rollout.prompts_per_step = a.prompts
    c.model.name, c.model.dtype = "tiny", "bfloat16"
    c.model.tiny = ml_collections.ConfigDict(SMALL if a.small else QWEN25_05B)
    c.data.max_prompt_tokens = 1024  # byte tokens: chain_sum prompts are ~300-500 bytes
    return c


def sampler_figures(model, prompts_x_samples: str, a) -> dict:
    import jax
    from gpg_em.rollout import SamplingConfig, left_pad, sample
    n_prompts, G = (int(v) for v in prompts_x_samples.split("x"))
    rng = np.random.default_rng(0)
    lengths = rng.integers(a.prompt_len // 2, a.prompt_len + 1, n_prompts)
    ids = [rng.integers(0, 256, n).tolist() for n in lengths]
    prompt_ids, prompt_mask = left_pad(ids, 0)
    N, B = a.new_tokens, n_prompts * G
    sampling = SamplingConfig(temperature=1.0)

    def ours(seed=0):
        out = sample(model.params, prompt_ids, prompt_mask, jax.random.PRNGKey(seed), cfg=model.config,
                     sampling=sampling, max_new_tokens=N, num_samples=G)
        jax.block_until_ready(out)
    t = time.perf_counter()
    ours()
    compile_s = time.perf_counter() - t
    times = []
    for r in range(a.repeats):
        t = time.perf_counter()
        ours(r + 1)
        times.append(time.perf_counter() - t)
    res = dict(batch=prompts_x_samples, rows=B, prompt_width=int(prompt_ids.shape[1]), new_tokens=N,
               gpg_em_tok_s=B * N / float(np.median(times)), gpg_em_first_call_s=compile_s)
    theirs = transformers_generate(model.config, ids, G, N, a.repeats)
    if theirs:
        res["transformers_tok_s"] = B * N / theirs
        res["ratio"] = res["gpg_em_tok_s"] / res["transformers_tok_s"]
    return res


def transformers_generate(cfg, ids, G, N, repeats) -> float | None:
    """Median seconds of transformers' generate for the same work on CUDA, or None without CUDA."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from gpg_em.models.config import to_hf_config
    hf = transformers.Qwen2Config(**{k: v for k, v in to_hf_config(cfg).items() if k != "architectures"})
    model = transformers.Qwen2ForCausalLM(hf).to(device="cuda", dtype=torch.bfloat16).eval()
    width = max(map(len, ids))
    t_ids = torch.tensor([[0] * (width - len(x)) + x for x in ids], device="cuda")
    t_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device="cuda")
    gen = transformers.GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=N,
                                        num_return_sequences=G, eos_token_id=None, pad_token_id=0)

    def call():
        with torch.no_grad():
            out = model.generate(input_ids=t_ids, attention_mask=t_mask, generation_config=gen)
        torch.cuda.synchronize()
        assert out.shape == (len(ids) * G, width + N), out.shape
    call()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t)
    del model
    torch.cuda.empty_cache()
    return float(np.median(ts))


def step_figures(a) -> dict:
    import jax.monitoring
    from gpg_em.train.loop import Trainer
    compile_s = [0.0]
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compile_s.__setitem__(0, compile_s[0] + secs) if name == COMPILE_EVENT else None)
    trainer = Trainer(config(a), tempfile.mkdtemp(prefix="bench_gpu_"))
    steps = []
    for i in range(a.warmup + a.steps):
        t, compile_s[0] = time.perf_counter(), 0.0
        r = trainer.step(i)
        r["step_seconds"], r["compile_seconds"] = time.perf_counter() - t, compile_s[0]
        steps.append({k: v for k, v in r.items() if isinstance(v, (int, float))})
        print(f"step {i}: {r['step_seconds']:.2f} s (compile {r['compile_seconds']:.1f}, sample "
              f"{r['sample_seconds']:.2f}, reward {r['reward_seconds']:.2f}, logprob {r['logprob_seconds']:.2f}, "
              f"update {r['update_seconds']:.2f}), completion tokens {r['completion_tokens']}", flush=True)
    return dict(model=trainer.policy(), steps=steps, matmul_params=matmul_params(trainer.run.model.config))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=4, help="prompts per RL step (8 samples each)")
    p.add_argument("--sampler-batches", default="4x8,64x8", help="prompts x samples, comma-separated")
    p.add_argument("--prompt-len", type=int, default=400, help="sampler prompts: lengths in [len/2, len]")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--small", action="store_true", help="tiny dimensions: a CPU smoke test of this script")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args()
    import jax
    dev = jax.devices()[0]
    name = getattr(dev, "device_kind", str(dev))
    print(f"device: {name} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}", flush=True)
    out = dict(device=name, jax=jax.__version__, dims="small" if a.small else "Qwen2.5-0.5B", dtype="bfloat16")

    st = step_figures(a)  # builds the model (random init, seed 0) and runs the RL steps
    timed = st["steps"][a.warmup:]
    med = float(np.median([s["step_seconds"] for s in timed]))
    split = {k: float(np.median([s[k] for s in timed])) for k in
             ("sample_seconds", "reward_seconds", "logprob_seconds", "update_seconds", "compile_seconds")}
    gen = float(np.median([s["completion_tokens"] for s in timed]))
    trained = float(np.median([s["trained_tokens"] for s in timed]))
    flops = 2 * st["matmul_params"] * gen + 6 * st["matmul_params"] * trained
    peak = matmul_peak(1024 if a.small else 8192, "bfloat16", reps=10)
    nominal = next((v * 1e12 for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)
    out["step"] = dict(median_s=med, split=split, generated_tokens=gen, trained_tokens=trained,
                       useful_tflop=flops / 1e12, measured_bf16_peak_tflops=peak / 1e12,
                       mfu_measured=flops / med / peak, mfu_nominal=flops / med / nominal if nominal else None,
                       all_steps_s=[s["step_seconds"] for s in st["steps"]])
    print(f"\nRL step ({a.steps} timed after {a.warmup} warm-up): median {med:.2f} s; split (medians) " +
          ", ".join(f"{k.replace('_seconds', '')} {v:.2f} s" for k, v in split.items()), flush=True)
    print(f"  useful {flops / 1e12:.2f} TFLOP ({gen:.0f} generated, {trained:.0f} trained tokens) -> "
          f"{flops / med / 1e12:.1f} TFLOP/s = {flops / med / peak:.1%} of the measured bf16 matmul peak "
          f"({peak / 1e12:.0f} TFLOP/s)" + (f", {flops / med / nominal:.1%} of the nominal {nominal / 1e12:.0f}"
                                             if nominal else ""), flush=True)

    out["sampler"] = []
    for b in a.sampler_batches.split(","):
        r = sampler_figures(st["model"], b, a)
        out["sampler"].append(r)
        print(f"sampler {b} (prompt width {r['prompt_width']}, {a.new_tokens} new tokens): gpg_em "
              f"{r['gpg_em_tok_s']:.0f} tok/s (first call {r['gpg_em_first_call_s']:.1f} s)" +
              (f", transformers {r['transformers_tok_s']:.0f} tok/s, ratio {r['ratio']:.2f}x"
               if "ratio" in r else ""), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
