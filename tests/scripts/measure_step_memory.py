"""Measure, with torch's MemTracker, real training steps of each case in CASES_FILE (a JSON object: case name ->
the trainer's command-line arguments), on this process's Accelerator as the trainer makes it; rank 0 writes
{case: {"peak": bytes, "at_peak": {category: bytes}}} to OUT_FILE.

The step is the trainer's own (loop.train_step), two optimizer steps (the second with the optimizer state the first
made), each of its micro-batches on random tokens; the tracker is entered before `accelerator.prepare`, so DDP's
buckets and FSDP2's shards are measured too. All cases share one Accelerator: their dtype must agree.

    [accelerate launch ...] measure_step_memory.py CASES_FILE OUT_FILE
"""

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch.distributed._tools.mem_tracker import MemTracker

from accel_train.config import load_config
from accel_train.models.build import training_model
from accel_train.training.loop import train_step
from accel_train.training.optim import OptimizerHyperparameters, Optimizers, build_optimizers
from accel_train.training.start import make_accelerator


def measure(cfg, accelerator) -> dict:
    """MemTracker's peak (and its parts) over the trainer's steps of `cfg`, from before `accelerator.prepare`."""
    set_seed(0)
    model = training_model(cfg, 0 if cfg.document_mask == "on" else None)
    optimizers = build_optimizers(model, OptimizerHyperparameters.of(cfg), mixed_precision=accelerator.mixed_precision)
    micro_batch = cfg.micro_batch or cfg.batch_size
    micro_steps = cfg.sequences_per_step // micro_batch
    accelerator.gradient_accumulation_steps = micro_steps
    tracker = MemTracker()
    tracker.track_external(model, *optimizers)

    def micro_batches():
        for _ in range(micro_steps):
            tracker.reset_mod_stats()  # MemTracker follows one forward pass of the model at a time
            x = torch.randint(cfg.model.vocab_size, (micro_batch, cfg.block_size))
            yield x, x

    with tracker:
        prepared, *prepared_optimizers = accelerator.prepare(model, *optimizers)
        for _ in range(2):
            train_step(prepared, Optimizers(prepared_optimizers), [], accelerator, micro_batches(), cfg.grad_clip,
                       skip_nonfinite=False)
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    accelerator.free_memory(prepared, *prepared_optimizers)
    return {"peak": peak["Total"], "at_peak": {getattr(k, "value", k): v for k, v in peak.items()}}


cases, out_file = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
configs = {name: load_config(argv) for name, argv in cases.items()}
accelerator = make_accelerator(next(iter(configs.values())))
results = {name: measure(cfg, accelerator) for name, cfg in configs.items()}
if accelerator.is_main_process:
    out_file.write_text(json.dumps(results))
