"""Weighted mixtures of prepared folders: which source each sample of a global batch comes from.

`data_mix` names folders with weights (`{"data/web": 0.7, "data/books": 0.3}` in a config file,
`data/web=0.7,data/books=0.3` or the same JSON on the command line). Each source keeps its own stream of
windows (accel_train.order) and a count of the windows it has given. Batch b's `batch_size` slots are
shared out by systematic sampling from (seed, b) alone: source s gets floor or ceil of weight_s x
batch_size slots, in expectation exactly weight_s x batch_size, and the slots are then shuffled. So a
source's count at any batch boundary is computed from the batches since the run's start, never from what
the loader has consumed; a checkpoint records the counts at its batch, and a resumed run may change the
weights: they apply from its first batch on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accel_train.data.meta import DataMeta, meaning_differences
from accel_train.errors import UserError

MIX_STREAM = 0x6D6978  # a key part for the mixture's own draws, apart from every source's order


@dataclass(frozen=True)
class Source:
    name: str  # the folder's base name, made unique: the key of its metrics and of its count in checkpoints
    data_dir: str
    weight: float  # normalized: the weights of a mixture add up to 1


def parse_mix(text: str) -> dict[str, float]:
    """{folder: weight} from a JSON object or `path=weight,...`; weights must be positive finite numbers, and a
    folder may be named once (by any path to it: see `same_folders`)."""
    if text.lstrip().startswith("{"):
        try:
            pairs = json.loads(text, object_pairs_hook=list)  # pairs, not a dict: a repeated folder is seen
        except ValueError as err:
            raise UserError(f"data_mix is not a JSON object of folder: weight ({err})") from None
    else:
        split = [item.rpartition("=") for item in text.split(",") if item.strip()]
        if any(not sep or not path.strip() for path, sep, _ in split):
            raise UserError(f"data_mix must be a JSON object or folder=weight,...; got {text!r:.80}")
        pairs = []
        for path, _, weight in split:
            try:
                pairs.append((path.strip(), float(weight)))
            except ValueError:
                raise UserError(f"data_mix: the weight of {path.strip()} must be a number, got {weight!r}") from None
    if not pairs:
        raise UserError("data_mix names no folder")
    for path, weight in pairs:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight <= 0:
            raise UserError(f"data_mix: the weight of {path} must be a positive number, got {weight!r:.40}")
    same_folders([path for path, _ in pairs])
    return dict(pairs)


def same_folders(paths: list[str]) -> None:
    """Refuse a folder named twice: a source is a folder, whatever path names it (data/mA, ./data/mA, a symbolic
    link to it), so two weights for one would leave one of them silently unused."""
    seen = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise UserError(f"data_mix names the folder {real} twice (as {seen[real]} and {path}); give each "
                            "folder one weight")
        seen[real] = path


def sources_of(mix: dict[str, float]) -> list[Source]:
    """The mixture's sources, in the order of their folders' names (so the order the file lists them in does
    not matter), named by base name with _2, _3... where two share one."""
    total, taken, sources = sum(mix.values()), set(), []
    for path in sorted(mix, key=lambda p: (Path(p).name, p)):
        base = Path(path).resolve().name or "data"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        sources.append(Source(name, path, mix[path] / total))
    return sources


def slot_sources(seed: int, batch: int, weights: np.ndarray, batch_size: int) -> np.ndarray:
    """The source index of each slot of global batch `batch`: systematic sampling, then a shuffle."""
    rng = np.random.default_rng((seed, MIX_STREAM, batch))
    points = (np.arange(batch_size) + rng.random()) / batch_size
    sources = np.minimum(np.searchsorted(np.cumsum(weights), points, side="right"), len(weights) - 1)
    return sources[rng.permutation(batch_size)]


class Tally:
    """Each source's count of windows given at a batch boundary, from the counts at `first_batch`; it moves
    forward from the last boundary it was asked about (asked about an earlier one, it starts over)."""

    def __init__(self, seed: int, weights: np.ndarray, batch_size: int, first_batch: int, counts: np.ndarray):
        self.seed, self.weights, self.batch_size = seed, weights, batch_size
        self.first_batch, self.first_counts = first_batch, np.asarray(counts, dtype=np.int64)
        self.batch, self.counts = first_batch, self.first_counts.copy()

    def at(self, batch: int) -> np.ndarray:
        if batch < self.batch:
            self.batch, self.counts = self.first_batch, self.first_counts.copy()
        for b in range(self.batch, batch):
            self.counts += np.bincount(slot_sources(self.seed, b, self.weights, self.batch_size),
                                       minlength=len(self.weights))
        self.batch = batch
        return self.counts.copy()


def check_compatible(sources: list[Source], metas: list[DataMeta]) -> None:
    """Refuse a mixture of folders whose token ids mean different things (by tokenizer fingerprint where both
    record one, see meta.meaning_differences). Their dtypes may differ: a uint16 and a uint32 folder of one
    tokenizer hold the same ids."""
    first, first_meta = sources[0], metas[0]
    for source, meta in zip(sources[1:], metas[1:]):
        differ = meaning_differences(meta.meaning(), first_meta.meaning())
        if differ:
            raise UserError(f"data_mix: {source.data_dir} was not made like {first.data_dir} ({'; '.join(differ)}: "
                            f"there is {source.data_dir}, here {first.data_dir}); a mixture's folders must be "
                            "prepared with one tokenizer")


def training_sources(data_mix: str, data_dir: str) -> list[Source]:
    """The folders a run trains on: data_mix's, or data_dir alone."""
    if data_mix:
        return sources_of(parse_mix(data_mix))
    return [Source(Path(data_dir).resolve().name, data_dir, 1.0)]
