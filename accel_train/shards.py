"""Writing a split as shard files of a bounded size, and the record that lets a killed `prepare` resume.

A split is written as `train_00000.bin`, `train_00001.bin`, ... of exactly `shard_tokens` tokens each (the
last one shorter), so the shards are the same whatever the chunking and a reader sees their concatenation.
A split that fits in one shard keeps the name it had before shards (`train.bin`).

`progress.json` in the staging folder says which shards are finished (written and synced to disk) and,
for each split, the point in the input where its unfinished shard begins: the document chunk whose tokens
finished its last shard, with every split's counts before that chunk. A rerun with the same key (the
arguments, inputs and tokenizer) keeps the finished shards, tokenizes again from the earlier of those
points, drops the tokens that finished shards already hold, and so writes exactly what an uninterrupted
run writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

PROGRESS_FILE = "progress.json"
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16: a 100 GB corpus is a few hundred files; a resume redoes one
SPLITS = ("train", "val")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}.bin"


def start_cursor() -> dict:
    """Where a prepare that has read nothing stands: chunk 0, no tokens, documents or bytes in any split."""
    return {"chunk": 0, **{count: dict.fromkeys(SPLITS, 0) for count in ("tokens", "documents", "bytes")}}


class ShardFiles:
    """One split written into `folder` as shards of `shard_tokens` tokens. `finished` are shards a killed
    run left, and `skip` how many of the next tokens they already hold."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int,
                 finished: list[tuple[str, int]] = (), skip: int = 0):
        self.folder, self.split, self.dtype, self.shard_tokens = Path(folder), split, dtype, shard_tokens
        self.finished, self.skip = list(finished), skip
        self._file, self._filled = None, 0

    def write(self, ids: np.ndarray) -> bool:
        """Append `ids` to the shards; True where that finished one."""
        dropped = min(self.skip, len(ids))
        ids, self.skip = ids[dropped:], self.skip - dropped
        finished = False
        while len(ids):
            if self._file is None:
                self._file = open(self.folder / shard_name(self.split, len(self.finished)), "wb")
            part = ids[:self.shard_tokens - self._filled]
            self._file.write(part.astype(self.dtype).tobytes())
            self._filled, ids = self._filled + len(part), ids[len(part):]
            if self._filled == self.shard_tokens:
                self._finish_shard()
                finished = True
        return finished

    def _finish_shard(self) -> None:
        """Close the open shard, on disk before progress.json names it."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.finished.append((Path(self._file.name).name, self._filled))
        self._file, self._filled = None, 0

    def close(self) -> list[tuple[str, int]]:
        """Finish the last shard; returns (file name, tokens) of each shard, in order."""
        if self._file is not None:
            self._finish_shard()
        if len(self.finished) == 1:
            name, tokens = self.finished[0]
            os.replace(self.folder / name, self.folder / f"{self.split}.bin")
            self.finished = [(f"{self.split}.bin", tokens)]
        return self.finished

    def abandon(self) -> None:
        if self._file is not None:
            self._file.close()


def save_progress(folder: Path, key: str, shard_tokens: int, files: dict[str, ShardFiles], cursors: dict) -> None:
    """Record the finished shards and, per split, the cursor before the chunk that finished its last one;
    written whole or not at all."""
    record = {"key": key, "shard_tokens": shard_tokens, "cursors": cursors,
              "finished": {split: f.finished for split, f in files.items()}}
    tmp = folder / f"{PROGRESS_FILE}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / PROGRESS_FILE)


def resume_point(folder: Path, key: str, itemsize: int) -> tuple[dict, dict, dict[str, list]]:
    """What an unfinished prepare in `folder` leaves to reuse: (the cursor to tokenize from, each split's cursor
    as recorded, each split's finished shards). Its unfinished shards are removed; everything is, with a line
    that says so, where the record was made with another key or its shards are not as it says."""
    record = _read_record(folder)
    fresh = (start_cursor(), {split: start_cursor() for split in SPLITS}, {split: [] for split in SPLITS})
    if record is None:
        _remove_shards(folder, keep=())
        return fresh
    finished = {split: [tuple(shard) for shard in record["finished"][split]] for split in SPLITS}
    whole = all((folder / name).is_file() and (folder / name).stat().st_size == tokens * itemsize
                for shards in finished.values() for name, tokens in shards)
    if record["key"] != key or not whole:
        why = "other arguments, inputs or tokenizer" if record["key"] != key else "shards that are not on disk whole"
        print(f"starting over: the unfinished prepare in {folder} was made with {why}", flush=True)
        _remove_shards(folder, keep=())
        return fresh
    _remove_shards(folder, keep={name for shards in finished.values() for name, _ in shards})
    cursors = record["cursors"]
    cursor = min(cursors.values(), key=lambda c: c["chunk"])
    print(f"resuming the unfinished prepare in {folder}: keeping {len(finished['train'])} train and "
          f"{len(finished['val'])} val shards, tokenizing again from document chunk {cursor['chunk']}", flush=True)
    return cursor, cursors, finished


def _read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"key", "cursors", "finished"} <= set(record) else None


def _remove_shards(folder: Path, keep) -> None:
    """Remove the shard files of `folder` not in `keep`, and its progress record."""
    for path in folder.iterdir():
        if path.suffix == ".bin" and path.name not in keep or path.name == PROGRESS_FILE:
            path.unlink()
