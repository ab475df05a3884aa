"""How each optimizer step runs on this machine: its micro-batch (searched for on a GPU) and speed switches.

The data stream draws stream batches of batch_size sequences; an optimizer step takes
gradient_accumulation_steps of them on each process. How a process cuts those sequences into
micro-batches, the sequences of one forward pass, is only a matter of speed. A GPU runs fastest
with the largest micro-batch that fits, so `micro_batch: 0` on a GPU tries the divisors of the
process's share, from the largest the memory plan (planning/) says fits, down, one training step each on a
throwaway model. The data loader
regroups the same windows (data.StreamBatches), so every optimizer step sees the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import DynamoBackend
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

from accel_train.config import TrainConfig
from accel_train.training.hardware import switch_on
from accel_train.training.optim import OptimizerHyperparameters, Optimizers, build_optimizers

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


def trial_step_fits(cfg: TrainConfig, accelerator, size: int, fused_adamw: bool, new_model) -> bool:
    """One forward, backward and optimizer step at micro-batch `size` on a fresh model from `new_model()` (the
    run's, document masks and all) with the run's optimizers; within HEADROOM?"""
    device = accelerator.device
    model = new_model().to(device)
    optimizer = Optimizers(build_optimizers(model, OptimizerHyperparameters.of(cfg), fused=fused_adamw,
                                            mixed_precision=accelerator.mixed_precision))
    torch.cuda.reset_peak_memory_stats(device)
    x = torch.randint(cfg.model.vocab_size, (size, cfg.block_size), device=device)
    with accelerator.autocast():
        _, loss = model(x, x)
    loss.backward()
    optimizer.step()
    peak = torch.cuda.max_memory_allocated(device)
    return peak <= HEADROOM * torch.cuda.get_device_properties(device).total_memory


def resolve_micro_batch(cfg: TrainConfig, accelerator, fused_adamw: bool, new_model, planned: int) -> int:
    """The config's micro_batch; or, when 0, one stream batch (batch_size) off a GPU and the largest that fits on
    one (the smallest any process found, so all processes agree): the plan's largest (`planned`, planning/), confirmed
    by a trial step, or the next ones down where that fails."""
    if cfg.micro_batch:
        return cfg.micro_batch
    if accelerator.device.type != "cuda":
        return cfg.batch_size
    size = largest_fitting([s for s in divisors_descending(cfg.sequences_per_step) if s <= planned],
                           lambda s: trial_step_fits(cfg, accelerator, s, fused_adamw, new_model))
    torch.cuda.reset_peak_memory_stats(accelerator.device)  # the peak that counts is training's
    return int(accelerator.gather(torch.tensor([size], device=accelerator.device)).min().item())


@dataclass(frozen=True)
class StepPlan:
    """How this machine runs each optimizer step of a config: worked out once, by `plan_step`, so that the
    trainer and the benchmark report and use the same choices."""
    cpu: bool
    mixed_precision: str  # Accelerate's: "no", "bf16" or "fp16"
    compile: bool
    fused_adamw: bool
    micro_batch: int  # sequences per forward pass
    micro_steps: int  # forward passes (micro-batches) per optimizer step on one process


def plan_step(cfg: TrainConfig, accelerator, new_model, planned: int) -> StepPlan:
    """The choices the Accelerator made (device, precision, compile), and those that need its device: fused
    AdamW and, when the config leaves it at 0, the micro-batch (on a GPU the memory plan's largest, `planned`,
    confirmed by a trial step on a fresh model from `new_model()`, the run's)."""
    cuda = accelerator.device.type == "cuda"
    fused_adamw = switch_on(cfg.fused_adamw, cuda)
    micro_batch = resolve_micro_batch(cfg, accelerator, fused_adamw, new_model, planned)
    return StepPlan(cpu=not cuda, mixed_precision=accelerator.mixed_precision,
                    compile=accelerator.state.dynamo_plugin.backend != DynamoBackend.NO, fused_adamw=fused_adamw,
                    micro_batch=micro_batch, micro_steps=cfg.sequences_per_step // micro_batch)
