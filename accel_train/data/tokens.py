"""Token data: memmapped `.bin` splits, the seed's `get_batch`, and the loader the Accelerator prepares.

A split is a flat array of token ids (`train.bin`, `val.bin` or the seed's `validation.bin`)
described by `meta.json`. A training example is a random window of `block_size + 1` tokens;
windows are gathered with one vectorized index instead of a Python loop of slices.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from accel_train.errors import UserError

SPLIT_FILES = {"train": ("train.bin",), "val": ("val.bin", "validation.bin")}
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
GPT2_VOCAB_SIZE = 50257
REMAP_EVERY = 1024  # reopen the memmap now and then so its touched pages leave the resident set


def read_meta(data_dir: Path) -> dict:
    """`meta.json` of a data folder, its fields checked before anything relies on them; a folder without one
    is taken as the seed's uint16 GPT-2 data."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        warnings.warn(f"{path} not found: assuming uint16 tokens of the GPT-2 vocabulary", stacklevel=2)
        return {"dtype": "uint16", "vocab_size": GPT2_VOCAB_SIZE, "tokenizer": "gpt2"}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: malformed JSON or not UTF-8
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a JSON object, not a {type(meta).__name__}")
    if not isinstance(meta.get("dtype"), str) or meta["dtype"] not in DTYPES:
        raise UserError(f"{path}: 'dtype' must be one of {', '.join(DTYPES)}, got {meta.get('dtype')!r:.60}")
    if not _is_count(meta.get("vocab_size")) or meta["vocab_size"] < 1:
        raise UserError(f"{path}: 'vocab_size' must be a positive integer, got {meta.get('vocab_size')!r:.60}")
    for key in ("tokens", "bytes"):  # bytes: UTF-8 bytes of text per split (data prepared before has none)
        counts = meta.get(key, {})
        if not isinstance(counts, dict) or not all(n is None or _is_count(n) for n in counts.values()):
            raise UserError(f"{path}: '{key}' must map each split to its count (or null), got {counts!r:.60}")
    return meta


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def split_path(data_dir: Path, split: str) -> Path:
    if split not in SPLIT_FILES:
        raise UserError(f"unknown split '{split}'; use 'train' or 'val'")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data folder {data_dir} does not exist; prepare data there or set --data_dir")
    for name in SPLIT_FILES[split]:
        path = data_dir / name
        if os.path.lexists(path):
            if not path.is_file():  # a folder, a link to nothing, a pipe: memmap would fail mid-run
                raise UserError(f"{path} is not a regular file; the {split} split must be a file of tokens")
            return path
    raise UserError(f"no {split} split in {data_dir}: expected {' or '.join(SPLIT_FILES[split])}")


