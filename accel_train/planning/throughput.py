"""How long a run takes at a stated MFU: FLOPs per token by PaLM's formula (models/flops.py), per optimizer step
for all processes, and the tokens per second that the MFU of their GPUs' peak amounts to."""

from __future__ import annotations

from dataclasses import dataclass

from accel_train.config import TrainConfig
from accel_train.models.flops import flops_per_token


@dataclass(frozen=True)
class TimePlan:
    flops_per_token: float
    flops_per_step: float  # all processes together
    mfu: float
    tokens_per_s: float | None  # all processes together; None without a peak
    seconds: float | None  # to max_iters

    @classmethod
    def of(cls, cfg: TrainConfig, processes: int, peak_tflops: float | None, mfu: float) -> TimePlan:
        per_token = flops_per_token(cfg.model, cfg.block_size)
        tokens_per_step = cfg.tokens_per_step * processes
        tokens_per_s = mfu * peak_tflops * 1e12 * processes / per_token if peak_tflops else None
        seconds = cfg.max_iters * tokens_per_step / tokens_per_s if tokens_per_s else None
        return cls(per_token, per_token * tokens_per_step, mfu, tokens_per_s, seconds)
