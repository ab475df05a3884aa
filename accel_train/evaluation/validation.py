"""Validation losses, averaged over every process of a distributed run and cut short by a stop signal; and the
seed's `estimate_loss`, for those who call it with the seed's arguments."""

from __future__ import annotations

from typing import Callable

import torch
from accelerate.utils import reduce

from accel_train.data.folder import DataFolder
from accel_train.data.tokens import IGNORE, named_folder, random_batch


@torch.no_grad()
def split_losses(model, folder: DataFolder, eval_iters: int, block_size: int, batch_size: int, device,
                 stop_requested: Callable[[], bool] | None = None) -> dict | None:
    """Mean loss over `eval_iters` random batches of each split of `folder`: {'train': float, 'val': float}.

    Every process evaluates its own batches and the means are averaged across processes, so
    all of them return the same numbers. For conversations (a split with a loss mask) a process's mean is over
    the trained targets of its batches (the assistant's), each counted once. The model goes back to train mode
    afterwards.
    `stop_requested()`, if given, is asked after every batch and must answer the same on every process
    (`preemption.any_process`): an evaluation can outlast a scheduler's grace period, so a True
    abandons it and returns None.
    """
    was_training = model.training
    model.eval()
    pin = torch.device(device).type == "cuda"
    try:
        out = {}
        for split in ("train", "val"):
            total, count = torch.zeros((), device=device), torch.zeros((), device=device)
            masked = folder.mask(split) is not None
            for _ in range(eval_iters):
                x, y = random_batch(folder, split, block_size, batch_size, device, pin=pin)
                _, loss = model(x, y)
                if masked:  # each batch weighs as many as the targets it trains on
                    trained = (y != IGNORE).sum()
                    total, count = total + loss.float() * trained, count + trained
                else:
                    total += loss.float()
                if stop_requested is not None and stop_requested():
                    return None
            mean = total / count.clamp(min=1) if masked else total / eval_iters
            out[split] = reduce(mean, reduction="mean").item()
        return out
    finally:
        model.train(was_training)


def estimate_loss(model, eval_iters, ctx, block_size, batch_size, device, device_type, data_dir="data/demo", *,
                  stop_requested: Callable[[], bool] | None = None) -> dict | None:
    """The seed's `estimate_loss`: split_losses of `data_dir` with the model run under `ctx` (its autocast);
    `device_type` is the seed's too, and says no more than `device` does."""
    with ctx:
        return split_losses(model, named_folder(str(data_dir)), eval_iters, block_size, batch_size, device,
                            stop_requested=stop_requested)
