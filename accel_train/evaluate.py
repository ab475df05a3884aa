"""The seed's `estimate_loss`, averaged over every process of a distributed run."""

from __future__ import annotations

import torch
from accelerate.utils import reduce

from accel_train.data import get_batch


@torch.no_grad()
def estimate_loss(model, eval_iters, ctx, block_size, batch_size, device, device_type, data_dir="data/demo"):
    """Mean loss over `eval_iters` random batches of each split: {'train': float, 'val': float}.

    Every process evaluates its own batches and the means are averaged across processes, so
    all of them return the same numbers. The model goes back to train mode afterwards.
    """
    was_training = model.training
    model.eval()
    out = {}
    for split in ("train", "val"):
        total = torch.zeros((), device=device)
        for _ in range(eval_iters):
            x, y = get_batch(split, block_size, batch_size, device, device_type, data_dir=data_dir)
            with ctx:
                _, loss = model(x, y)
            total += loss.float()
        out[split] = reduce(total / eval_iters, reduction="mean").item()
    model.train(was_training)
    return out
