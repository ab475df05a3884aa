"""Train with the given arguments and save the gradients of every optimizer step this process took (as the
optimizer is about to apply them, after clipping) to out_dir/gradients_<rank>.pt, so that a test can compare
the gradients of differently launched runs. Training is untouched: a step pre-hook only reads them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's accel_train, not an installed one

import torch
from accelerate import PartialState

import accel_train.training.loop as trainer
from accel_train.config import load_config
from run_steps import before_each_run_step

steps = []


def record_gradients(optimizer):
    steps.append([p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]])


before_each_run_step(record_gradients)
cfg = load_config(sys.argv[1:])
trainer.train(cfg)
torch.save(steps, Path(cfg.out_dir) / f"gradients_{PartialState().process_index}.pt")
