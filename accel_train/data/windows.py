"""Which windows of a split there are to train on; an order (accel_train.order) picks among them.

- `window_start: any` with `sampling: random`: every position (the seed's windows, overlapping).
- `window_start: any` with `sampling: epoch`: non-overlapping windows every block_size tokens, so that an
  epoch shows every token once as an input (the last window's last target is the next one's first input).
- `window_start: document`: windows that start where a document starts (after meta.json's `eot_token`, or at
  its `bos_token`), as nanochat and modded-nanogpt train. A document longer than block_size goes on in
  windows at every block_size tokens after its start, so its later parts are trained too; a window whose
  document ends early runs on into the next one (that text is also seen in its own windows). An epoch
  then shows every window once, hence every token of every document once at its place in its document.

Document starts are found by one scan of the split in chunks (memory stays bounded whatever its size),
and the window starts kept beside the data in `.windows/` (an int64 array, read as a memmap), keyed by
the split's token count, meta.json's modification time and the block size; a folder that cannot be
written is scanned at every start.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from accel_train.atomic import replaced_file
from accel_train.errors import UserError

WINDOW_STARTS = ("any", "document")
SCAN_TOKENS = 1 << 22  # tokens read per chunk: 32 MiB as int64
CACHE_DIR = ".windows"


class AllPositions:
    """Every start position (overlapping windows)."""

    def __init__(self, data, block_size: int):
        self.count = data.num_windows(block_size)

    def __len__(self) -> int:
        return self.count

    def starts(self, indices: np.ndarray) -> np.ndarray:
        return indices


class Grid:
    """Non-overlapping windows, one every block_size tokens from the first."""

    def __init__(self, data, block_size: int):
        data.num_windows(block_size)  # refuses a split shorter than one window
        self.count, self.block_size = (data.num_tokens - 1) // block_size, block_size

    def __len__(self) -> int:
        return self.count

    def starts(self, indices: np.ndarray) -> np.ndarray:
        return indices * self.block_size


class DocumentStarts:
    """Windows starting at document starts, and every block_size tokens inside longer documents."""

    def __init__(self, folder, split: str, block_size: int):
        folder.split(split).num_windows(block_size)
        self.table = _cached_starts(folder, split, block_size)
        if not len(self.table):
            raise UserError(f"{folder.path}: no document of the {split} split starts a whole window of "
                            f"{block_size + 1} tokens; use window_start any or a smaller block_size")

    def __len__(self) -> int:
        return len(self.table)

    def starts(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.table[indices], dtype=np.int64)


def window_set(folder, split: str, block_size: int, window_start: str, sampling: str):
    """The windows of `split` of `folder` (a data.folder.DataFolder) that `window_start` and `sampling` train on."""
    if window_start == "document":
        return DocumentStarts(folder, split, block_size)
    data = folder.split(split)
    return Grid(data, block_size) if sampling == "epoch" else AllPositions(data, block_size)


def scan_starts(data, block_size: int, boundary: tuple[str, int], write) -> None:
    """Pass `write` the window starts of `data` (an open split whose documents open at `boundary`) chunk by
    chunk, in order (see DocumentStarts)."""
    kind, token = boundary
    last_start, pending = data.num_tokens - block_size - 1, 0  # pending: the document not yet closed
    for first in range(0, data.num_tokens, SCAN_TOKENS):
        count = min(SCAN_TOKENS, data.num_tokens - first)
        chunk = _read(data, first, count)
        found = np.flatnonzero(chunk == token) + first + (kind == "eot")
        found = found[(found > pending) & (found < data.num_tokens)]
        if len(found):
            write(_chunked(np.concatenate(([pending], found)), block_size, last_start))
            pending = int(found[-1])
    write(_chunked(np.array([pending, data.num_tokens]), block_size, last_start))


def _read(data, first: int, count: int) -> np.ndarray:
    """Tokens first .. first + count - 1 through the split's window reader (a flat file or shards alike)."""
    if count == 1:  # the target of a one-token window that ends there (a split holds at least two tokens)
        return data.windows(np.array([first - 1]), 1)[1][0].numpy()
    x, y = data.windows(np.array([first]), count - 1)
    return np.concatenate((x[0].numpy(), y[0, -1:].numpy()))


def _chunked(bounds: np.ndarray, block_size: int, last_start: int) -> np.ndarray:
    """Window starts of the documents between consecutive `bounds`: each start, then every block_size tokens."""
    starts, lengths = bounds[:-1], np.diff(bounds)
    per_document = -(-lengths // block_size)
    first_of = np.repeat(np.cumsum(per_document) - per_document, per_document)
    out = np.repeat(starts, per_document) + (np.arange(per_document.sum()) - first_of) * block_size
    return out[out <= last_start].astype(np.int64)


def _cached_starts(data_folder, split: str, block_size: int) -> np.ndarray:
    """The window starts from the cache beside the data, scanned (and cached where the folder allows) if stale."""
    data = data_folder.split(split)
    boundary = data_folder.document_boundary("window_start document")
    key = {"tokens": data.num_tokens, "block_size": block_size, "boundary": list(boundary),
           "meta_mtime_ns": data_folder.meta_mtime_ns}
    folder, name = data_folder.path / CACHE_DIR, f"{split}_{block_size}"
    with contextlib.suppress(OSError, ValueError):
        if json.loads((folder / f"{name}.json").read_text()) == key:
            return _load(folder / f"{name}.bin")
    try:
        folder.mkdir(exist_ok=True)
        with replaced_file(folder / f"{name}.bin") as tmp, open(tmp, "wb") as out:
            scan_starts(data, block_size, boundary, lambda starts: out.write(starts.tobytes()))
        with replaced_file(folder / f"{name}.json") as tmp:  # the table first, then the key that vouches for it
            tmp.write_text(json.dumps(key))
        return _load(folder / f"{name}.bin")
    except OSError:  # a read-only data folder: keep them in memory this time
        parts = []
        scan_starts(data, block_size, boundary, parts.append)
        return np.concatenate(parts)


def _load(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.int64, mode="r") if path.stat().st_size else np.empty(0, dtype=np.int64)
