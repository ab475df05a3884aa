"""Train with the given arguments, then save this process's final weights and every `estimate_loss`
result it saw to out_dir/process_<rank>.pt, so that a test can compare the processes of one run.

`estimate_loss` is wrapped only to record what the real function returns; training is untouched.
"""

import sys
from pathlib import Path

import torch
from accelerate import PartialState

import accel_train.train as trainer
from accel_train.config import load_config

evaluations = []
real_estimate_loss = trainer.estimate_loss


def recording_estimate_loss(*args, **kwargs):
    evaluations.append(real_estimate_loss(*args, **kwargs))
    return evaluations[-1]


trainer.estimate_loss = recording_estimate_loss
cfg = load_config(sys.argv[1:])
_, model = trainer.train(cfg)
torch.save({"weights": model.state_dict(), "evaluations": evaluations},
           Path(cfg.out_dir) / f"process_{PartialState().process_index}.pt")
