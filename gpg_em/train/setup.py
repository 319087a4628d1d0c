"""Builds what a run needs from its config: model, tokenizer, objective, mesh, state, jitted steps."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from gpg_em.models import Model, ModelConfig, init_params, load_pretrained
from gpg_em.models.byte_tokenizer import VOCAB_SIZE, byte_tokenizer
from gpg_em.models.loading import pretrained_config
from gpg_em.configuration import ConfigError
from gpg_em.parallel import make_mesh
from gpg_em.rollout.sharded import ShardedSampler
from gpg_em.train.host_memory import set_mmap_threshold, trim_after_compiles
from gpg_em.train.objective import Objective, make_objective
from gpg_em.train.optim import OptimConfig, make_optimizer
from gpg_em.train.state import create_state
from gpg_em.train.step import StepConfig, jit_logprobs, jit_update_step

# sample_logprobs: the sampler's, for the logged sampler-vs-trainer mismatch (step.rollout_mismatch)
BATCH_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "rewards", "sample_logprobs")


def model_config(c) -> ModelConfig:
    """The policy's architecture without its weights: `model.tiny` dimensions (vocabulary: the byte
    tokenizer's unless `model.tiny.vocab_size` is set) or the metadata of a pretrained spec."""
    if c.model.name == "tiny":
        dims = {"vocab_size": VOCAB_SIZE, **c.model.tiny.to_dict()}
        return ModelConfig(eos_token_ids=(byte_tokenizer().eos_token_id,), dtype=c.model.dtype, **dims)
    return pretrained_config(c.model.name, c.model.dtype)


def build_model(c) -> Model:
    """The policy at initialisation: a pretrained spec, or a random "tiny" model with a byte tokenizer."""
    if c.model.name == "tiny":
        cfg = model_config(c)
        return Model(init_params(cfg, jax.random.PRNGKey(c.seed)), cfg, byte_tokenizer())
    return load_pretrained(c.model.name, dtype=c.model.dtype)


def build_objective(c) -> Objective:
    """The loss (and its static options) the config's algorithm trains with."""
    G = c.rollout.group_size
    ppo = dict(clip_eps=c.ppo.clip_eps, kl_clamp=c.ppo.kl_clamp, entropy_coef=c.ppo.entropy_coef,
               **({} if c.ppo.aggregation == "default" else {"aggregation": c.ppo.aggregation}))
    L = dict(max_completion_length=c.rollout.max_new_tokens)
    kl = dict(kl_coef=c.ppo.kl_coef, **L)
    gpg = dict(std_normalize=c.gpg.std_normalize, age=c.gpg.age, aggregation=c.gpg.aggregation,
               **({"scale_batch": True} if c.gpg.scale_batch else {}),
               **({"age_micro_steps": c.gpg.age_micro_steps, "age_devices": c.gpg.age_devices}
                  if c.gpg.age_micro_steps * c.gpg.age_devices > 1 else {}))
    options = {
        "gpg": lambda: make_objective("gpg", G, **gpg),
        "grpo": lambda: make_objective("grpo", G, **ppo, **kl),
        "rloo": lambda: make_objective("rloo", G, **ppo, **kl),
        "dr_grpo": lambda: make_objective("dr_grpo", G, **ppo, **kl),
        "em_ft": lambda: make_objective("em_ft", G, reduction=c.em.ft_reduction),
        "em_rl": lambda: {"rloo": lambda: make_objective("rloo", G, **ppo, **kl),
                          "grpo": lambda: make_objective("grpo", G, **ppo, **kl),
                          "gpg": lambda: make_objective("gpg", G, **gpg)}[c.em.rl_loss](),
    }
    return options[c.algorithm]()


def needs_old_logprobs(c, objective: Objective) -> bool:
    """Ratio losses with several optimizer steps per rollout (inner epochs or PPO mini-batches)
    record the rollout policy's log-probs once.

    With one step the ratio is exp(logp - stop_gradient(logp)) = 1 (TRL's
    on-policy case): the loss receives old_logprobs=None and no extra forward runs.
    """
    return objective.uses_ratio and updates_per_step(c, objective) > 1


def updates_per_step(c, objective: Objective) -> int:
    """Optimizer steps per training step: inner_epochs * mini_batches for ratio losses, else 1."""
    return c.ppo.inner_epochs * c.ppo.mini_batches if objective.uses_ratio else 1


@dataclasses.dataclass
class Run:
    """Everything the loop holds on to."""
    model: Model  # params here are the *initial* ones (the reference policy when KL is on)
    objective: Objective
    mesh: Any
    state: Any
    state_shardings: Any
    update: Any  # jitted (state, batch, rng) -> (state, metrics)
    logprobs: Any  # jitted (params, batch) -> logp [B, N]
    schedule: Any
    sampler: Any  # rollout.sharded.ShardedSampler on the mesh
    step_config: StepConfig


def check_process_batch(c, mesh) -> None:
    """Several processes each sample their own prompts: the prompts must split evenly over the batch axes."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if jax.process_count() > 1 and c.rollout.prompts_per_step % shards:
        raise ConfigError(f"config key rollout.prompts_per_step: {c.rollout.prompts_per_step} prompts do not split "
                          f"over data*fsdp = {shards} batch shards of mesh.shape {tuple(c.mesh.shape)} across "
                          f"{jax.process_count()} processes")


def batch_keys(c, objective: Objective, sc: StepConfig) -> tuple[str, ...]:
    """The arrays an update batch carries for this run."""
    return BATCH_KEYS + (("pack_index",) if sc.pack else ()) + (
        ("old_logprobs",) if needs_old_logprobs(c, objective) else ()) + (
        ("ref_logprobs",) if objective.kl_coef > 0 else ())


def use_compilation_cache(path: str) -> None:
    """Persistent XLA compilation cache at `path`, every executable in it (a second run compiles nothing)."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build_run(c) -> Run:
    use_compilation_cache(c.compilation_cache_dir)
    set_mmap_threshold(c.host_mmap_threshold)
    trim_after_compiles()
    model = build_model(c)
    objective = build_objective(c)
    oc = OptimConfig(total_steps=c.total_steps, updates_per_step=updates_per_step(c, objective),
                     **c.optim.to_dict())
    tx, schedule = make_optimizer(oc)
    mesh = make_mesh(c.mesh.shape)
    check_process_batch(c, mesh)
    if objective.kl_coef > 0:  # the state is donated each step: keep a separate copy as the reference
        model = dataclasses.replace(model, params=jax.tree.map(lambda x: x.copy(), model.params))
    state, shardings = create_state(model.params, model.config, tx, mesh)
    sc = StepConfig.from_config(c, objective)
    keys = batch_keys(c, objective, sc)
    update = jit_update_step(model.config, sc, tx, schedule, mesh, shardings, keys)
    logprobs = jit_logprobs(model.config, sc, mesh, shardings.params)
    if objective.kl_coef <= 0:
        model = dataclasses.replace(model, params=None)  # no reference model is kept
    return Run(model, objective, mesh, state, shardings, update, logprobs, schedule,
               ShardedSampler(model.config, mesh, shardings.params), sc)
