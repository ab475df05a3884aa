"""The training data stream: global batch b as (source, window start) pairs, a function of the run's settings,
b and (for a mixture) each source's count at the run's first batch.

One data folder is a mixture of one source whose count at batch b is b x batch_size, so there is one path
for both. Source s's sample k is window order_s(k) of its window set (accel_train.windows, .order); the
mixture decides which source each slot of a batch takes (accel_train.mixture).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from accel_train.data.meta import DataMeta, read_meta
from accel_train.data.tokens import open_mask, open_split
from accel_train.data.mixture import Source, Tally, slot_sources
from accel_train.data.order import window_order
from accel_train.data.windows import window_set


class WindowStream:
    """Global batches of `batch_size` windows drawn from `sources` (see the module's docstring): data_dir's alone,
    or with `mixture`, data_mix's, each from its `counts` at `first_batch` (0 for a source without one). `metas`
    are the sources' meta.json where the caller has read them."""

    def __init__(self, sources: list[Source], block_size: int, batch_size: int, seed: int, sampling: str,
                 window_start: str, first_batch: int = 0, counts: dict[str, int] | None = None,
                 mixture: bool = False, metas: list[DataMeta] | None = None):
        self.sources, self.block_size, self.batch_size, self.seed = sources, block_size, batch_size, seed
        self.mixture = mixture
        self.splits = [open_split(str(source.data_dir), "train") for source in sources]
        self.masks = [open_mask(str(source.data_dir), "train") for source in sources]  # None: every token trained
        self.window_sets = [window_set(split, block_size, window_start, sampling, source.data_dir, "train",
                                       meta) for split, source, meta in
                            zip(self.splits, sources, metas or [read_meta(source.data_dir) for source in sources])]
        self.orders = [window_order(sampling, len(windows), self._key(source), batch_size)
                       for windows, source in zip(self.window_sets, sources)]
        self.weights = np.array([source.weight for source in sources])
        first_counts = ([first_batch * batch_size] if not mixture else
                        [(counts or {}).get(source.name, 0) for source in sources])
        self._tally = Tally(seed, self.weights, batch_size, first_batch, first_counts)
        self._checkpoint_tally = Tally(seed, self.weights, batch_size, first_batch, first_counts)

    @classmethod
    def of_folder(cls, data_dir, block_size: int, batch_size: int, seed: int, sampling: str = "epoch",
                  window_start: str = "any", first_batch: int = 0) -> "WindowStream":
        """The stream of one data folder, as a run with that data_dir draws it."""
        return cls([Source(Path(data_dir).resolve().name, str(data_dir), 1.0)], block_size, batch_size, seed,
                   sampling, window_start, first_batch)

    def _key(self, source: Source) -> tuple[int, ...]:
        """One folder's stream is the seed's alone (wherever the folder lies); a mixture's sources differ by name."""
        return (self.seed, zlib.crc32(source.name.encode())) if self.mixture else (self.seed,)

    def slots(self, batch: int) -> np.ndarray:
        if len(self.sources) == 1:
            return np.zeros(self.batch_size, dtype=np.int64)
        return slot_sources(self.seed, batch, self.weights, self.batch_size)

    def batch(self, batch: int) -> list[tuple[int, int]]:
        """(source index, window start) of each window of global batch `batch`."""
        slots, counts = self.slots(batch), self._tally.at(batch)
        starts = np.empty(self.batch_size, dtype=np.int64)
        for s in np.unique(slots):
            taken = slots == s
            indices = self.orders[s].indices(int(counts[s]), int(taken.sum()))
            starts[taken] = self.window_sets[s].starts(indices)
        return list(zip(slots.tolist(), starts.tolist()))

    def counts_at(self, batch: int) -> dict[str, int]:
        """Each source's windows given before global batch `batch`: what a checkpoint there records."""
        return dict(zip((source.name for source in self.sources), self._checkpoint_tally.at(batch).tolist()))
