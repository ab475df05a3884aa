"""The training data stream: global batch b as (source, window start) pairs, a function of the run's settings,
b and each source's count of windows given at the run's first batch.

One data folder is a mixture of one source, so there is one path for both. Source s's sample k is window
order_s(k) of its window set (accel_train.windows, .order); the mixture decides which source each slot of a
batch takes (accel_train.mixture).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from accel_train.data.mixture import Source, WindowCounts, slot_sources, training_mixture
from accel_train.data.order import window_order


class WindowStream:
    """Global batches of `batch_size` windows drawn from `sources` (see the module's docstring), each source from
    its count in `counts` at `first_batch` (0 for a source without one)."""

    def __init__(self, sources: list[Source] | tuple[Source, ...], block_size: int, batch_size: int, seed: int,
                 sampling: str, window_start: str, first_batch: int = 0, counts: dict[str, int] | None = None):
        self.sources, self.block_size, self.batch_size, self.seed = list(sources), block_size, batch_size, seed
        self.splits = [source.folder.split("train") for source in sources]
        self.masks = [source.folder.mask("train") for source in sources]  # None: every token trained on
        self.window_sets = [source.folder.windows("train", block_size, window_start, sampling) for source in sources]
        self.orders = [window_order(sampling, len(windows), source.order_key(seed), batch_size)
                       for windows, source in zip(self.window_sets, sources)]
        self.weights = np.array([source.weight for source in sources])
        first_counts = [(counts or {}).get(source.name, 0) for source in sources]
        # two counters of one sequence, so that the loader's and the checkpoint's questions never rewind each other
        self._served = WindowCounts(seed, self.weights, batch_size, first_batch, first_counts)
        self._saved = WindowCounts(seed, self.weights, batch_size, first_batch, first_counts)

    @classmethod
    def of_folder(cls, data_dir, block_size: int, batch_size: int, seed: int, sampling: str = "epoch",
                  window_start: str = "any", first_batch: int = 0) -> "WindowStream":
        """The stream of one data folder, as a run with that data_dir draws it."""
        mixture = training_mixture("", str(Path(data_dir)))
        return cls(mixture.sources, block_size, batch_size, seed, sampling, window_start, first_batch,
                   counts=mixture.counts_at(first_batch, batch_size, None))

    def slots(self, batch: int) -> np.ndarray:
        if len(self.sources) == 1:
            return np.zeros(self.batch_size, dtype=np.int64)
        return slot_sources(self.seed, batch, self.weights, self.batch_size)

    def batch(self, batch: int) -> list[tuple[int, int]]:
        """(source index, window start) of each window of global batch `batch`."""
        slots, counts = self.slots(batch), self._served.at(batch)
        starts = np.empty(self.batch_size, dtype=np.int64)
        for s in np.unique(slots):
            taken = slots == s
            indices = self.orders[s].indices(int(counts[s]), int(taken.sum()))
            starts[taken] = self.window_sets[s].starts(indices)
        return list(zip(slots.tolist(), starts.tolist()))

    def counts_at(self, batch: int) -> dict[str, int]:
        """Each source's windows given before global batch `batch`: what a checkpoint there records."""
        return dict(zip((source.name for source in self.sources), self._saved.at(batch).tolist()))
