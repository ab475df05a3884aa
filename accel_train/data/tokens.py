"""Batches of token windows: the seed's `get_batch`, and the loader the Accelerator prepares.

A training example is a window of `block_size + 1` tokens of a split (data/folder.py), which may span shards
(which windows, and in which order: stream.py); windows are gathered with one vectorized index instead of a
Python loop of slices.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from accel_train.data.folder import DataFolder, TokenFile

IGNORE = -100  # a target not trained on (its loss mask is 0): the index F.cross_entropy ignores


def mask_targets(y: torch.Tensor, mask: TokenFile | None, starts: np.ndarray, block_size: int) -> torch.Tensor:
    """The targets `y` of the windows at `starts` with IGNORE where `mask` says they are not trained on."""
    if mask is not None:
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(1, block_size + 1)
        y = y.masked_fill(torch.from_numpy(mask.gather(index) == 0), IGNORE)
    return y


def random_batch(folder: DataFolder, split: str, block_size: int, batch_size: int, device, pin: bool = False):
    """`batch_size` random windows of a split of `folder` (targets masked as its loss mask says), moved to
    `device` (through pinned memory with `pin`). Draws its positions from torch's global RNG, so
    `torch.manual_seed` makes it reproducible."""
    data = folder.split(split)
    starts = torch.randint(data.num_windows(block_size), (batch_size,)).numpy()
    x, y = data.windows(starts, block_size)
    y = mask_targets(y, folder.mask(split), starts, block_size)
    if pin:
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@lru_cache(maxsize=16)
def named_folder(data_dir: str) -> DataFolder:
    """The folder `data_dir`, opened once for the callers that name it at every batch (the seed's signatures:
    get_batch, estimate_loss); the trainer opens its own and passes that."""
    return DataFolder(data_dir)


def get_batch(split, block_size, batch_size, device, device_type, data_dir="data/demo"):
    """The seed's `get_batch`: `batch_size` random windows from a split of `data_dir`, moved to `device`."""
    return random_batch(named_folder(str(data_dir)), split, block_size, batch_size, device,
                        pin=device_type == "cuda")


class WindowDataset(torch.utils.data.Dataset):
    """Map-style view of the training sources whose items are (source index, window start) pairs; fetches whole
    batches, each source's windows in one vectorized read. A source with a loss mask (in `masks`) gives IGNORE
    as the target of each token not trained on."""

    def __init__(self, sources: list, block_size: int, masks: list | None = None):
        self.sources, self.block_size = sources, block_size
        self.masks = masks or [None] * len(sources)

    def __getitem__(self, item: tuple[int, int]):
        x, y = self.__getitems__([item])
        return x[0], y[0]

    def __getitems__(self, items: list[tuple[int, int]]):
        which, starts = np.array(items, dtype=np.int64).reshape(-1, 2).T
        x = torch.empty((len(items), self.block_size), dtype=torch.int64)
        y = torch.empty_like(x)
        for s in np.unique(which):
            taken = torch.from_numpy(which == s)
            x[taken], targets = self.sources[s].windows(starts[which == s], self.block_size)
            y[taken] = mask_targets(targets, self.masks[s], starts[which == s], self.block_size)
        return x, y


class StreamBatches(torch.utils.data.Sampler):
    """Global batches `first_batch` .. `num_batches` - 1 of a stream (accel_train.stream.WindowStream), served
    as batches of `micro_batch` windows.

    Batch `b` depends only on the run's settings and b, so the stream is the same whatever the number of
    processes (Accelerate deals batch b to process b % num_processes) and a resumed run starts at
    `first_batch` without drawing the ones before it. `micro_batch` regroups the same windows, in the same
    order: it must divide the windows of an optimizer step, which then sees the same data whatever
    micro-batch the GPU runs.
    """

    def __init__(self, stream, num_batches: int, first_batch: int = 0, micro_batch: int = 0):
        self.stream, self.num_batches, self.first_batch = stream, num_batches, first_batch
        self.micro_batch = micro_batch or stream.batch_size

    def __len__(self) -> int:
        return (self.num_batches - self.first_batch) * self.stream.batch_size // self.micro_batch

    def __iter__(self):
        pending = []
        for b in range(self.first_batch, self.num_batches):
            pending += self.stream.batch(b)
            while len(pending) >= self.micro_batch:
                yield pending[:self.micro_batch]
                del pending[:self.micro_batch]


def _batch_as_is(batch):
    return batch


def train_loader(stream, num_batches: int, first_batch: int = 0, pin_memory: bool = False,
                 micro_batch: int = 0) -> torch.utils.data.DataLoader:
    """The training DataLoader (for `accelerate.prepare`) over global batches first_batch .. num_batches - 1 of
    `stream`, served as batches of `micro_batch` (see StreamBatches)."""
    # Its own generator: starting an iterator draws a seed, which must not come from the global RNG
    # that evaluation uses, or a resumed run's evaluations would differ from an uninterrupted run's.
    return torch.utils.data.DataLoader(WindowDataset(stream.splits, stream.block_size, stream.masks),
                                       batch_sampler=StreamBatches(stream, num_batches, first_batch, micro_batch),
                                       collate_fn=_batch_as_is, pin_memory=pin_memory, generator=torch.Generator())
