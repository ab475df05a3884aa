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
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from accel_train.data.folder import DataFolder
from accel_train.data.meta import meaning_differences
from accel_train.errors import UserError

MIX_STREAM = 0x6D6978  # a key part for the mixture's own draws, apart from every source's order


@dataclass(frozen=True)
class Source:
    """One source of training windows: a prepared folder, opened once (`folder`) on first use by whoever reads
    it first; every reader of the run (stream, evaluation, resume check) then shares that one DataFolder."""
    name: str  # the folder's base name, made unique: the key of its metrics and of its count in checkpoints
    data_dir: str
    weight: float  # normalized: the weights of a mixture add up to 1
    keyed_by_name: bool = True  # its window order is drawn from (seed, its name); data_dir's from the seed alone

    @cached_property
    def folder(self) -> DataFolder:
        return DataFolder(self.data_dir)

    def order_key(self, seed: int) -> tuple[int, ...]:
        """The key of its window order: a mixture's sources differ by name; data_dir's stream is the seed's alone
        (wherever the folder lies), as it was before mixtures."""
        return (seed, zlib.crc32(self.name.encode())) if self.keyed_by_name else (seed,)


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


class WindowCounts:
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


@dataclass(frozen=True)
class Mixture:
    """The sources a run trains on, read from its config once (`training_mixture`): data_mix's folders, or
    data_dir's alone, which is the mixture of one source with weight 1. Every part of a run takes this object;
    the one difference between the two settings lives here: a data_dir run's checkpoints and metrics predate
    mixtures, so they record no per-source counts, names or identities, and its stream is keyed by the seed
    alone. A resume may not switch from one setting to the other."""
    sources: tuple[Source, ...]
    setting: str  # the config key that named the sources: "data_dir" or "data_mix"

    @property
    def first(self) -> Source:
        """The source whose meta.json speaks for all (a mixture's folders share one tokenizer)."""
        return self.sources[0]

    @property
    def per_source(self) -> bool:
        """Whether metrics and checkpoints name each source (data_mix), or speak of the one folder (data_dir)."""
        return self.setting == "data_mix"

    @property
    def metric_names(self) -> list[str]:
        """The names under which each source's own metrics are logged (val_loss/NAME): none for data_dir, whose
        metrics are the run's."""
        return [source.name for source in self.sources] if self.per_source else []

    @property
    def described(self) -> str:
        """Where the data lies, for messages: data_dir's folder, or data_mix's folders."""
        return "data_mix's folders" if self.per_source else self.first.data_dir

    @property
    def option(self) -> str:
        """How a user points the run at other data."""
        return "data_mix" if self.per_source else "--data_dir"

    def counts_at(self, first_batch: int, batch_size: int, saved: dict | None) -> dict[str, int]:
        """Each source's windows given before global batch `first_batch`: as the checkpoint recorded them (`saved`;
        a source it does not know starts at 0), or for data_dir, which records none, every window of every batch."""
        if not self.per_source:
            return {self.first.name: first_batch * batch_size}
        return {source.name: (saved or {}).get(source.name, 0) for source in self.sources}

    def record(self, counts: dict[str, int], saved: dict | None) -> dict | None:
        """What a checkpoint records of the mixture, given each source's `counts` at its batch: the weights and
        counts (a dropped source keeps its `saved` count, should it come back); None for data_dir."""
        if not self.per_source:
            return None
        return {"weights": {source.name: source.weight for source in self.sources},
                "counts": {**(saved or {}), **counts}}

    def identity(self) -> dict:
        """What identifies the data (DataFolder.identity): data_dir's, or each source's by its name."""
        if not self.per_source:
            return self.first.folder.identity()
        return {"sources": {source.name: source.folder.identity() for source in self.sources}}

    def check_compatible(self) -> None:
        """Refuse a mixture of folders whose token ids mean different things (by tokenizer fingerprint where both
        record one, see meta.meaning_differences). Their dtypes may differ: a uint16 and a uint32 folder of one
        tokenizer hold the same ids."""
        first = self.first
        for source in self.sources[1:]:
            differ = meaning_differences(source.folder.meta.meaning(), first.folder.meta.meaning())
            if differ:
                raise UserError(f"data_mix: {source.data_dir} was not made like {first.data_dir} "
                                f"({'; '.join(differ)}: there is {source.data_dir}, here {first.data_dir}); a "
                                "mixture's folders must be prepared with one tokenizer")


def setting_of(config: dict) -> str:
    """The key that named the sources of the run whose config (TrainConfig.to_dict()) this is."""
    return "data_mix" if config.get("data_mix") else "data_dir"


def training_mixture(data_mix: str, data_dir: str) -> Mixture:
    """The folders a run trains on: data_mix's, or data_dir alone."""
    if data_mix:
        return Mixture(tuple(sources_of(parse_mix(data_mix))), "data_mix")
    return Mixture((Source(Path(data_dir).resolve().name, data_dir, 1.0, keyed_by_name=False),), "data_dir")
