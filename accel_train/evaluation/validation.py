"""The seed's `estimate_loss`, averaged over every process of a distributed run, and cut short by a stop signal."""

from __future__ import annotations

from typing import Callable

import torch
from accelerate.utils import reduce

from accel_train.data.tokens import get_batch


@torch.no_grad()
def estimate_loss(model, eval_iters, ctx, block_size, batch_size, device, device_type, data_dir="data/demo", *,
                  stop_requested: Callable[[], bool] | None = None) -> dict | None:
    """Mean loss over `eval_iters` random batches of each split: {'train': float, 'val': float}.

    Every process evaluates its own batches and the means are averaged across processes, so
    all of them return the same numbers. The model goes back to train mode afterwards.
    `stop_requested()`, if given, is asked after every batch and must answer the same on every process
    (`preemption.any_process`): an evaluation can outlast a scheduler's grace period, so a True
    abandons it and returns None.
    """
    was_training = model.training
    model.eval()
    try:
        out = {}
        for split in ("train", "val"):
            total = torch.zeros((), device=device)
            for _ in range(eval_iters):
                x, y = get_batch(split, block_size, batch_size, device, device_type, data_dir=data_dir)
                with ctx:
                    _, loss = model(x, y)
                total += loss.float()
                if stop_requested is not None and stop_requested():
                    return None
            out[split] = reduce(total / eval_iters, reduction="mean").item()
        return out
    finally:
        model.train(was_training)
