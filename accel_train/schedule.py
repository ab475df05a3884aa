"""The learning rate as a pure function of the optimizer step (not of micro-batches or processes)."""

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


def warmup_cosine(optimizer: torch.optim.Optimizer, learning_rate: float, min_lr: float, warmup_steps: int,
                  max_iters: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose k-th `step()` sets the rate of optimizer step k + 1.

    Step it once per optimizer step; its position is saved with the other state by `save_state`.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: lr_at(done + 1, learning_rate, min_lr, warmup_steps, max_iters) / learning_rate)
