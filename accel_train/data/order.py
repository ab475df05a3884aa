"""The order in which a source's windows are drawn: sample k of a stream is a function of (key, k) alone.

`random` draws each window uniformly, with replacement (the seed's way: over 1.3 epochs about a quarter
of the windows are never drawn and others twice). `epoch` draws every window exactly once per epoch, in
an order shuffled anew each epoch: sample k is window perm_e(k mod n) of epoch e = k // n, where perm_e
is a keyed bijection of [0, n) (a Feistel network, cycle-walked into the range), so nothing of size n is
ever held in memory and a resumed run jumps to sample k without drawing the ones before it.
"""

from __future__ import annotations

import numpy as np

SAMPLINGS = ("epoch", "random")
FEISTEL_ROUNDS = 4
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast, well-spread hash of 64-bit integers (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


class Permutation:
    """A bijection of [0, n) drawn from `key`: a balanced Feistel network on the smallest even number of bits
    that holds n, applied again to any value it maps outside [0, n) until it lands inside (cycle walking: a
    permutation of the larger range stays one of [0, n) that way)."""

    def __init__(self, n: int, key: tuple[int, ...]):
        bits = max(2, (n - 1).bit_length())
        self.n, self.half = n, np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        self.round_keys = np.random.default_rng(key).integers(0, 2**63, FEISTEL_ROUNDS, dtype=np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for round_key in self.round_keys:
            left, right = right, left ^ (_mix(right ^ round_key) & self.mask)
        return (left << self.half) | right

    def __call__(self, index: np.ndarray) -> np.ndarray:
        out = self._encrypt(np.asarray(index, dtype=np.uint64))
        outside = out >= self.n
        while outside.any():
            out[outside] = self._encrypt(out[outside])
            outside = out >= self.n
        return out.astype(np.int64)


class EpochOrder:
    """Every window once per epoch, reshuffled each epoch (see the module's docstring)."""

    def __init__(self, num_windows: int, key: tuple[int, ...]):
        self.num_windows, self.key = num_windows, key
        self._permutations: dict[int, Permutation] = {}

    def _permutation(self, epoch: int) -> Permutation:
        if epoch not in self._permutations:
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}  # keep it small
            self._permutations[epoch] = Permutation(self.num_windows, (*self.key, epoch))
        return self._permutations[epoch]

    def indices(self, first: int, count: int) -> np.ndarray:
        """Window indices of samples first .. first + count - 1."""
        samples = np.arange(first, first + count, dtype=np.int64)
        epochs, positions = np.divmod(samples, self.num_windows)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            inside = epochs == epoch
            out[inside] = self._permutation(int(epoch))(positions[inside])
        return out


class RandomOrder:
    """Windows drawn uniformly with replacement, `block` samples per generator: block b of samples comes from
    numpy's generator seeded with (*key, b), as the seed's stream drew batch b."""

    def __init__(self, num_windows: int, key: tuple[int, ...], block: int):
        self.num_windows, self.key, self.block = num_windows, key, block

    def indices(self, first: int, count: int) -> np.ndarray:
        blocks = range(first // self.block, (first + count - 1) // self.block + 1)
        drawn = np.concatenate([np.random.default_rng((*self.key, b)).integers(0, self.num_windows, self.block)
                                for b in blocks])
        offset = first - blocks[0] * self.block
        return drawn[offset:offset + count]


def window_order(sampling: str, num_windows: int, key: tuple[int, ...], block: int):
    """The order `sampling` names over `num_windows` windows, drawn from `key`."""
    return EpochOrder(num_windows, key) if sampling == "epoch" else RandomOrder(num_windows, key, block)
