"""The learning rate as a pure function of the optimizer step (not of micro-batches or processes).

No scheduler object holds the rate: `set_lr` writes `lr_at(step)` into the optimizer before each
step, so a checkpoint carries no schedule state and a resumed run follows its own config's schedule.
That is what lets a warmup-stable-decay run be extended: resumed in its constant phase with a larger
max_iters, it stays at the constant rate and decays at the new end.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "wsd")


def lr_at(step: int, learning_rate: float, min_lr: float, warmup_steps: int, max_iters: int,
          schedule: str = "cosine", decay_fraction: float = 0.2) -> float:
    """Rate for optimizer step `step` (1-based): linear warmup from 0, then `schedule` down to min_lr, then flat.

    cosine: a half cosine from the end of warmup to max_iters. wsd (warmup-stable-decay): learning_rate
    until the last `decay_fraction` of max_iters, then a straight line to min_lr.
    lr_at(0) = 0, lr_at(warmup_steps) = learning_rate, lr_at(max_iters) = min_lr.
    """
    if step < warmup_steps:
        return learning_rate * step / warmup_steps
    if step >= max_iters:
        return min_lr
    if schedule == "wsd":
        remaining = (max_iters - step) / (decay_fraction * max_iters)  # of the decay: 1 at its start, 0 at its end
        return learning_rate if remaining >= 1 else min_lr + remaining * (learning_rate - min_lr)
    progress = (step - warmup_steps) / (max_iters - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the rate of the coming optimizer step: `lr`, times the group's `lr_scale`
    where it has one (Muon's group, whose peak is muon_lr rather than learning_rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
