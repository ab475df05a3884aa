"""Token data: memmapped `.bin` splits, the seed's `get_batch`, and the loader the Accelerator prepares.

A split is a flat array of token ids described by `meta.json` (see meta.py): the concatenation of the
shard files meta.json lists, or, in data made before shards, one file (`train.bin`, `val.bin` or the
seed's `validation.bin`). A training example is a window of `block_size + 1` tokens, which may span shards
(which windows, and in which order: stream.py); windows are gathered with one vectorized index instead of a
Python loop of slices.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from accel_train.errors import UserError
from accel_train.data.meta import SPLITS, listed_masks, listed_shards, read_meta

SPLIT_FILES = {"train": ("train.bin",), "val": ("val.bin", "validation.bin")}  # data without a shard list
IGNORE = -100  # a target not trained on (its loss mask is 0): the index F.cross_entropy ignores
REMAP_EVERY = 1024  # reopen the memmaps now and then so their touched pages leave the resident set


def split_path(data_dir: Path, split: str) -> Path:
    """The one file of a split in data made before shards."""
    if split not in SPLIT_FILES:
        raise UserError(f"unknown split '{split}'; use 'train' or 'val'")
    data_dir = data_folder(data_dir)
    for name in SPLIT_FILES[split]:
        path = data_dir / name
        if os.path.lexists(path):
            return _regular_file(path, split)
    raise UserError(f"no {split} split in {data_dir}: expected {' or '.join(SPLIT_FILES[split])}")


def data_folder(data_dir) -> Path:
    """data_dir, once sure it is a folder: a missing one is named as such, before meta.json is looked for."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist; prepare data there or set --data_dir")
    return data_dir


def _regular_file(path: Path, split: str) -> Path:
    if not path.is_file():  # a folder, a link to nothing, a pipe: memmap would fail mid-run
        raise UserError(f"{path} is not a regular file; the {split} split must be a file of tokens")
    return path


def split_shards(data_dir, split: str, meta: dict) -> list[tuple[Path, int | None]]:
    """(path, token count meta.json lists or None) of each file of `split`, in order; `meta` is the folder's."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; use 'train' or 'val'")
    data_dir = data_folder(data_dir)
    listed = listed_shards(meta, split)
    if listed is None:
        return [(split_path(data_dir, split), None)]
    for name, _ in listed:
        if not os.path.lexists(data_dir / name):
            raise UserError(f"{data_dir}/meta.json lists the {split} shard {name}, which is missing; "
                            "prepare the data again or restore the file")
    return [(_regular_file(data_dir / name, split), tokens) for name, tokens in listed]


def _file_tokens(path: Path, dtype: str, expected: int | None) -> int:
    """How many `dtype` tokens the file holds, checked against the count meta.json lists."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    itemsize = np.dtype(dtype).itemsize
    if size == 0:
        raise UserError(f"{path} is empty")
    if size % itemsize:
        raise UserError(f"{path} has {size} bytes, not a whole number of {dtype} tokens; "
                        "the file is truncated or meta.json names the wrong dtype")
    if expected is not None and size // itemsize != expected:
        raise UserError(f"{path} holds {size // itemsize:,} {dtype} tokens but meta.json lists {expected:,}: "
                        "the file is truncated or meta.json describes other data")
    return size // itemsize


