"""One full RL step (rollout, rewards, log-probs, update): gpg_em against TRL's GRPOTrainer.

    pip install -e ".[bench]"   # TRL 1.16 (PyTorch CPU), the peer
    python benchmarks/train_step.py [--steps 3] [--warmup 1] [--new-tokens 128] [--sides gpg_em,trl]

Same work on both sides: SmolLM2-135M-Instruct in float32 (the shipped GGUF,
dequantised for both), reasoning-gym chain_sum prompts (the training config's
options and seed), the same chat-templated prompt texts, 4 prompts x 8
samples, at most 128 new tokens, temperature 1 over the full vocabulary, no
KL (beta 0, so no reference model), one optimizer update per step (TRL:
num_iterations 1, one batch of 32 completions per step; gpg_em: GRPO with one
inner epoch), the same reasoning-gym reward function, AdamW at lr 1e-6.
TRL keeps its defaults otherwise (including gradient checkpointing).

Each side runs in its own process, one after the other, so that peak
resident memory (ru_maxrss, model loading included) belongs to one side;
the parent prints the median step time after `--warmup` steps, the ratios,
and gpg_em's split and model FLOP utilisation. MFU counts useful FLOPs only:
2 x (matmul parameters) per generated token plus 6 x (matmul parameters) per
trained token (prompt and completion tokens of the update's forward and
backward), over the median step time, against the matmul peak measured in
the same process (a 2048^3 float32 product).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

WORK = dict(prompts=4, samples=8, lr=1e-6)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # XLA compile (or persistent-cache load) seconds


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # ru_maxrss is in KiB on Linux


def gpg_em_config(new_tokens: int, overrides: tuple[str, ...] = ()):
    """The gpg_em side's run config; `overrides` are "key=value" settings (`--set`), applied last."""
    from configs.grpo import get_config
    from gpg_em.configuration import apply_override
    c = get_config()
    c.rollout.prompts_per_step, c.rollout.group_size = WORK["prompts"], WORK["samples"]
    c.rollout.max_new_tokens, c.rollout.temperature = new_tokens, 1.0
    c.ppo.kl_coef, c.ppo.inner_epochs = 0.0, 1
    c.optim.learning_rate = WORK["lr"]
    # train.micro_batch_size stays 0 (the whole batch in one forward/backward): with the layers scanned and
    # rematerialised, the 4 groups' activations are smaller than a micro-batch loop's gradient accumulator
    # (update temporaries 1.37 vs 1.60 GiB) and the step is faster (26-28 vs 31-33 s on this CPU)
    for kv in overrides:
        key, sep, text = kv.partition("=")
        if not sep:
            raise SystemExit(f"--set {kv!r}: expected KEY=VALUE, e.g. --set train.compile_ahead=true")
        apply_override(c, key, text)
    return c


def matmul_peak(n: int = 2048, dtype: str = "float32", reps: int = 5) -> float:
    """FLOP/s of an n^3 product of random `dtype` matrices in JAX (median of `reps`, after a warm-up)."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.dtype(dtype))
    f = jax.jit(jnp.dot)
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / float(np.median(times))


def matmul_params(cfg) -> int:
    """Parameters that take part in matmuls per token (the embedding lookup does not; the head does)."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    return cfg.num_layers * (d * hd * (2 * cfg.num_heads + 2 * cfg.num_kv_heads) + 3 * d * f) + d * cfg.vocab_size


def run_gpg_em(a) -> dict:
    import tempfile
    from gpg_em.train.loop import Trainer
    import jax.monitoring
    compile_s = [0.0]
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compile_s.__setitem__(0, compile_s[0] + secs) if name == COMPILE_EVENT else None)
    c = gpg_em_config(a.new_tokens, a.set)
    if a.cold:
        c.compilation_cache_dir = tempfile.mkdtemp(prefix="bench_xla_cache_")  # empty: every shape compiles
    trainer = Trainer(c, tempfile.mkdtemp(prefix="bench_gpg_em_"))
    steps = []
    for i in range(a.warmup + a.steps):
        t, compile_s[0] = time.perf_counter(), 0.0
        record = trainer.step(i)
        record["step_seconds"], record["compile_seconds"] = time.perf_counter() - t, compile_s[0]
        steps.append(record)
        print(f"gpg_em step {i}: {record['step_seconds']:.1f} s (compile {compile_s[0]:.1f}, "
              f"sample {record['sample_seconds']:.1f}, "
              f"reward {record['reward_seconds']:.1f}, update {record['update_seconds']:.1f}), "
              f"completion tokens {record['completion_tokens']}, reward {record['task_reward_mean']:.3f}", flush=True)
    cfg = trainer.run.model.config
    return dict(steps=steps, peak_rss_gib=peak_rss_gib(), matmul_params=matmul_params(cfg),
                matmul_peak=matmul_peak())


def trl_dataset(c, tokenizer):
    """The gpg_em run's first prompts, as already chat-formatted texts (TRL applies no template to them)."""
    from datasets import Dataset
    from gpg_em.data import PromptFormatter, make_source
    source = make_source(c.data.source)
    fmt = PromptFormatter(system_prompt=c.data.system_prompt or None, instruction=c.data.instruction or None)
    entries = [source[i] for i in range(256)]
    return Dataset.from_dict({"prompt": [fmt.text(e, tokenizer) for e in entries],
                              "entry": [json.dumps(e, default=str) for e in entries]})


