"""The learning rate as a pure function of the optimizer step (not of micro-batches or processes).

`Schedule` is the torch scheduler that puts `lr_at` into an optimizer. Its only state is the number of
optimizer steps taken: the rate is computed from the config of the run that uses it, so a resumed run
follows its own config's schedule, never rates saved in the checkpoint. That is what lets a
warmup-stable-decay run be extended: resumed in its constant phase with a larger max_iters, it stays at
the constant rate and decays at the new end.
"""

from __future__ import annotations

import functools
import math
import warnings

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


class Schedule(torch.optim.lr_scheduler.LRScheduler):
    """A torch scheduler whose rate after n `step()`s (one per optimizer step) is lr_at(n + 1) of `cfg`, times
    each group's `lr_scale` (Muon's group, whose peak is muon_lr rather than learning_rate).

    Its state dict is the step count alone, and the scales are this run's: loading a checkpoint's state moves
    the count, while the rate stays this config's schedule (a LambdaLR would bring back the saved base rates).
    Step it once per optimizer step, skipped or not, with an Accelerator built with
    step_scheduler_with_optimizer=False: otherwise Accelerate steps it once per process, and not at all
    after a step the fp16 loss scaler skipped.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg):
        self.rate = functools.partial(lr_at, learning_rate=cfg.learning_rate, min_lr=cfg.min_lr,
                                      warmup_steps=cfg.warmup_steps, max_iters=cfg.max_iters,
                                      schedule=cfg.lr_schedule, decay_fraction=cfg.decay_fraction)
        self.scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        super().__init__(optimizer)

    def step(self) -> None:
        """Move to the next optimizer step's rate. After a skipped first step (a non-finite gradient, an fp16
        overflow) torch warns that the schedule's first rate is lost; here the rate follows the step count."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            super().step()

    def get_lr(self) -> list[float]:
        return [self.rate(self.last_epoch + 1) * scale for scale in self.scales]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}  # the key every torch scheduler saves its count under

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue after the saved count of steps, at this config's rate for the next one."""
        self.last_epoch = state_dict["last_epoch"]
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr
