"""The learning rate as a pure function of the optimizer step (not of micro-batches or processes).

`Schedule` is the torch scheduler that puts `lr_at` into an optimizer. Its only state is the number of
optimizer steps taken: the rate is computed from the config of the run that uses it, so a resumed run
follows its own config's schedule, never rates saved in the checkpoint. That is what lets a
warmup-stable-decay run be extended: resumed in its constant phase with a larger max_iters, it stays at
the constant rate and decays at the new end.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

SCHEDULES = ("cosine", "wsd")


@dataclass(frozen=True)
class LrSchedule:
    """The numbers that fix the learning rate at every optimizer step: linear warmup from 0 over `warmup_steps`,
    then `shape` (one of SCHEDULES) down to min_lr at max_iters, then flat."""
    learning_rate: float
    min_lr: float
    warmup_steps: int
    max_iters: int
    shape: str = "cosine"
    decay_fraction: float = 0.2  # wsd: the share of max_iters spent decaying

    @classmethod
    def of(cls, cfg) -> LrSchedule:
        """The schedule a run's config asks for."""
        return cls(cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.max_iters, cfg.lr_schedule, cfg.decay_fraction)


def lr_at(step: int, schedule: LrSchedule) -> float:
    """Rate for optimizer step `step` (1-based) under `schedule`.

    cosine: a half cosine from the end of warmup to max_iters. wsd (warmup-stable-decay): learning_rate
    until the last `decay_fraction` of max_iters, then a straight line to min_lr.
    lr_at(0) = 0, lr_at(warmup_steps) = learning_rate, lr_at(max_iters) = min_lr.
    """
    s = schedule
    if step < s.warmup_steps:
        return s.learning_rate * step / s.warmup_steps
    if step >= s.max_iters:
        return s.min_lr
    if s.shape == "wsd":
        remaining = (s.max_iters - step) / (s.decay_fraction * s.max_iters)  # of the decay: 1 at its start, 0 at end
        return s.learning_rate if remaining >= 1 else s.min_lr + remaining * (s.learning_rate - s.min_lr)
    progress = (step - s.warmup_steps) / (s.max_iters - s.warmup_steps)
    return s.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (s.learning_rate - s.min_lr)


class Schedule(torch.optim.lr_scheduler.LRScheduler):
    """A torch scheduler whose rate after n `step()`s (one per optimizer step) is lr_at(n + 1) of `schedule`, times
    each group's `lr_scale` (Muon's group, whose peak is muon_lr rather than learning_rate).

    Its state dict is the step count alone, and the scales are this run's: loading a checkpoint's state moves
    the count, while the rate stays this config's schedule (a LambdaLR would bring back the saved base rates).
    Step it once per optimizer step, skipped or not, with an Accelerator built with
    step_scheduler_with_optimizer=False: otherwise Accelerate steps it once per process, and not at all
    after a step the fp16 loss scaler skipped.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LrSchedule):
        self.schedule = schedule
        self.scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        super().__init__(optimizer)

    def step(self) -> None:
        """Move to the next optimizer step's rate. After a skipped first step (a non-finite gradient, an fp16
        overflow) torch warns that the schedule's first rate is lost; here the rate follows the step count."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            super().step()

    def get_lr(self) -> list[float]:
        return [lr_at(self.last_epoch + 1, self.schedule) * scale for scale in self.scales]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}  # the key every torch scheduler saves its count under

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue after the saved count of steps, at this config's rate for the next one."""
        self.last_epoch = state_dict["last_epoch"]
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr
