"""Train with the given arguments, then save this process's final weights, every validation loss
(`split_losses`) result it saw and the rates of every optimizer step it took to out_dir/process_<rank>.pt, so that a
test can compare the processes of one run.

`split_losses` is wrapped only to record what the real function returns, and the rates are read by a
step pre-hook as the optimizer is about to use them; training is untouched.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's accel_train, not an installed one

import torch
from accelerate import PartialState

import accel_train.evaluation.in_training as evaluation
import accel_train.training.loop as trainer
from accel_train.config import load_config
from run_steps import before_each_run_step

evaluations = []
rates = []  # for each optimizer step on this process: the optimizer's class and the rate of each of its groups
real_split_losses = evaluation.split_losses


def recording_split_losses(*args, **kwargs):
    evaluations.append(real_split_losses(*args, **kwargs))
    return evaluations[-1]


def record_rates(optimizer):
    rates.append((type(optimizer).__name__, [group["lr"] for group in optimizer.param_groups]))


evaluation.split_losses = recording_split_losses
before_each_run_step(record_rates)
cfg = load_config(sys.argv[1:])
_, model = trainer.train(cfg)
torch.save({"weights": model.state_dict(), "evaluations": evaluations, "rates": rates},
           Path(cfg.out_dir) / f"process_{PartialState().process_index}.pt")
