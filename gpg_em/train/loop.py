"""The RL loop: prompts -> rollout -> rewards -> (GPG: beta_th rounds) -> update; eval, checkpoints, metrics.

Every source of randomness is derived from (seed, step, round), and the data
iterator's position is checkpointed, so a run resumed from a checkpoint
continues exactly as the uninterrupted run would have.

What protects a run's work (each in its own module): one run per workdir
(`lock.py`); resume from the newest intact checkpoint with the same config
(`checkpoint.py`, `resume.py`); a stop before anything non-finite is saved
and on failing rewards (`guard.py`); SIGTERM/SIGINT finish the step and save
(`signals.py`).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from gpg_em.configuration import ConfigError
from gpg_em.data import PromptFormatter, PromptIterator, make_length_fn, make_source
from gpg_em.errors import Interrupted
from gpg_em.models import Model
from gpg_em.models.shared_prefix import lane_need, packing_index
from gpg_em.parallel import (agree_any, agree_max, batch_shards, gather_host_rows, global_batch, is_primary,
                             left_pad_to, process_slice, replicated_array)
from gpg_em.rewards import build_rewards
from gpg_em.rollout.decode_cpu import release_packed_weights
from gpg_em.rollout.sharded import process_sampler
from gpg_em.train import ahead, checkpoint as ckpt, compiles, guard, host_memory, resume, shapes
from gpg_em.train.evaluate import evaluate
from gpg_em.train.lock import WorkdirLock
from gpg_em.train.metrics import MetricsWriter, NullWriter
from gpg_em.train.optim import skipped_updates
from gpg_em.train.resampling import assemble_batch, needs_more
from gpg_em.train.rollouts import RolloutSpec, check_groups_share_prompts, merge_prompt_width, sample_round, score_round
from gpg_em.train.setup import BATCH_KEYS, Run, build_run, needs_old_logprobs
from gpg_em.train.signals import StopRequests


def round_seed(seed: int, step: int, round_index: int) -> int:
    return (seed * 1_000_003 + step * 1009 + round_index) % (2 ** 31 - 1)


class Trainer:
    """Holds a run's pieces; `train()` runs it to `total_steps`, resuming from the workdir."""

    def __init__(self, c, workdir: str):
        self.c, self.workdir = c, workdir
        # Everything that can refuse the config comes first: nothing is built or written before it.
        self.rewards = build_rewards(c.reward.fn, c.reward.weights, c.reward.options.to_dict())
        train_source, eval_source = make_source(c.data.source), make_source(c.data.eval_source)
        self.run: Run = build_run(c)
        context = self.run.model.config.max_position_embeddings
        if c.data.max_prompt_tokens + c.rollout.max_new_tokens > context:
            raise ConfigError(f"config keys data.max_prompt_tokens + rollout.max_new_tokens = "
                              f"{c.data.max_prompt_tokens + c.rollout.max_new_tokens} exceed the model's context "
                              f"of {context} tokens")
        self._timing = dict(sample_seconds=0.0, reward_seconds=0.0, logprob_seconds=0.0)  # of the current step
        # Multi-host: every process walks the same prompt order and keeps its own rows of each batch.
        self.rows = process_slice(self.run.mesh, c.rollout.prompts_per_step)
        self.sampler = process_sampler(self.run.sampler, c.rollout.prompts_per_step, c.rollout.decode_slots)
        # every process holds all eval prompts
        self.eval_sampler = process_sampler(self.run.sampler, decode_slots=c.rollout.decode_slots)
        self.tokenizer = self.run.model.tokenizer
        self.formatter = PromptFormatter(system_prompt=c.data.system_prompt or None,
                                         instruction=c.data.instruction or None)
        length_fn = make_length_fn(self.tokenizer, self.formatter)
        self.prompts = PromptIterator(train_source, c.rollout.prompts_per_step, seed=c.seed,
                                      length_fn=length_fn, max_prompt_tokens=c.data.max_prompt_tokens)
        self.eval_entries = [eval_source[i] for i in range(min(c.eval.num_prompts, len(eval_source)))]
        self.spec = RolloutSpec(c.rollout.group_size, c.rollout.max_new_tokens, c.rollout.temperature,
                                c.rollout.top_p, c.rollout.top_k,
                                min_prompt_width=c.rollout.min_prompt_width, kv_dtype=c.rollout.kv_dtype)
        self.em_rl = dict(kind=c.em.rl_kind, reduction=c.em.rl_reduction) if c.algorithm == "em_rl" else None
        os.makedirs(workdir, exist_ok=True)
        self.checkpoints = ckpt.manager(workdir, c.keep_checkpoints)
        self.last_saved: int | None = None
        self.rungs = self.packed_widths()
        self.ahead = ahead.CompileAhead(self.rungs, ahead.enabled(c.train.compile_ahead, jax.default_backend()))

    def packed_widths(self) -> list[int] | None:
        """The ladder of packed widths a step can meet (`shapes.ladder`); None without `train.pack`."""
        if not self.run.step_config.pack:
            return None
        B, N = self.c.rollout.prompts_per_step * self.spec.group_size, self.spec.max_new_tokens
        lanes = self.run.step_config.pack_lanes(B, batch_shards(self.run.mesh))
        return shapes.ladder(self.c.train.pack_multiple, self.c.train.pack_growth, B // lanes * N)

    def shapes_line(self) -> str:
        prompts = shapes.prompt_widths(self.spec.min_prompt_width, self.c.data.max_prompt_tokens)
        return shapes.shapes_line(self.rungs, prompts, self.ahead.on)

    def policy(self) -> Model:
        return Model(self.run.state.params, self.run.model.config, self.tokenizer)

    # -- one step ---------------------------------------------------------
    def rollout(self, step: int, round_index: int) -> dict[str, Any]:
        entries = next(self.prompts)[self.rows]
        texts = [self.formatter.text(e, self.tokenizer) for e in entries]
        t0 = time.perf_counter()
        r = sample_round(self.policy(), texts, self.spec, round_seed(self.c.seed, step, round_index), self.sampler)
        t1 = time.perf_counter()
        metrics, failures = score_round(r, entries, texts, self.spec.group_size, self.rewards,
                                        self.c.reward.timeout_s, self.em_rl)
        self.failures.add(failures, len(r["texts"]))
        counts = {k: v + self._reward_metrics.get(k, 0) for k, v in metrics.items() if "/n_" in k}
        self._reward_metrics = {**metrics, **counts}  # counts over every round of the step; means of the last
        self._timing["sample_seconds"] += t1 - t0
        self._timing["reward_seconds"] += time.perf_counter() - t1
        return r

    def collect(self, step: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The training batch: one round, or GPG's beta_th resampling rounds (DESIGN.md)."""
        G, groups = self.spec.group_size, self.rows.stop - self.rows.start
        beta = self.c.gpg.beta_th if self.c.algorithm == "gpg" else 0.0
        max_rounds = self.c.gpg.max_rounds if beta > 0 else 1
        rounds: list[dict[str, Any]] = []
        self._reward_metrics = {}
        self.failures = guard.RewardFailures(self.c.reward.max_failure_fraction, f"step {step + 1}")
        while len(rounds) < max_rounds and agree_any(needs_more(rounds, G, groups, beta)):
            rounds.append(self.rollout(step, len(rounds)))
        guard.stop_on_reward_failures(self.failures)
        self._reward_metrics.update(self.failures.metrics())
        batch, info = assemble_batch(merge_prompt_width(rounds), G, groups)
        info["hit_round_limit"] = needs_more(rounds, G, groups, beta)
        return batch, info

    def global_arrays(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """The update's batch as global arrays from this process's rows, prompts padded to the widest."""
        width = agree_max(batch["prompt_ids"].shape[1])
        local = {k: left_pad_to(batch[k], width) if k.startswith("prompt") else batch[k] for k in BATCH_KEYS}
        arrays = global_batch(local, self.run.mesh, self.c.rollout.prompts_per_step * self.spec.group_size)
        if self.run.step_config.pack:
            arrays["pack_index"] = self.pack_index(batch["completion_mask"])
        return arrays

    def pack_index(self, completion_mask: np.ndarray) -> jax.Array:
        """The groups' valid completion tokens end to end in lanes, one width (a ladder rung, `shapes.ladder`)
        for all processes."""
        G, mask = self.spec.group_size, gather_host_rows(completion_mask)
        lanes = self.run.step_config.pack_lanes(mask.shape[0], batch_shards(self.run.mesh))
        width = shapes.ladder_width(lane_need(mask, G, lanes), self.rungs)
        return replicated_array(packing_index(mask, G, width, lanes), self.run.mesh)

    def train_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.run.step_config.prompt_group_size > 1:
            check_groups_share_prompts(batch["prompt_ids"], self.spec.group_size)
        arrays = self.global_arrays(batch)
        obj = self.run.objective
        t = time.perf_counter()
        if needs_old_logprobs(self.c, obj):
            arrays["old_logprobs"] = self.logprobs(self.run.state.params, arrays, compile_ahead=True)
        if obj.kl_coef > 0:
            arrays["ref_logprobs"] = self.logprobs(self.run.model.params, arrays)
        jax.block_until_ready(arrays)
        self._timing["logprob_seconds"] = time.perf_counter() - t
        return arrays

    def logprobs(self, params, arrays: dict[str, jax.Array], compile_ahead: bool = False) -> jax.Array:
        """The log-prob pass (`run.logprobs`), through an executable compiled ahead when there is one."""
        rows = {k: arrays[k] for k in self.run.step_config.row_keys}
        jitted = getattr(self.run.logprobs, "jitted", None)
        lower = jitted.lower if compile_ahead and jitted is not None else None
        return self.ahead.run("logprobs", self.run.logprobs, (params, rows), lower)

    def update(self, arrays: dict[str, jax.Array], rng: jax.Array):
        """One call of the update step (`run.update`), through an executable compiled ahead when there is one."""
        return self.ahead.run("update", self.run.update, (self.run.state, arrays, rng),
                              getattr(self.run.update, "lower", None), donated=True)

    def step(self, step: int) -> dict[str, Any]:
        self._timing = dict(sample_seconds=0.0, reward_seconds=0.0, logprob_seconds=0.0)
        t0, cpu0, compiled0 = time.perf_counter(), time.process_time(), compiles.totals()
        batch, info = self.collect(step)
        release_packed_weights()  # the sampler's packed weight copy, kept while rounds reuse the params
        host_memory.trim()
        t1 = time.perf_counter()
        arrays = self.train_batch(batch)
        epochs = self.c.ppo.inner_epochs if self.run.objective.uses_ratio else 1
        for epoch in range(epochs):
            self.run.state, metrics = self.update(arrays, jax.random.PRNGKey(step))
        metrics = jax.device_get(metrics)
        host_memory.trim()
        t2 = time.perf_counter()
        record = {"kind": "train", "step": step + 1, **{k: float(v) for k, v in metrics.items()},
                  "task_reward_mean": float(np.mean(batch["task_rewards"])),
                  "sample_entropy_mean": float(np.sum(batch["sample_entropies"] * batch["completion_mask"])
                                               / max(batch["completion_mask"].sum(), 1)),
                  "rounds": info["n_rounds"], "hit_round_limit": bool(info["hit_round_limit"]),
                  "batch_valid_groups": info["n_valid_groups"],
                  "completion_tokens": int(batch["completion_mask"].sum()),
                  "trained_tokens": int(batch["completion_mask"].sum() + batch["prompt_mask"].sum()),
                  "rollout_seconds": t1 - t0, "update_seconds": t2 - t1 - self._timing["logprob_seconds"],
                  "cpu_seconds": time.process_time() - cpu0,  # all of this process's threads: robust to sharing
                  **compiles.since(compiled0),  # XLA compilations in the step (a new shape; README "Shapes")
                  **self._timing, **self._reward_metrics,
                  **self.prompts.metrics()}
        return record

    # -- the loop ---------------------------------------------------------
    def restore(self) -> int:
        """The step of the newest intact checkpoint, restored (0 when there is none)."""
        got = ckpt.restore_intact(self.checkpoints, self.workdir, ckpt.abstract_like(self.run.state),
                                  guard.params_finite, move=is_primary())
        if got is None:
            return 0
        step, self.run.state, loop = got
        self.prompts.restore(loop["data"])
        self.last_saved = step
        return step

    def save(self, step: int) -> None:
        ckpt.save(self.checkpoints, step, self.run.state, {"data": self.prompts.state(), "step": step})
        self.last_saved = step

    def eval(self, step: int, writer: MetricsWriter) -> dict[str, Any]:
        compiled0 = compiles.totals()
        result = evaluate(self.policy(), self.eval_entries, self.formatter, self.rewards,
                          max_new_tokens=self.c.eval.max_new_tokens, timeout_s=self.c.reward.timeout_s,
                          sampler=self.eval_sampler, kv_dtype=self.spec.kv_dtype)
        failures = guard.RewardFailures(self.c.reward.max_failure_fraction, f"eval at step {step}")
        failures.add(result.pop("reward_failures"), len(self.eval_entries))
        guard.stop_on_reward_failures(failures)
        writer.write({"kind": "eval", "step": step, **result, **failures.metrics(), **compiles.since(compiled0)})
        return result

    def open_records(self, start: int, changes: list) -> MetricsWriter | NullWriter:
        """metrics.jsonl from `start` on, with the allowed config `changes` recorded; config.json rewritten."""
        if not is_primary():  # metrics and the config are written once, by process 0
            return NullWriter()
        writer = MetricsWriter(self.workdir, resume_step=start)
        for key, old, new in changes:
            writer.write({"kind": "config_change", "step": start, "key": key, "old": json.dumps(old),
                          "new": json.dumps(new)})
        with open(os.path.join(self.workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(self.c.to_json(indent=2))
        return writer

    def train(self) -> dict[str, Any]:
        lock = WorkdirLock(self.workdir) if is_primary() else contextlib.nullcontext()
        with lock, StopRequests() as stop:
            changes = (resume.check_config(self.workdir, self.c.to_json(), self.c.resume.allow_config_changes)
                       if self.checkpoints.all_steps() else [])
            start = self.restore()
            writer = self.open_records(start, changes)
            if is_primary():
                print(self.shapes_line(), file=sys.stderr, flush=True)
            try:
                return self.loop(start, writer, stop)
            finally:
                self.ahead.close()
                writer.close()

    def loop(self, start: int, writer: MetricsWriter | NullWriter, stop: StopRequests) -> dict[str, Any]:
        if start == 0:
            self.eval(0, writer)
        record: dict[str, Any] = {}
        bar = tqdm(range(start, self.c.total_steps), initial=start, total=self.c.total_steps, desc="train",
                   dynamic_ncols=True, disable=not is_primary())
        for step in bar:
            record = self.step(step)
            in_a_row, record["skipped_updates"] = skipped_updates(self.run.state.opt_state)
            writer.write(record)
            guard.check_update(record, self.run.state.params, self.last_saved, skipped=in_a_row > 0)
            bar.set_postfix(reward=f"{record['reward_mean']:.3f}", loss=f"{record['loss']:.4f}",
                            H=f"{record['entropy_mean']:.3f}", valid=f"{record.get('valid_fraction', 1):.2f}")
            done = step + 1
            if done % self.c.eval_every == 0 or done == self.c.total_steps:
                self.eval(done, writer)
            stopping = agree_any(stop.signum is not None) and done < self.c.total_steps
            if done % self.c.checkpoint_every == 0 or done == self.c.total_steps or stopping:
                self.save(done)
            if stopping:
                raise Interrupted(f"{stop.name or 'a signal'}: stopped after step {done} of "
                                  f"{self.c.total_steps}, checkpoint saved in {self.workdir}; rerun the same "
                                  "command to resume", stop.signum or 15)
        return record


def train(c, workdir: str) -> dict[str, Any]:
    return Trainer(c, workdir).train()
