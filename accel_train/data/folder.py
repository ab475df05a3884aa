"""A prepared data folder, opened once: its meta.json (read and checked once), its splits and loss masks.

A split is a flat array of token ids described by `meta.json` (see meta.py): the concatenation of the
shard files meta.json lists, or, in data made before shards, one file (`train.bin`, `val.bin` or the
seed's `validation.bin`). A run opens each of its folders once (`DataFolder`) and hands that object to
everything that reads the data, so training, evaluation and the resume check share one set of memmaps and
one reading of meta.json; nothing is cached behind their backs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from accel_train.data.documents import document_boundary
from accel_train.data.meta import META_FILE, SPLITS, DataMeta, listed_masks, listed_shards, read_meta
from accel_train.data.windows import window_set
from accel_train.errors import UserError

SPLIT_FILES = {"train": ("train.bin",), "val": ("val.bin", "validation.bin")}  # data without a shard list
REMAP_EVERY = 1024  # reopen the memmaps now and then so their touched pages leave the resident set
SAMPLED_CHUNKS = 16  # chunks of each split hashed for its identity, spread evenly from its first byte to its last
CHUNK_BYTES = 4096


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


class DataFolder:
    """A prepared data folder (see the module's docstring): `meta` is its checked meta.json; `split` and `mask`
    open a split's tokens and loss mask on first use and keep them for every later reader."""

    def __init__(self, path):
        self.path = data_folder(path)  # a missing folder is named as such, before meta.json is looked for
        self.meta: DataMeta = read_meta(self.path)
        meta_file = self.path / META_FILE
        self.meta_mtime_ns = meta_file.stat().st_mtime_ns if meta_file.exists() else None  # keys derived caches
        self._splits: dict[str, TokenFile] = {}
        self._masks: dict[str, TokenFile | None] = {}

    def __repr__(self) -> str:
        return f"DataFolder({str(self.path)!r})"

    def split(self, split: str) -> TokenFile:
        """The split `split` ("train" or "val"), every shard checked against meta.json."""
        if split not in self._splits:
            self._splits[split] = TokenFile(split_shards(self.path, split, self.meta), self.meta.dtype)
        return self._splits[split]

    def mask(self, split: str) -> TokenFile | None:
        """The loss mask of a split of conversations (one uint8 per token, read like its tokens), or None for a
        folder without one: every token is trained on."""
        if split not in self._masks:
            self._masks[split] = self._open_mask(split)
        return self._masks[split]

    def _open_mask(self, split: str) -> TokenFile | None:
        listed = listed_masks(self.meta, split)
        if listed is None:
            return None
        for name, _ in listed:
            if not os.path.lexists(self.path / name):
                raise UserError(f"{self.path}/meta.json lists the {split} loss mask {name}, which is missing; "
                                "prepare the data again or restore the file")
        return TokenFile([(_regular_file(self.path / name, split), tokens) for name, tokens in listed], "uint8")

    def windows(self, split: str, block_size: int, window_start: str, sampling: str):
        """The windows of `split` that `window_start` and `sampling` train on (accel_train.data.windows)."""
        return window_set(self, split, block_size, window_start, sampling)

    def document_boundary(self, needed_by: str | None = None) -> tuple[str, int] | None:
        """The token that opens each document (documents.document_boundary)."""
        return document_boundary(self.meta, self.path, needed_by)

    def tokenizer(self):
        """The tokenizer its data was prepared with (tokenizer.load_tokenizer)."""
        from accel_train.data.tokenizer import load_tokenizer  # tokenizers load slowly: only where one is needed

        return load_tokenizer(self.path)

    def identity(self) -> dict:
        """What identifies this data, and not where it lies or how it is cut into shards: each split's token count
        and a hash of a few chunks at fixed places in it (a whole-file hash would read terabytes at every start),
        and what meta.json says the ids mean (its tokenizer's fingerprint included), which sample, score and
        export compare a tokenizer with. A checkpoint records it; a resume on other data is refused."""
        identity = {"meta": {"dtype": self.meta.dtype, **self.meta.meaning()}}
        for split in SPLITS:
            tokens = self.split(split)
            identity[split] = {"tokens": tokens.num_tokens, "sampled_sha256": _sampled_sha256(tokens)}
        return identity


def _sampled_sha256(data: TokenFile) -> str:
    """The hash of SAMPLED_CHUNKS chunks of CHUNK_BYTES bytes of the split, as if its shards were one file."""
    digest, itemsize = hashlib.sha256(), np.dtype(data.dtype).itemsize
    last_start = max(data.num_tokens * itemsize - CHUNK_BYTES, 0)
    for i in range(SAMPLED_CHUNKS):
        start = last_start * i // (SAMPLED_CHUNKS - 1)
        first = start // itemsize
        raw = data.tokens(first, (start + CHUNK_BYTES) // itemsize + 1).tobytes()
        digest.update(raw[start - first * itemsize:][:CHUNK_BYTES])
    return digest.hexdigest()


def open_split(data_dir, split: str) -> TokenFile:
    """The split `split` of the data folder `data_dir`, opened afresh (a run reads its DataFolder's instead)."""
    return DataFolder(data_dir).split(split)


def open_mask(data_dir, split: str) -> TokenFile | None:
    """The loss mask of `split` in `data_dir`, opened afresh, or None where the folder has none."""
    return DataFolder(data_dir).mask(split)
