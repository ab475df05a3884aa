"""Measure, with torch's MemTracker, real training steps of each case in CASES_FILE (a JSON object: case name ->
the trainer's command-line arguments), on this process's Accelerator as the trainer makes it; rank 0 writes
{case: {"peak": bytes, "at_peak": {category: bytes}}} to OUT_FILE.

The step is the trainer's own (loop.train_step) over three optimizer steps, each of its micro-batches on random
tokens; the tracker is entered before `accelerator.prepare`, so DDP's buckets and FSDP2's shards are measured too.
All cases share one Accelerator: their dtype must agree.

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

cases, out_file = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
accelerator = None
results = {}
for name, argv in cases.items():
    cfg = load_config(argv)
    accelerator = accelerator or make_accelerator(cfg)
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
        for _ in range(3):
            train_step(prepared, Optimizers(prepared_optimizers), [], accelerator, micro_batches(), cfg.grad_clip,
                       skip_nonfinite=False)
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    results[name] = {"peak": peak["Total"], "at_peak": {getattr(k, "value", k): v for k, v in peak.items()}}
    accelerator.free_memory(prepared, *prepared_optimizers)
    del model, optimizers, prepared, prepared_optimizers, tracker
if accelerator.is_main_process:
    out_file.write_text(json.dumps(results))
