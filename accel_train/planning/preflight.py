"""The trainer's plan of itself, before its model exists: this run on this machine (its GPU's memory, or the CPU's
available memory shared by the processes here), refused in one line when it cannot fit; else the micro-batch the
GPU search starts from.

Under DDP (or one process) the main process plans and the others receive what it found; under FSDP every process
plans its rank of a fake subgroup. The planning modules are imported only where a plan is made: torch's MemTracker
brings in torch.distributed.tensor and inductor, a second and more of start-up that the other processes skip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from accelerate.utils import DynamoBackend

from accel_train.config import TrainConfig
from accel_train.distributed.collective import on_every_process, on_main_process
from accel_train.errors import UserError
from accel_train.models.flops import peak_tflops
from accel_train.planning.machines import GIB, Machine
from accel_train.training.hardware import switch_on


@dataclass(frozen=True)
class PlannedMemory:
    """What a run keeps of its plan, the same on every process: the need measured at each micro-batch tried, the
    largest that fits, and the device's memory."""
    needs: dict[int, int]
    micro_batch: int  # the one planned at
    largest_micro_batch: int
    device: str
    memory: int

    def start_line(self, micro_batch: int) -> str:
        """The plan in one line: the peak a process needs at the micro-batch the run uses, and the memory there is."""
        micro_batch = micro_batch if micro_batch in self.needs else self.micro_batch
        return (f"plan: {self.needs[micro_batch] / GIB:.2f} GiB per process at micro-batch {micro_batch}, of "
                f"{self.memory / GIB:.1f} GiB ({self.device})")


def this_machine(cfg: TrainConfig, device: torch.device) -> Machine:
    if device.type != "cuda":
        return Machine.this_cpu(cfg.peak_tflops, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return Machine(torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory, True,
                   peak_tflops(device, cfg.peak_tflops))


def plan_this_run(cfg: TrainConfig, accelerator, new_model) -> PlannedMemory:
    """The plan of this run at its micro-batch; on a GPU with micro_batch 0, at batch_size with the largest that fits
    sought. Refused, on every process, where nothing fits."""
    plan_here = lambda: checked_plan(cfg, accelerator, new_model)  # noqa: E731
    fsdp = accelerator.distributed_type == "FSDP"
    return on_every_process(accelerator, plan_here) if fsdp else on_main_process(accelerator, plan_here)


def checked_plan(cfg: TrainConfig, accelerator, new_model) -> PlannedMemory:
    from accel_train.planning.memory_plan import RunLayout, plan_memory

    cuda = accelerator.device.type == "cuda"
    machine = this_machine(cfg, accelerator.device)
    layout = RunLayout(accelerator.num_processes, "fsdp" if accelerator.distributed_type == "FSDP" else "ddp",
                       accelerator.mixed_precision, switch_on(cfg.fused_adamw, cuda),
                       accelerator.state.dynamo_plugin.backend != DynamoBackend.NO)
    search = cuda and not cfg.micro_batch
    plan = plan_memory(cfg, machine, layout, new_model, cfg.micro_batch or cfg.batch_size, search=search)
    if not plan.largest_micro_batch or not (plan.fits or search):
        raise UserError(refusal(cfg, plan))
    return PlannedMemory(plan.needs, plan.micro_batch, plan.largest_micro_batch, machine.name, machine.memory)


def refusal(cfg: TrainConfig, plan) -> str:
    """Why the run cannot fit, in one line: the plan's need, the memory there is, and what would make it fit."""
    where = (f"the {plan.machine.memory / GIB:.1f} GiB of this {plan.machine.name}" if plan.machine.gpu
             else f"the {plan.machine.memory / GIB:.1f} GiB this machine has available per process")
    if plan.largest_micro_batch:
        return (f"this run needs {plan.need / GIB:.1f} GiB per process at micro-batch {plan.micro_batch}, more than "
                f"{where}; --micro_batch {plan.largest_micro_batch} fits (python -m accel_train.plan shows the plan)")
    fixes = [*([] if cfg.checkpoint_layers else ["--checkpoint_layers true"]),
             "FSDP over more processes (configs/accelerate/fsdp.yaml)", "a shorter --block_size", "a smaller model"]
    return (f"this run needs {plan.needs[1] / GIB:,.1f} GiB per process even at micro-batch 1, more than {where}; "
            f"to fit, try {', '.join(fixes)} (python -m accel_train.plan shows the plan)")