class TokenFile:
    """One split's tokens as a memmap, with vectorized window gathering."""

    def __init__(self, path: Path, dtype: str):
        self.path, self.dtype = Path(path), DTYPES[dtype]
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
        except OSError as err:
            raise UserError(f"cannot read {self.path}: {err.strerror}") from None
        itemsize = np.dtype(self.dtype).itemsize
        if size == 0:
            raise UserError(f"{self.path} is empty")
        if size % itemsize:
            raise UserError(f"{self.path} has {size} bytes, not a whole number of {dtype} tokens; "
                            "the file is truncated or meta.json names the wrong dtype")
        self.num_tokens = size // itemsize
        self._memmap, self._reads = None, 0

    def tokens(self) -> np.memmap:
        if self._memmap is None or self._reads >= REMAP_EVERY:
            self._memmap, self._reads = np.memmap(self.path, dtype=self.dtype, mode="r"), 0
        self._reads += 1
        return self._memmap

    def num_windows(self, block_size: int) -> int:
        """How many distinct start positions a window of block_size + 1 tokens has."""
        n = self.num_tokens - block_size
        if n < 1:
            raise UserError(f"{self.path} holds {self.num_tokens} tokens, fewer than one block of "
                            f"{block_size + 1}; use more data or a smaller block_size")
        return n

    def windows(self, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets (int64, shape len(starts) x block_size)."""
        index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(block_size + 1)
        buf = torch.from_numpy(self.tokens()[index].astype(np.int64))
        return buf[:, :-1], buf[:, 1:]


@lru_cache(maxsize=16)
def open_split(data_dir: str, split: str) -> TokenFile:
    data_dir = Path(data_dir)
    return TokenFile(split_path(data_dir, split), read_meta(data_dir)["dtype"])


def get_batch(split, block_size, batch_size, device, device_type, data_dir="data/demo"):
    """The seed's `get_batch`: `batch_size` random windows from a split, moved to `device`.

    Draws its positions from torch's global RNG, so `torch.manual_seed` makes it reproducible.
    """
    data = open_split(str(data_dir), split)
    starts = torch.randint(data.num_windows(block_size), (batch_size,)).numpy()
    x, y = data.windows(starts, block_size)
    if device_type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


class WindowDataset(torch.utils.data.Dataset):
    """Map-style view of a split whose items are window start positions; fetches whole batches."""

    def __init__(self, data: TokenFile, block_size: int):
        self.data, self.block_size = data, block_size

    def __len__(self) -> int:
        return self.data.num_windows(self.block_size)

    def __getitem__(self, start: int):
        x, y = self.data.windows(np.array([start]), self.block_size)
        return x[0], y[0]

    def __getitems__(self, starts: list[int]):
        return self.data.windows(np.array(starts), self.block_size)


class RandomWindowBatches(torch.utils.data.Sampler):
    """An endless-looking but finite stream of batches of random window starts.

    Batch `b` depends only on `(seed, b)`, so the stream is the same whatever the number of
    processes (Accelerate deals batch b to process b % num_processes) and a resumed run
    starts at `first_batch` without replaying the ones before it. `micro_batch` regroups the same
    windows, in the same order, into batches of that size: it must divide the windows of an
    optimizer step, which then sees the same data whatever micro-batch the GPU runs.
    """

    def __init__(self, num_windows: int, batch_size: int, seed: int, num_batches: int, first_batch: int = 0,
                 micro_batch: int = 0):
        self.num_windows, self.batch_size, self.seed = num_windows, batch_size, seed
        self.num_batches, self.first_batch = num_batches, first_batch
        self.micro_batch = micro_batch or batch_size

    def __len__(self) -> int:
        return (self.num_batches - self.first_batch) * self.batch_size // self.micro_batch

    def __iter__(self):
        pending = []
        for b in range(self.first_batch, self.num_batches):
            rng = np.random.default_rng((self.seed, b))
            pending += rng.integers(0, self.num_windows, self.batch_size).tolist()
            while len(pending) >= self.micro_batch:
                yield pending[:self.micro_batch]
                del pending[:self.micro_batch]


def _batch_as_is(batch):
    return batch


def train_loader(data_dir, block_size: int, batch_size: int, seed: int, num_batches: int,
                 first_batch: int = 0, pin_memory: bool = False, micro_batch: int = 0) -> torch.utils.data.DataLoader:
    """The training DataLoader (for `accelerator.prepare`) over `num_batches` global batches of
    `batch_size`, served as batches of `micro_batch` (see RandomWindowBatches)."""
    data = open_split(str(data_dir), "train")
    sampler = RandomWindowBatches(data.num_windows(block_size), batch_size, seed, num_batches, first_batch,
                                  micro_batch)
    # Its own generator: starting an iterator draws a seed, which must not come from the global RNG
    # that evaluation uses, or a resumed run's evaluations would differ from an uninterrupted run's.
    return torch.utils.data.DataLoader(WindowDataset(data, block_size), batch_sampler=sampler,
                                       collate_fn=_batch_as_is, pin_memory=pin_memory, generator=torch.Generator())
