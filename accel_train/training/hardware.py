"""Which device and precision a config gets on this machine, and what its `auto` speed switches mean here.

The step plan built from them (fused AdamW, compile, the micro-batch search) is micro_batch.py's."""

from __future__ import annotations

import warnings

import torch

from accel_train.errors import UserError, first_line

MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}
DTYPES = ("auto", *MIXED_PRECISION)  # the config's choices of device, dtype and speed switch, all read here
DEVICES = ("auto", "cpu", "cuda")
SWITCHES = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


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


def set_activation_memory_budget(budget: float) -> None:
    """Set torch's process-wide share of the activations that a compiled backward pass keeps: the min-cut
    partitioner recomputes the rest, cheapest first, a finer trade of memory for compute than checkpoint_layers."""
    from torch._functorch import config as functorch_config

    functorch_config.activation_memory_budget = budget


def switch_on(value: str, cuda: bool) -> bool:
    """A speed switch (`auto`, `on`, `off`): `auto` is on where it pays, on CUDA, and off on the CPU
    (torch.compile there mostly costs compile time)."""
    return value == "on" or (value == "auto" and cuda)


def usable_device(name: str) -> torch.device:
    """The --device, checked by computing on it and reading the result back: a name torch does not know, a GPU
    this machine lacks and `meta` (shapes without data) all fail here, in one line, before the slow load."""
    try:
        device = torch.device(name)
        torch.ones(1, device=device).add(1).cpu()
    except (RuntimeError, AssertionError, NotImplementedError, ValueError) as err:
        raise UserError(f"cannot compute on --device {name!r}: {first_line(err)}") from None
    return device
