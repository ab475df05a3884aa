"""Each process's memory for a config on a machine: the step measured on fake tensors (step_memory), the terms the
machine adds (machines), whether that fits, and the largest micro-batch that does among those the trainer's search
tries (micro_batch.divisors_descending)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from accel_train.config import TrainConfig
from accel_train.planning.fake_world import fake_processes, fake_tensors, fully_sharded
from accel_train.planning.machines import Machine
from accel_train.planning.step_memory import FakeRun, StepMemory
from accel_train.training.micro_batch import divisors_descending
from accel_train.training.hardware import MIXED_PRECISION, switch_on
from accel_train.training.optim import OptimizerHyperparameters, build_optimizers, check_distributed

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
SHARDINGS = ("ddp", "fsdp")
NO_BF16 = ("V100", "T4")  # cards of PEAK_TFLOPS without bfloat16: `auto` runs them in float16


@dataclass(frozen=True)
class RunLayout:
    """How the planned run computes, as the trainer would choose on that machine: processes and sharding, precision
    and speed switches."""
    processes: int
    sharding: str  # "ddp" (or one process) or "fsdp"
    mixed_precision: str  # Accelerate's: "no", "bf16", "fp16"
    fused_adamw: bool
    compiled: bool

    @classmethod
    def of(cls, cfg: TrainConfig, machine: Machine, processes: int, sharding: str) -> RunLayout:
        """The choices `auto` makes for `cfg` on `machine` (training.hardware's rules)."""
        dtype = cfg.dtype
        if dtype == "auto":
            dtype = ("float16" if machine.name in NO_BF16 else "bfloat16") if machine.gpu else "float32"
        if sharding == "fsdp":
            check_distributed(cfg.optimizer, "FSDP")
        return cls(processes, sharding, MIXED_PRECISION[dtype], switch_on(cfg.fused_adamw, machine.gpu),
                   switch_on(cfg.compile, machine.gpu))

    @property
    def fsdp(self) -> bool:
        return self.sharding == "fsdp"


@contextlib.contextmanager
def fake_run(cfg: TrainConfig, layout: RunLayout, new_model: Callable[[], torch.nn.Module]):
    """The run of `cfg` on fake tensors, as rank 0 of `layout` (step_memory.FakeRun): the model from `new_model()`
    (the run's), wrapped by FSDP2 on a fake process group, with the run's optimizers; yields `measure(micro_batch)`,
    one process's StepMemory, DDP's gradient buckets included."""
    world = fake_processes(layout.processes) if layout.fsdp else contextlib.nullcontext()
    with world as mesh, fake_tensors():
        model = new_model()
        if layout.fsdp:
            model = fully_sharded(model, mesh, layout.mixed_precision)
        optimizers = build_optimizers(model, OptimizerHyperparameters.of(cfg), fused=layout.fused_adamw,
                                      mixed_precision=layout.mixed_precision)
        run = FakeRun(model, optimizers, cfg.block_size, cfg.model.vocab_size, cfg.sequences_per_step,
                      AUTOCAST.get(layout.mixed_precision), cfg.grad_clip)
        ddp = layout.processes > 1 and not layout.fsdp  # DDP's reducer keeps its own copy of the gradients
        buckets = sum(p.numel() * p.element_size() for p in run.params) if ddp else 0
        yield lambda micro_batch: run.measure(micro_batch).plus_temporary(buckets)


@dataclass(frozen=True)
class MemoryPlan:
    """One process's memory for a run: at its micro-batch (`memory`, and the terms the machine adds, `extra`), and
    the largest micro-batch that fits (0: none does)."""
    machine: Machine
    layout: RunLayout
    micro_batch: int
    memory: StepMemory
    extra: list[tuple[str, int]]
    largest_micro_batch: int
    needs: dict[int, int]  # what each micro-batch measured needs, as `need` counts it

    @property
    def need(self) -> int:
        """Bytes a process needs: the step's peak and the machine's extra terms."""
        return self.memory.peak + sum(size for _, size in self.extra)

    @property
    def fits(self) -> bool:
        return self.need <= self.machine.memory


def plan_memory(cfg: TrainConfig, machine: Machine, layout: RunLayout, new_model: Callable[[], torch.nn.Module],
                micro_batch: int, search: bool = True) -> MemoryPlan:
    """The plan of `cfg` at `micro_batch` on `machine`, with the largest of the micro-batches the trainer's search
    tries that fits (sought when `search`, or when `micro_batch` does not fit; else `micro_batch`); each size
    measured on the fake run (fake_run)."""
    with fake_run(cfg, layout, new_model) as measure:
        measured: dict[int, StepMemory] = {}

        def need(size: int) -> int:
            if size not in measured:
                measured[size] = measure(size)
            peak = measured[size].peak
            return peak + sum(extra for _, extra in machine.extra_terms(peak, layout.compiled))

        largest = micro_batch
        if need(micro_batch) > machine.memory or search:
            largest = largest_fitting_size(divisors_descending(cfg.sequences_per_step)[::-1], need, machine.memory,
                                           micro_batch)
    memory = measured[micro_batch]
    return MemoryPlan(machine, layout, micro_batch, memory, machine.extra_terms(memory.peak, layout.compiled), largest,
                      {size: need(size) for size in measured})


def largest_fitting_size(sizes: list[int], need: Callable[[int], int], memory: int, anchor: int) -> int:
    """The largest of `sizes` (ascending) whose `need(size)` is at most `memory`, 0 if none: a binary search (need
    grows with the size), whose first guesses come from the line through the largest size and `anchor`, a size
    measured already (`need` keeps what it measured: each measurement takes seconds)."""
    low, high = 0, len(sizes)  # sizes[:low] fit, sizes[high:] do not

    def probe(i: int) -> None:
        nonlocal low, high
        if need(sizes[i]) <= memory:
            low = max(low, i + 1)
        else:
            high = min(high, i)

    probe(len(sizes) - 1)
    if low < high and anchor != sizes[-1]:
        slope = (need(sizes[-1]) - need(anchor)) / (sizes[-1] - anchor)
        guess = max((i for i, s in enumerate(sizes) if need(anchor) + slope * (s - anchor) <= memory), default=0)
        for i in (guess, guess + 1):
            if low <= i < high:
                probe(i)
    while low < high:
        probe((low + high) // 2)
    return sizes[low - 1] if low else 0
