"""The largest token id in a split file: read once, remembered beside the data.

The trainer checks every id against the vocabulary before it starts, since one id beyond it
would crash a run hours in (an IndexError in the embedding). That reads the whole file, in
chunks so memory stays bounded; a split larger than one chunk keeps its answer in `.scan.json`
beside it, keyed by the file's size, modification time, inode and dtype, so the next run does
not read it again. A folder that cannot be written is simply scanned each time; a file of one
chunk or less is scanned faster than a cache is read, and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from accel_train.atomic import replaced_file

CHUNK = 64 << 20  # tokens per np.max: 128 MiB of uint16
CACHE_FILE = ".scan.json"


def largest_id(path, dtype, chunk: int = CHUNK) -> int:
    """The largest token id in `path` read as `dtype` (the file must hold at least one token)."""
    path = Path(path)
    stat = path.stat()
    key = {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "dtype": np.dtype(dtype).name}
    cache = _read_cache(path.parent)
    entry = cache.get(path.name)
    if isinstance(entry, dict) and {k: entry.get(k) for k in key} == key and isinstance(entry.get("largest"), int):
        return entry["largest"]
    tokens = np.memmap(path, dtype=dtype, mode="r")
    largest = max(int(tokens[i:i + chunk].max()) for i in range(0, len(tokens), chunk))
    if len(tokens) > chunk:
        cache[path.name] = {**key, "largest": largest}
        _write_cache(path.parent, cache)
    return largest


def _read_cache(folder: Path) -> dict:
    try:
        cache = json.loads((folder / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(folder: Path, cache: dict) -> None:
    """Written whole in one rename, so a trainer starting at the same time never reads half of one."""
    with contextlib.suppress(OSError), replaced_file(folder / CACHE_FILE) as tmp:  # read-only: scan again next time
        tmp.write_text(json.dumps(cache, indent=1))
