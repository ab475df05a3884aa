"""The trainer's plan of itself, before its model exists: this run on this machine (its GPU's memory, or the CPU's
available memory shared by the processes here), refused in one line when it cannot fit; else the micro-batch the
GPU search starts from."""

from __future__ import annotations

import os

import torch
from accelerate.utils import DynamoBackend

from accel_train.config import TrainConfig
from accel_train.errors import UserError
from accel_train.models.flops import peak_tflops
from accel_train.planning.machines import GIB, Machine
from accel_train.planning.memory_plan import MemoryPlan, RunLayout, plan_memory
from accel_train.training.hardware import switch_on


def this_machine(cfg: TrainConfig, device: torch.device) -> Machine:
    if device.type != "cuda":
        return Machine.this_cpu(cfg.peak_tflops, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return Machine(torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory, True,
                   peak_tflops(device, cfg.peak_tflops))


def plan_this_run(cfg: TrainConfig, accelerator, new_model) -> MemoryPlan:
    """The plan of this run (every process makes it: under FSDP they share a fake group), at its micro-batch; on a
    GPU with micro_batch 0, at batch_size with the largest that fits sought. Refused where nothing fits."""
    cuda = accelerator.device.type == "cuda"
    machine = this_machine(cfg, accelerator.device)
    layout = RunLayout(accelerator.num_processes, "fsdp" if accelerator.distributed_type == "FSDP" else "ddp",
                       accelerator.mixed_precision, switch_on(cfg.fused_adamw, cuda),
                       accelerator.state.dynamo_plugin.backend != DynamoBackend.NO)
    search = cuda and not cfg.micro_batch
    plan = plan_memory(cfg, machine, layout, new_model, cfg.micro_batch or cfg.batch_size, search=search)
    if not plan.largest_micro_batch or not (plan.fits or search):
        raise UserError(refusal(cfg, plan))
    return plan


def refusal(cfg: TrainConfig, plan: MemoryPlan) -> str:
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
