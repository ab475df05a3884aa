"""Which device, precision and speed switches a config gets on this machine."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from accelerate.utils import DynamoBackend

from accel_train.errors import UserError
from accel_train.training.micro_batch import resolve_micro_batch

MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}


def resolve_hardware(device: str, dtype: str) -> tuple[bool, str]:
    """(run on CPU?, Accelerate mixed_precision) for the config's `device` and `dtype`.

    `auto` means bf16 on GPUs that have it, fp16 on older GPUs and fp32 on the CPU. Asking for
    bf16 on a GPU without it falls back to fp16 with a warning, as the seed did.
    """
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise UserError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    cpu = device == "cpu" or not has_cuda
    if dtype == "auto":
        dtype = "float32" if cpu else ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    if cpu and dtype == "float16":
        raise UserError("dtype float16 needs a GPU; on the CPU use bfloat16 or float32")
    if not cpu and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bfloat16: training in float16 with loss scaling instead", stacklevel=2)
        dtype = "float16"
    return cpu, MIXED_PRECISION[dtype]


def switch_on(value: str, cuda: bool) -> bool:
    """A speed switch (`auto`, `on`, `off`): `auto` is on where it pays, on CUDA, and off on the CPU
    (torch.compile there mostly costs compile time)."""
    return value == "on" or (value == "auto" and cuda)


@dataclass(frozen=True)
class Settings:
    """The config's automatic choices as this machine resolves them: worked out once, by `resolve_settings`,
    so that the trainer and the benchmark report and use the same ones."""
    cpu: bool
    mixed_precision: str  # Accelerate's: "no", "bf16" or "fp16"
    compile: bool
    fused_adamw: bool
    micro_batch: int  # sequences per forward pass
    micro_steps: int  # forward passes per optimizer step on one process


def resolve_settings(cfg, accelerator) -> Settings:
    """The choices the Accelerator made (device, precision, compile), and those that need its device: fused
    AdamW and, when the config leaves it at 0, the micro-batch (a search on a GPU)."""
    cuda = accelerator.device.type == "cuda"
    fused_adamw = switch_on(cfg.fused_adamw, cuda)
    micro_batch = resolve_micro_batch(cfg, accelerator, fused_adamw)
    return Settings(cpu=not cuda, mixed_precision=accelerator.mixed_precision,
                    compile=accelerator.state.dynamo_plugin.backend != DynamoBackend.NO, fused_adamw=fused_adamw,
                    micro_batch=micro_batch, micro_steps=cfg.sequences_per_step // micro_batch)