class TokenFile:
    """One split's tokens, read as the concatenation of its shard files, with vectorized window gathering.

    `paths` are the shard files in order and `offsets` where each starts in the split (its last entry is
    `num_tokens`): a position is found in its shard with np.searchsorted, so a window may span shards
    exactly as if they were one file.
    """

    def __init__(self, shards: list[tuple[Path, int | None]], dtype: str):
        self.paths, self.dtype = [Path(path) for path, _ in shards], np.dtype(dtype)
        counts = [_file_tokens(path, dtype, expected) for path, expected in shards]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.num_tokens = int(self.offsets[-1])
        self._memmaps, self._reads = None, 0

    def _shards(self) -> list[np.memmap]:
        if self._memmaps is None or self._reads >= REMAP_EVERY:
            self._memmaps, self._reads = [np.memmap(p, dtype=self.dtype, mode="r") for p in self.paths], 0
        self._reads += 1
        return self._memmaps

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at `positions` (int64 positions in the split, any shape), as int64."""
        positions = np.asarray(positions, dtype=np.int64)
        memmaps = self._shards()
        if len(memmaps) == 1:
            return memmaps[0][positions].astype(np.int64)
        shard = np.searchsorted(self.offsets, positions, side="right") - 1
        out = np.empty(positions.shape, dtype=np.int64)
        for s in np.unique(shard):
            where = shard == s
            out[where] = memmaps[s][positions[where] - self.offsets[s]]
        return out

    def tokens(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens `start` to `stop` of the split (a copy, in the file's dtype), for reading documents."""
        stop = self.num_tokens if stop is None else min(stop, self.num_tokens)
        start = min(max(start, 0), stop)
        first, last = np.searchsorted(self.offsets, [start, stop], side="right") - 1
        memmaps = self._shards()
        parts = [memmaps[s][max(start - self.offsets[s], 0):stop - self.offsets[s]]
                 for s in range(first, min(last + 1, len(memmaps)))]
        return np.concatenate([np.zeros(0, self.dtype), *parts])

    def num_windows(self, block_size: int) -> int:
        """How many distinct start positions a window of block_size + 1 tokens has."""
        n = self.num_tokens - block_size
        if n < 1:
            where = self.paths[0] if len(self.paths) == 1 else f"the {len(self.paths)} shards of {self.paths[0].parent}"
            raise UserError(f"{where} holds {self.num_tokens} tokens, fewer than one block of "
                            f"{block_size + 1}; use more data or a smaller block_size")
        return n

    def windows(self, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets (int64, shape len(starts) x block_size)."""
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(block_size + 1)
        buf = torch.from_numpy(self.gather(index))
        return buf[:, :-1], buf[:, 1:]


@lru_cache(maxsize=16)
def open_split(data_dir: str, split: str) -> TokenFile:
    """The split `split` ("train" or "val") of the data folder `data_dir`, every shard checked against meta.json."""
    data_folder(data_dir)  # a missing folder is named as such, before meta.json is looked for
    meta = read_meta(data_dir)
    return TokenFile(split_shards(data_dir, split, meta), meta.dtype)


@lru_cache(maxsize=16)
def open_mask(data_dir: str, split: str) -> TokenFile | None:
    """The loss mask of a split of conversations (one uint8 per token, read like its tokens), or None for a folder
    without one: every token is trained on."""
    listed = listed_masks(read_meta(data_dir), split)
    if listed is None:
        return None
    for name, _ in listed:
        if not os.path.lexists(Path(data_dir) / name):
            raise UserError(f"{data_dir}/meta.json lists the {split} loss mask {name}, which is missing; "
                            "prepare the data again or restore the file")
    return TokenFile([(_regular_file(Path(data_dir) / name, split), tokens) for name, tokens in listed], "uint8")


def mask_targets(y: torch.Tensor, mask: TokenFile | None, starts: np.ndarray, block_size: int) -> torch.Tensor:
    """The targets `y` of the windows at `starts` with IGNORE where `mask` says they are not trained on."""
    if mask is not None:
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(1, block_size + 1)
        y = y.masked_fill(torch.from_numpy(mask.gather(index) == 0), IGNORE)
    return y


def get_batch(split, block_size, batch_size, device, device_type, data_dir="data/demo"):
    """The seed's `get_batch`: `batch_size` random windows from a split, moved to `device`.

    Draws its positions from torch's global RNG, so `torch.manual_seed` makes it reproducible.
    """
    data = open_split(str(data_dir), split)
    starts = torch.randint(data.num_windows(block_size), (batch_size,)).numpy()
    x, y = data.windows(starts, block_size)
    y = mask_targets(y, open_mask(str(data_dir), split), starts, block_size)
    if device_type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


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
