"""Defaults shared by every experiment; each algorithm file states only its deltas.

    gpg-em train --config configs/base.py --workdir runs/base

runs GPG (the default algorithm) on the shipped SmolLM2-135M-Instruct and
reasoning-gym chain_sum, offline. Override any key with --config.KEY=VALUE.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.algorithm = "gpg"  # gpg | grpo | dr_grpo | rloo | em_ft | em_rl
    c.seed = 0
    # XLA executables are kept here across runs, so a second run with the same shapes compiles
    # nothing ("" turns the cache off). Shared by every run of this user.
    c.compilation_cache_dir = "~/.cache/gpg_em/xla"
    # glibc's mmap threshold in bytes (gpg_em/train/host_memory.py): buffers at least this large are
    # returned to the system when freed, so host RSS follows the live set; 0 keeps glibc's default.
    # (The loop also calls malloc_trim after sampling and after the update, whatever this is.)
    c.host_mmap_threshold = 1 << 20
    c.total_steps = 20
    c.checkpoint_every = 10
    c.eval_every = 10
    c.keep_checkpoints = 2  # the newest N (>= 1) are kept; only finite states are ever saved
    # Resuming refuses config changes other than run length, schedules, layout and devices
    # (gpg_em/train/resume.py) unless listed here: comma list of keys or prefixes, or "*".
    c.resume = ml_collections.ConfigDict(dict(allow_config_changes=""))

    c.model = ml_collections.ConfigDict()
    c.model.name = "smollm2-135m-instruct"  # built-in name, HF folder, .gguf file, or "tiny"
    c.model.dtype = "float32"  # float32 | bfloat16
    # Dimensions of the random model used when name == "tiny" (byte-level tokenizer).
    c.model.tiny = ml_collections.ConfigDict(dict(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16))

    c.data = ml_collections.ConfigDict()
    # chain_sum with 2-3 terms of 1-2 digits: SmolLM2-135M's greedy pass@1 is 6% on reasoning-gym's
    # default chain_sum and 33% on 2 terms (48 held-out problems, measured): this sits between.
    task_options = dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)
    c.data.source = ml_collections.ConfigDict(dict(
        kind="reasoning_gym", task="chain_sum", options=task_options, seed=0, size=10_000))
    c.data.eval_source = ml_collections.ConfigDict(dict(
        kind="reasoning_gym", task="chain_sum", options=task_options, seed=12345, size=64))
    c.data.system_prompt = ""
    c.data.instruction = "Put your final answer within \\boxed{}."
    c.data.max_prompt_tokens = 256

    c.rollout = ml_collections.ConfigDict()
    c.rollout.prompts_per_step = 4  # groups per batch
    c.rollout.group_size = 8  # samples per prompt (G)
    c.rollout.max_new_tokens = 96
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    # Prompts are left-padded to the next power of two, at least this: every prompt up to this
    # length shares one compiled shape of the sampler and the update (a new shape costs a trace and
    # a compile: tens of seconds on a CPU, ~45 s for a 0.5B model on a GPU).
    c.rollout.min_prompt_width = 128
    # The sampler's KV cache dtype (prompt and generated keys/values, rollouts and evals): "auto" (the
    # model's compute dtype, model.dtype) | "float32" | "bfloat16" (half the cache memory of a float32
    # model; attention still computes in the compute dtype with float32 scores). Changes what is sampled.
    c.rollout.kv_dtype = "auto"
    # Continuous batching: decode a rollout's rows this many at a time, a finished row's slot refilled at
    # once with the next row (the same draws; tokens equal up to float rounding of the logits, README
    # "Continuous batching"). 0: all rows at once; -1: as many as the KV
    # caches of half the free device memory hold (README "Continuous batching").
    c.rollout.decode_slots = 0

    c.reward = ml_collections.ConfigDict()
    c.reward.fn = "reasoning_gym"  # registry name(s) or "module.path:function"
    c.reward.weights = ml_collections.config_dict.placeholder(list)
    c.reward.options = ml_collections.ConfigDict()  # {fn name: {option: value}}, e.g. extraction
    c.reward.timeout_s = 30.0
    # A reward fn that raises, times out or returns a wrong length, non-numbers or NaN stops the run;
    # > 0 instead scores failed samples 0 while they are at most this fraction of a step's samples
    # (every rollout round counted; logged as reward/<name>/failed_fraction).
    c.reward.max_failure_fraction = 0.0

    # GPG (Chu et al. 2025): REINFORCE with group-mean advantages and AGE. scale_batch (with
    # std_normalize): the batch's reward std instead of each group's. age_micro_steps / age_devices:
    # AGE and the token mean per gradient-accumulation micro-step and device as the official code
    # computes them (1, 1: over the whole batch).
    c.gpg = ml_collections.ConfigDict(dict(
        std_normalize=False, scale_batch=False, age=True, aggregation="token_mean", beta_th=0.0, max_rounds=20,
        age_micro_steps=1, age_devices=1))
    # Ratio-based losses (GRPO, Dr.GRPO, RLOO): clipped surrogate, optional KL. Each rollout batch is
    # split into mini_batches mini-batches of whole groups, one optimizer step each, and the pass is
    # repeated inner_epochs times; with more than one step the old log-probs are the rollout policy's.
    # aggregation: "default" (grpo/rloo seq_mean, dr_grpo fixed_length) | seq_mean | token_mean | fixed_length;
    # kl_clamp > 0 clips the per-token k3 KL to [-kl_clamp, kl_clamp] (verl: 10); entropy_coef: verl's
    # entropy bonus, loss - entropy_coef * aggregated entropy.
    c.ppo = ml_collections.ConfigDict(dict(clip_eps=0.2, kl_coef=0.0, inner_epochs=1, mini_batches=1,
                                           aggregation="default", kl_clamp=0.0, entropy_coef=0.0))
    # Entropy minimisation (Agarwal et al. 2025).
    c.em = ml_collections.ConfigDict(dict(
        ft_reduction="seq_sum",  # EM-FT: seq_sum (paper Eq. 2) | token_mean
        rl_kind="token",  # EM-RL: token (-sum H) | trajectory (sum log p)
        rl_reduction="mean",  # sum (paper) | mean (released code)
        rl_loss="rloo"))  # loss the EM-RL reward trains with: rloo (paper) | gpg | grpo

    c.optim = ml_collections.ConfigDict(dict(
        learning_rate=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999,
        eps=1e-8, max_grad_norm=1.0))
    # > 0: an update whose gradients are NaN/inf is skipped (logged as skipped_updates), at most this
    # many in a row; otherwise any non-finite loss, gradient norm or parameter stops the run.
    c.optim.skip_nonfinite_updates = 0

    # share_prompts: each group's prompt is computed once in the update (exact, gpg_em.models.shared_prefix);
    # pack: the groups' completions are computed end to end without padding, in as few lanes as the
    # micro-batches and batch shards allow (one on a single device, with the whole batch), each lane's
    # width rounded up to pack_multiple tokens (a bounded set of compiled shapes); scan_layers: the layers run in a
    # lax.scan (traced and compiled once, not once per layer); remat: recompute each layer in the
    # backward pass (one more forward). scan_layers + remat keeps only each layer's input: 1.1 instead
    # of 3.7 GiB of update temporaries for a group of 8 x 128 tokens of SmolLM2-135M, and the least
    # compile time. Unrolled without remat (both false) has the fastest steps and ~1.5x the memory.
    # attention_block: with completions longer than this many tokens (rollout.max_new_tokens), the packed
    # completion attention runs in query blocks of this many slots with an online softmax (exact): its
    # memory follows the block, not the square of the completion length (README "Long completions");
    # 0: one block of max_new_tokens slots against a window of twice that, at any length.
    # pack_growth: packed widths are a ladder of multiples of pack_multiple, each at least pack_growth times the
    # one before (1.25: 128, 256, 384, 512, 640, 896, 1152, 1536, ...; 1.0: every multiple), capped at a lane's
    # rows x max_new_tokens (gpg_em/train/shapes.py): fewer compiled update shapes (the base config's 32 x 96 tokens:
    # 11 instead of 24) for at most 25% more padded slots plus one multiple (need n -> width <= 128 *
    # ceil(1.25 n / 128)); padding is exact, results do not change. compile_ahead: after the first update,
    # a background thread compiles the update (and the old-log-prob pass) for the ladder's other widths at the
    # prompt widths met so far, nearest first, so a step meeting a new width compiles nothing (README
    # "Compiled shapes"); "auto": on for GPU/TPU (the host idles while the device samples), off on a CPU
    # (the compiles would compete with sampling); "true" / "false".
    c.train = ml_collections.ConfigDict(dict(micro_batch_size=0, chunk_size=128, share_prompts=True, pack=True,
                                             pack_multiple=128, pack_growth=1.25, compile_ahead="auto",
                                             scan_layers=True, remat=True, attention_block=512))
    c.eval = ml_collections.ConfigDict(dict(num_prompts=64, max_new_tokens=96, greedy=True))
    # Device mesh over (data, fsdp, tensor); -1 takes the remaining devices (README "Scale-out").
    c.mesh = ml_collections.ConfigDict(dict(shape=(-1, 1, 1)))
    # Multi-host: coordinator "host:port", process count and id; empty/-1 falls back to GPG_EM_COORDINATOR,
    # GPG_EM_NUM_PROCESSES, GPG_EM_PROCESS_ID (TPU pod slices need none of them).
    c.distributed = ml_collections.ConfigDict(dict(coordinator="", num_processes=-1, process_id=-1))
    return c
