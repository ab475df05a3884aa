"""The cost of one scoring of the shipped multiple-choice task against one optimizer step, on the demo config.

    python benchmarks/task_cost.py [--steps 10]      # run from the repository root: uses data/demo

Both are measured in CPU time in this one process, with the trainer's own `train_step` (the demo's two
micro-batches of 16 x 128 tokens, AdamW) and the scorer the loop runs, on the demo's model; the validation
(`eval_iters` batches per split) is measured alongside for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time

import torch
from accelerate import Accelerator

from accel_train.config import load_config
from accel_train.data.tokens import get_batch
from accel_train.data.demo_corpus import ensure_demo_data
from accel_train.evaluation.validation import estimate_loss
from accel_train.models.build import build_model
from accel_train.evaluation.multiple_choice import task_scorer
from accel_train.data.tokenizer import load_tokenizer
from accel_train.training.optim import OptimizerHyperparameters, build_optimizers
from accel_train.training.loop import train_step


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps timed (their mean is reported)")
    args = parser.parse_args()
    cfg = load_config(["--device", "cpu", "--tasks", "story_endings"])
    ensure_demo_data(cfg.data_dir)
    torch.manual_seed(cfg.seed)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    model = build_model(cfg.model)
    (optimizer,) = build_optimizers(model, OptimizerHyperparameters.of(cfg), fused=False, mixed_precision="no")
    model, optimizer = accelerator.prepare(model, optimizer)
    scorer = task_scorer(cfg.tasks, load_tokenizer(cfg.data_dir), cfg.block_size, cfg.batch_size)

    def batches():
        return (get_batch("train", cfg.block_size, cfg.batch_size, "cpu", "cpu", cfg.data_dir)
                for _ in itertools.count())

    def step():
        train_step(model, optimizer, [], accelerator, itertools.islice(batches(), cfg.gradient_accumulation_steps),
                   cfg.grad_clip, skip_nonfinite=False)

    step()  # warm-up
    step_s = cpu_seconds(lambda: [step() for _ in range(args.steps)]) / args.steps
    model.eval()
    score_s = cpu_seconds(lambda: scorer.score(lambda x: model(x)[0], "cpu"))
    val_s = cpu_seconds(lambda: estimate_loss(model, cfg.eval_iters, contextlib.nullcontext(), cfg.block_size,
                                              cfg.batch_size, "cpu", "cpu", cfg.data_dir))
    print(f"optimizer step: {step_s:.3f} CPU s; scoring {cfg.tasks}: {score_s:.3f} CPU s = {score_s / step_s:.1f} "
          f"steps; validation ({cfg.eval_iters} batches per split): {val_s:.3f} CPU s = {val_s / step_s:.1f} steps")


if __name__ == "__main__":
    main()
