"""Writing a split as shard files of a bounded size, and the record that lets a killed `prepare` resume.

A split is written as `train_00000.bin`, `train_00001.bin`, ... of exactly `shard_tokens` tokens each (the
last one shorter), so the shards are the same whatever the chunking and a reader sees their concatenation.
A split that fits in one shard keeps the name it had before shards (`train.bin`).

Each time a document chunk's tokens finish a shard, every open shard is synced to disk and `progress.json`
in the staging folder records each split's shards with the tokens they hold (the last one unfinished) and
the point in the input after that chunk, with its counts. A rerun with the same key (the arguments, inputs
and tokenizer) keeps those shards, cuts the unfinished ones back to the recorded length (what a killed run
wrote after the record is redone), and tokenizes again from that point: it writes exactly what an
uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from accel_train.atomic import replaced_file

PROGRESS_FILE = "progress.json"
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16: a 100 GB corpus is a few hundred files; a resume redoes one
SPLITS = ("train", "val")


MASK_SUFFIX = ".mask"  # a conversations folder's loss mask beside each shard: one uint8 per token


def shard_name(split: str, index: int, suffix: str = ".bin") -> str:
    return f"{split}_{index:05d}{suffix}"


def start_cursor() -> dict:
    """Where a prepare that has read nothing stands: chunk 0, no tokens, documents or bytes in any split."""
    return {"chunk": 0, **{count: dict.fromkeys(SPLITS, 0) for count in ("tokens", "documents", "bytes")}}


class ShardFiles:
    """One split written into `folder` as shards of `shard_tokens` tokens, continuing the `shards` ((file name,
    tokens) of each, the last one maybe unfinished) that a killed run left."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int, shards: list[tuple[str, int]] = (),
                 suffix: str = ".bin"):
        self.folder, self.split, self.dtype, self.shard_tokens = Path(folder), split, dtype, shard_tokens
        self.suffix = suffix  # .bin for tokens, .mask for a loss mask written in step with them
        self.finished = [tuple(shard) for shard in shards if shard[1] == shard_tokens]
        self._file, self._filled = None, 0
        if len(shards) > len(self.finished):  # an unfinished shard, already cut back to its recorded length
            self._file, self._filled = open(self.folder / shards[-1][0], "ab"), shards[-1][1]

    def write(self, ids: np.ndarray) -> bool:
        """Append `ids` to the shards; True where that finished one."""
        finished = False
        while len(ids):
            if self._file is None:
                self._file = open(self.folder / shard_name(self.split, len(self.finished), self.suffix), "wb")
            part = ids[:self.shard_tokens - self._filled]
            self._file.write(part.astype(self.dtype).tobytes())
            self._filled, ids = self._filled + len(part), ids[len(part):]
            if self._filled == self.shard_tokens:
                self._close_shard()
                finished = True
        return finished

    def sync(self) -> list[tuple[str, int]]:
        """Put everything written on disk; (file name, tokens) of each shard so far, the unfinished one last."""
        if self._file is None:
            return list(self.finished)
        self._file.flush()
        os.fsync(self._file.fileno())
        return [*self.finished, (Path(self._file.name).name, self._filled)]

    def _close_shard(self) -> None:
        self.sync()
        self._file.close()
        self.finished.append((Path(self._file.name).name, self._filled))
        self._file, self._filled = None, 0

    def close(self) -> list[tuple[str, int]]:
        """Finish the last shard; returns (file name, tokens) of each shard, in order."""
        if self._file is not None:
            self._close_shard()
        if len(self.finished) == 1:
            name, tokens = self.finished[0]
            os.replace(self.folder / name, self.folder / f"{self.split}{self.suffix}")
            self.finished = [(f"{self.split}{self.suffix}", tokens)]
        return self.finished

    def abandon(self) -> None:
        if self._file is not None:
            self._file.close()


def save_progress(folder: Path, key: str, files: dict[str, ShardFiles], cursor: dict) -> None:
    """Sync every shard, then record them and `cursor` (where in the input they end); written whole or not at
    all."""
    record = {"key": key, "cursor": cursor, "shards": {split: f.sync() for split, f in files.items()}}
    with replaced_file(folder / PROGRESS_FILE) as tmp:
        tmp.write_text(json.dumps(record))


def resume_point(folder: Path, key: str, itemsize: int) -> tuple[dict, dict[str, list]]:
    """What an unfinished prepare in `folder` leaves to reuse: (the cursor to tokenize from, each split's shards),
    its shard files cut back to what the record says. Everything is removed, with a line that says so, where
    the record was made with another key or its shards are not on disk as it says."""
    record = _read_record(folder)
    if record is None:
        _remove_shards(folder, keep=())
        return start_cursor(), {split: [] for split in SPLITS}
    shards = {split: [tuple(shard) for shard in record["shards"][split]] for split in SPLITS}
    whole = all((folder / name).is_file() and (folder / name).stat().st_size >= tokens * itemsize
                for listed in shards.values() for name, tokens in listed)
    if record["key"] != key or not whole:
        why = "other arguments, inputs or tokenizer" if record["key"] != key else "shards that are not on disk whole"
        print(f"starting over: the unfinished prepare in {folder} was made with {why}", flush=True)
        _remove_shards(folder, keep=())
        return start_cursor(), {split: [] for split in SPLITS}
    _remove_shards(folder, keep={name for listed in shards.values() for name, _ in listed})
    for name, tokens in (shard for listed in shards.values() for shard in listed):
        if (folder / name).stat().st_size != tokens * itemsize:  # a finished shard is left untouched
            os.truncate(folder / name, tokens * itemsize)  # what was written after the record is written again
    cursor = record["cursor"]
    print(f"resuming the unfinished prepare in {folder}: keeping {len(shards['train'])} train and "
          f"{len(shards['val'])} val shards, tokenizing again from document chunk {cursor['chunk']}", flush=True)
    return cursor, shards


def _read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"key", "cursor", "shards"} <= set(record) else None


def _remove_shards(folder: Path, keep) -> None:
    """Remove the shard files (and loss masks) of `folder` not in `keep`, and its progress record."""
    for path in folder.iterdir():
        if path.suffix in (".bin", MASK_SUFFIX) and path.name not in keep or path.name == PROGRESS_FILE:
            path.unlink()
