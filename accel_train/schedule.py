"""The learning rate as a pure function of the optimizer step (not of micro-batches or processes).

No scheduler object holds the rate: `set_lr` writes `lr_at(step)` into the optimizer before each
step, so a checkpoint carries no schedule state and a resumed run follows its own config's schedule.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, learning_rate: float, min_lr: float, warmup_steps: int, max_iters: int) -> float:
    """Rate for optimizer step `step` (1-based): linear warmup from 0, cosine to min_lr, then flat.

    lr_at(0) = 0, lr_at(warmup_steps) = learning_rate, lr_at(max_iters) = min_lr.
    """
    if step < warmup_steps:
        return learning_rate * step / warmup_steps
    if step >= max_iters:
        return min_lr
    progress = (step - warmup_steps) / (max_iters - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the rate of the coming optimizer step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