def run_trl(a) -> dict:
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer
    from gpg_em.models.loading import builtin_path
    from gpg_em.rewards import build_rewards, compute_rewards
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from sampler import load_torch_model
    path = builtin_path("smollm2-135m-instruct")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = load_torch_model(path)
    c = gpg_em_config(a.new_tokens)
    rewards = build_rewards(c.reward.fn, c.reward.weights, c.reward.options.to_dict())

    def reward(prompts, completions, entry, **_):
        entries = [json.loads(e) for e in entry]
        r, _ = compute_rewards(rewards, prompts, completions, entries, c.reward.timeout_s)
        return [float(x) for x in r]

    times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.t)
            print(f"trl step {len(times) - 1}: {times[-1]:.1f} s", flush=True)

    args = GRPOConfig(output_dir=os.path.join(a.tmp, "trl"), use_cpu=True, bf16=False,
                      per_device_train_batch_size=WORK["prompts"] * WORK["samples"],
                      num_generations=WORK["samples"], max_completion_length=a.new_tokens, temperature=1.0,
                      top_k=0, top_p=1.0, beta=0.0, num_iterations=1, learning_rate=WORK["lr"],
                      lr_scheduler_type="constant", max_steps=a.warmup + a.steps, save_strategy="no",
                      report_to="none", logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                          train_dataset=trl_dataset(c, tokenizer), processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    return dict(steps=[{"step_seconds": t} for t in times], peak_rss_gib=peak_rss_gib(),
                torch=torch.__version__, threads=torch.get_num_threads())


def child(side: str, a) -> None:
    result = {"gpg_em": run_gpg_em, "trl": run_trl}[side](a)
    print("RESULT " + json.dumps(result, default=float), flush=True)


def spawn(side: str, a) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--new-tokens", str(a.new_tokens), "--tmp", a.tmp]
    cmd += ["--cold"] * a.cold + [x for kv in a.set for x in ("--set", kv)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    result = None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
        else:
            print(f"  [{side}] {line}", end="", flush=True)
    if proc.wait() != 0 or result is None:
        raise SystemExit(f"benchmark side {side!r} failed (exit {proc.returncode})")
    return result


def report(results: dict, a) -> None:
    med = {k: float(np.median([s["step_seconds"] for s in r["steps"][a.warmup:]])) for k, r in results.items()}
    print(f"\nwork: {WORK['prompts']} prompts x {WORK['samples']} samples, <= {a.new_tokens} new tokens, T=1, "
          f"float32, no KL; {a.steps} timed steps after {a.warmup} warm-up; {os.cpu_count()} cores")
    for k, r in results.items():
        ts = [s["step_seconds"] for s in r["steps"][a.warmup:]]
        print(f"{k:>7}: median step {med[k]:6.1f} s (min {min(ts):.1f}, max {max(ts):.1f}), "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB")
    if "gpg_em" in results:
        g = results["gpg_em"]
        timed = g["steps"][a.warmup:]
        warm = [s["step_seconds"] - s["compile_seconds"] for s in timed]
        print(f"gpg_em XLA compile / cache-load seconds per timed step "
              f"{[round(s['compile_seconds'], 1) for s in timed]} (a new prompt or packed-width bucket is also "
              f"traced and lowered again); median step less those: {np.median(warm):.1f} s")
        split = {k: float(np.median([s[k] for s in timed])) for k in
                 ("sample_seconds", "reward_seconds", "logprob_seconds", "update_seconds")}
        print("gpg_em split (medians): " + ", ".join(f"{k.replace('_seconds', '')} {v:.1f} s" for k, v in split.items()))
        gen = np.median([s["completion_tokens"] for s in timed])
        trained = np.median([s["trained_tokens"] for s in timed])
        flops = 2 * g["matmul_params"] * gen + 6 * g["matmul_params"] * trained
        print(f"gpg_em MFU: {flops / 1e12:.2f} TFLOP useful per step ({gen:.0f} generated, {trained:.0f} trained "
              f"tokens) / {med['gpg_em']:.1f} s = {flops / med['gpg_em'] / 1e9:.1f} GFLOP/s = "
              f"{flops / med['gpg_em'] / g['matmul_peak']:.1%} of the measured matmul peak "
              f"({g['matmul_peak'] / 1e9:.0f} GFLOP/s)")
    if len(results) == 2:
        print(f"ratio gpg_em / trl: step time {med['gpg_em'] / med['trl']:.2f}x, "
              f"peak RSS {results['gpg_em']['peak_rss_gib'] / results['trl']['peak_rss_gib']:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--sides", default="gpg_em,trl")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/gpg_em_train_bench")
    p.add_argument("--cold", action="store_true", help="gpg_em compiles into an empty XLA cache (no warm cache)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a gpg_em config override")
    a = p.parse_args()
    if a.side:
        return child(a.side, a)
    print(f"load before: {os.getloadavg()}", flush=True)
    results = {side: spawn(side, a) for side in a.sides.split(",")}
    report(results, a)
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
