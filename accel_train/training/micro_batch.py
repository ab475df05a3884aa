"""How many sequences each forward pass takes, leaving the effective batch as the config asks.

Training means batch_size x gradient_accumulation_steps x processes sequences per optimizer step;
how a process cuts its share into forward passes is only a matter of speed. A GPU runs fastest
with the largest micro-batch that fits, so `micro_batch: 0` on a GPU tries the divisors of the
process's share, largest first, one training step each on a throwaway model. The data loader
regroups the same windows (data.RandomWindowBatches), so every optimizer step sees the same data.
"""

from __future__ import annotations

import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

from accel_train.config import TrainConfig
from accel_train.models.gemma3 import Gemma3
from accel_train.training.optim import build_optimizer

HEADROOM = 0.9  # a size whose trial step peaks above this share of the GPU's memory does not count as fitting


def divisors_descending(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def largest_fitting(sizes: list[int], fits) -> int:
    """The first of `sizes` for which `fits(size)` is true and runs out of memory nowhere."""
    for size in sizes:
        try:
            ok = fits(size)
        except RuntimeError as err:  # torch.OutOfMemoryError included
            if not should_reduce_batch_size(err):
                raise
            ok = False
        clear_device_cache(garbage_collection=True)  # outside the except: its traceback held the tensors
        if ok:
            return size
    raise RuntimeError(f"not even a micro-batch of {sizes[-1]} fits in memory")


def trial_step_fits(cfg: TrainConfig, accelerator, size: int, fused_adamw: bool) -> bool:
    """One forward, backward and AdamW step at micro-batch `size` on a fresh model; within HEADROOM?"""
    device = accelerator.device
    model = Gemma3(cfg.model, fused_loss=cfg.fused_loss, checkpoint_layers=cfg.checkpoint_layers).to(device)
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), fused=fused_adamw)
    torch.cuda.reset_peak_memory_stats(device)
    x = torch.randint(cfg.model.vocab_size, (size, cfg.block_size), device=device)
    with accelerator.autocast():
        _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated(device)
    return peak <= HEADROOM * torch.cuda.get_device_properties(device).total_memory


def resolve_micro_batch(cfg: TrainConfig, accelerator, fused_adamw: bool) -> int:
    """The config's micro_batch; or, when 0, batch_size off a GPU and the largest that fits on one
    (the smallest any process found, so all processes agree)."""
    if cfg.micro_batch:
        return cfg.micro_batch
    if accelerator.device.type != "cuda":
        return cfg.batch_size
    size = largest_fitting(divisors_descending(cfg.sequences_per_step),
                           lambda s: trial_step_fits(cfg, accelerator, s, fused_adamw))
    torch.cuda.reset_peak_memory_stats(accelerator.device)  # the peak that counts is training's
    return int(accelerator.gather(torch.tensor([size], device=accelerator.device)).min().item())
