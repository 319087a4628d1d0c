"""The optimizer: AdamW behind global-norm clipping, with linear warmup and a schedule."""
from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-6
    schedule: str = "constant"  # "constant" | "cosine" | "linear"
    warmup_steps: int = 0
    total_steps: int = 100
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999  # torch.optim.AdamW's default, as TRL (GPG) and verl (EM-RL) train
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    # Optimizer steps per training step (PPO inner epochs x mini-batches): the schedule counts
    # training steps, so every step of one rollout uses the same learning rate (verl steps its
    # scheduler once per rollout) and `total_steps` / `warmup_steps` keep their meaning.
    updates_per_step: int = 1
    skip_nonfinite_updates: int = 0  # consecutive updates with NaN/inf gradients skipped (0: none)


def learning_rate_schedule(c: OptimConfig) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then the named decay to 0."""
    decay_steps = max(c.total_steps - c.warmup_steps, 1)
    decay = {
        "constant": lambda: optax.constant_schedule(c.learning_rate),
        "cosine": lambda: optax.cosine_decay_schedule(c.learning_rate, decay_steps),
        "linear": lambda: optax.linear_schedule(c.learning_rate, 0.0, decay_steps),
    }
    if c.schedule not in decay:
        raise ValueError(f"optim.schedule {c.schedule!r} is not known; expected one of {sorted(decay)}")
    if c.warmup_steps <= 0:
        return decay[c.schedule]()
    warmup = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
    return optax.join_schedules([warmup, decay[c.schedule]()], [c.warmup_steps])


def per_update(schedule: optax.Schedule, updates_per_step: int) -> optax.Schedule:
    """The schedule of training steps as a function of the optimizer's update count:
    lr(count) = schedule(count // updates_per_step)."""
    if updates_per_step <= 1:
        return schedule
    return lambda count: schedule(count // updates_per_step)


def make_optimizer(c: OptimConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = per_update(learning_rate_schedule(c), c.updates_per_step)
    adamw = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
    tx = optax.chain(optax.clip_by_global_norm(c.max_grad_norm), adamw) if c.max_grad_norm > 0 else adamw
    if c.skip_nonfinite_updates > 0:
        # Leaves params and Adam moments as they were while gradients are NaN/inf, at most this many
        # times in a row; the next one is applied, and the loop's finiteness check stops the run.
        tx = optax.apply_if_finite(tx, c.skip_nonfinite_updates)
    return tx, schedule


def skipped_updates(opt_state) -> tuple[int, int]:
    """(consecutive, total) updates skipped for non-finite gradients; (0, 0) without skipping."""
    if not isinstance(opt_state, optax.ApplyIfFiniteState):
        return 0, 0
    return int(opt_state.notfinite_count), int(opt_state.total_notfinite)
