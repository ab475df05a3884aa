"""Will a config fit, with what micro-batch, and how long will it take? Planned without allocating anything.

    python -m accel_train.plan --config configs/gemma3_270m.json --gpu h100 [--num_processes 8 --sharding fsdp]
        [--memory_gib G] [--mfu 0.4] [--json] [--key value ...]

Each process's memory is measured by torch's MemTracker over training steps of the config's model and optimizers
on fake tensors (planning/), as the run on that machine computes them (bf16 autocast and fused AdamW on a GPU);
several processes are rank 0 of a fake process group, FSDP2 wrapped by Accelerate's own wrap. The terms a CPU cannot
see are added with the sizes assumed (planning/machines.py).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

from accel_train.config import TrainConfig, read_command_line
from accel_train.declarations import declare
from accel_train.errors import UserError, run_cli
from accel_train.planning.machines import GIB, Machine
from accel_train.planning.memory_plan import SHARDINGS, MemoryPlan, RunLayout, plan_memory
from accel_train.planning.step_memory import ORDER
from accel_train.planning.throughput import TimePlan

PART_NAMES = {"parameters": "parameters", "gradients": "gradients", "optimizer": "optimizer state",
              "activations": "activations", "temporary": "temporary buffers"}


@dataclass
class PlanOptions:
    """The plan's own keys, declared as the config's are: parsed, checked and listed by the same code."""
    num_processes: int = declare(1, "processes the run is launched with, one per GPU", low=1)
    sharding: str = declare("ddp", "how several processes hold the model: ddp, a whole copy each; fsdp, FSDP2 "
                                   "shards of parameters, gradients and optimizer state", SHARDINGS)
    gpu: str = declare("", "each process's GPU by name (h100, h200, a100, ...: models/flops.py's PEAK_TFLOPS); "
                           "empty: this machine's CPU")
    memory_gib: float = declare(0.0, "memory of each process's device in GiB, instead of the GPU's; with no --gpu, "
                                     "a GPU of that size", low=0)
    mfu: float = declare(0.4, "the model FLOPs utilization at which the time to max_iters is stated", above=0, high=1)
    json: bool = declare(False, "print one JSON object instead of the table (bare --json: true)")


def planned_model(cfg: TrainConfig):
    """The run's model, built when called: document masks and a loss mask as its data decides where the data folder
    is there; without it, document_mask on is assumed to find a separator (its id does not change the memory)."""
    from accel_train.data.documents import masking_separator
    from accel_train.models.build import training_model
    from accel_train.training.start import has_loss_mask

    try:
        mixture = cfg.mixture()
        separator, masked = masking_separator(cfg.document_mask, mixture.first.folder), has_loss_mask(mixture)
    except UserError:
        separator, masked = (0 if cfg.document_mask == "on" else None), False
    return lambda: training_model(cfg, separator, masked_loss=masked)


def plan_command(cfg: TrainConfig, options: PlanOptions) -> tuple[MemoryPlan, TimePlan]:
    machine = Machine.named(options.gpu, options.memory_gib, cfg.peak_tflops)
    layout = RunLayout.of(cfg, machine, options.num_processes, options.sharding)
    memory = plan_memory(cfg, machine, layout, planned_model(cfg), cfg.micro_batch or cfg.batch_size)
    return memory, TimePlan.of(cfg, options.num_processes, machine.peak_tflops, options.mfu)


def as_json(cfg: TrainConfig, memory: MemoryPlan, time: TimePlan) -> dict:
    step = memory.memory
    return {**{f"{part}_bytes": step.held[part] for part in ORDER}, "peak_bytes": step.peak,
            "at_peak_bytes": step.at_peak, "assumed_bytes": dict(memory.extra), "need_bytes": memory.need,
            "memory_bytes": memory.machine.memory, "fits": memory.fits, "micro_batch": memory.micro_batch,
            "largest_micro_batch": memory.largest_micro_batch, "device": memory.machine.name,
            "layout": asdict(memory.layout), **asdict(time), "max_iters": cfg.max_iters,
            "tokens_per_step": cfg.tokens_per_step * memory.layout.processes}


WIDTH = 42  # the table's first column


def gib(size: int) -> str:
    return f"{size / GIB:8.2f} GiB"


def duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def describe(cfg: TrainConfig, memory: MemoryPlan, time: TimePlan) -> list[str]:
    layout, machine, step = memory.layout, memory.machine, memory.memory
    precision = {"no": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[layout.mixed_precision]
    switches = [precision, f"{cfg.optimizer}{' (fused)' if layout.fused_adamw else ''}",
                "compiled" if layout.compiled else "not compiled", "fused loss" if cfg.fused_loss else "plain loss",
                *(["layer checkpointing"] if cfg.checkpoint_layers else [])]
    sharding = layout.sharding.upper() if layout.processes > 1 else "one process"
    fit = "fits" if memory.fits else "does NOT fit"
    lines = [f"plan: {layout.processes} x {machine.name} ({machine.memory / GIB:.1f} GiB each), {sharding}; "
             f"{', '.join(switches)}",
             "  measured by MemTracker over a training step on fake CPU tensors in the run's dtypes (fp32 weights, "
             "gradients and optimizer state" + (", bf16/fp16 compute" if layout.mixed_precision != "no" else "") + ")",
             f"per process at micro-batch {memory.micro_batch} ({cfg.sequences_per_step // memory.micro_batch} "
             "micro-batches per optimizer step):",
             f"  {'':<{WIDTH}}{'held at most':>12}    {'at the peak':>12}"]
    for part in ORDER:
        lines.append(f"  {PART_NAMES[part]:<{WIDTH}}{gib(step.held[part])}    {gib(step.at_peak[part])}")
    lines.append(f"  {'peak of the step (MemTracker)':<{WIDTH}}{'':>12}    {gib(step.peak)}")
    for name, size in memory.extra:
        lines.append(f"  {'+ ' + name + ' (assumed)':<{WIDTH}}{'':>12}    {gib(size)}")
    lines.append(f"  {'needs':<{WIDTH}}{'':>12}    {gib(memory.need)} of {machine.memory / GIB:.1f} GiB: {fit}")
    largest = memory.largest_micro_batch
    lines.append(f"largest micro-batch that fits: {largest}" if largest else
                 "largest micro-batch that fits: none, not even 1 (see docs/speed.md, Will it fit?)")
    lines.append(f"FLOPs: {time.flops_per_token / 1e9:.3f} GFLOP per token, {time.flops_per_step / 1e12:,.1f} TFLOP "
                 f"per optimizer step ({cfg.tokens_per_step * layout.processes:,} tokens)")
    if time.tokens_per_s:
        lines.append(f"at {100 * time.mfu:.0f}% MFU of {machine.peak_tflops:g} TFLOP/s per GPU: "
                     f"{time.tokens_per_s:,.0f} tokens/s, {cfg.max_iters:,} steps (max_iters) in "
                     f"{duration(time.seconds)}")
    else:
        lines.append("time: no peak known for this device; give --gpu or --peak_tflops")
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--json" in argv:  # a bare --json, as a flag (nothing or another option after it)
        at = argv.index("--json")
        if at + 1 == len(argv) or argv[at + 1].startswith("--"):
            argv.insert(at + 1, "true")
    command = read_command_line(argv, PlanOptions, "python -m accel_train.plan", __doc__)
    cfg, options = command.config, command.options
    memory, time = plan_command(cfg, options)
    print(json.dumps(as_json(cfg, memory, time)) if options.json else "\n".join(describe(cfg, memory, time)))


if __name__ == "__main__":
    run_cli(main)
