"""Throughput of `get_batch` at 32 x 128 beside the seed's version, in the same process on the same file.

    python benchmarks/get_batch_bench.py [--tokens 200000000] [--calls 3000]

The seed's version (re-implemented from its description: a fresh memmap per call, a Python loop of
slices, two stacks) is the baseline; the printed ratio is ours over it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from accel_train.bench import baseline_get_batch
from accel_train.data.meta import DataMeta, write_meta
from accel_train.data.tokens import get_batch


def batches_per_second(fn, calls: int) -> float:
    for _ in range(min(200, calls)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200_000_000, help="size of the synthetic train split")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with open(folder / "train.bin", "wb") as f:
            for start in range(0, args.tokens, 10_000_000):
                n = min(10_000_000, args.tokens - start)
                np.random.default_rng(start).integers(0, 50_257, n, dtype=np.uint16).tofile(f)
        write_meta(folder, DataMeta("uint16", 50_257))
        T, B = args.block_size, args.batch_size
        seed_rate = batches_per_second(lambda: baseline_get_batch(folder / "train.bin", T, B), args.calls)
        ours_rate = batches_per_second(lambda: get_batch("train", T, B, "cpu", "cpu", data_dir=folder), args.calls)
    print(f"get_batch {B} x {T} on {args.tokens:,} uint16 tokens (CPU, {args.calls} calls each)")
    print(f"  seed's loop of slices: {seed_rate:10,.0f} batches/s  ({1e6 / seed_rate:6.1f} us per batch)")
    print(f"  accel_train:           {ours_rate:10,.0f} batches/s  ({1e6 / ours_rate:6.1f} us per batch)")
    print(f"  ratio: {ours_rate / seed_rate:.1f}x (target: 10x)")


if __name__ == "__main__":
    main()
