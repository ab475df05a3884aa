"""Tokens per second of `python -m accel_train.prepare`, and its peak memory on a corpus larger than that memory.

    python benchmarks/prepare_bench.py [--corpus_mb 2048] [--limit_mb 512] [--tokenizer byte] [--workers N]

Writes a corpus of generated stories (separated by `<|endoftext|>`) to a temporary folder, then
prepares it in a subprocess whose private memory (heap and anonymous maps) is capped at `--limit_mb`
(RLIMIT_DATA, inherited by every worker): a tool that held the corpus in memory would fail there.
Prints the corpus size, tokens per second of the whole run, and the peak resident memory of the
largest process (about 240 MB of which is importing the package, torch included).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accel_train.data.demo_corpus import stories

SEP = "<|endoftext|>"


def write_corpus(path: Path, megabytes: int) -> int:
    """Stories until the file holds `megabytes` MB (eight generated blocks, cycled); returns its size in bytes."""
    blocks = [(SEP.join(stories(5_000, seed)) + SEP).encode() for seed in range(8)]
    with open(path, "wb") as f:
        for block in itertools.cycle(blocks):
            if f.tell() >= megabytes * 10**6:
                return f.tell()
            f.write(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_mb", type=int, default=2048)
    parser.add_argument("--limit_mb", type=int, default=512, help="private-memory cap of each prepare process")
    parser.add_argument("--tokenizer", default="byte", choices=("byte", "bpe", "gpt2"))
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        start = time.perf_counter()
        size = write_corpus(corpus, args.corpus_mb)
        print(f"corpus: {size / 1e6:,.0f} MB written in {time.perf_counter() - start:.0f} s", flush=True)

        def cap_memory():
            limit = args.limit_mb * 2**20
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

        cmd = [sys.executable, "-m", "accel_train.prepare", "--input", str(corpus), "--separator", SEP,
               "--tokenizer", args.tokenizer, "--out", str(Path(tmp) / "out"), "--workers", str(args.workers)]
        start = time.perf_counter()
        result = subprocess.run(cmd, preexec_fn=cap_memory, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        if result.returncode:
            sys.exit(f"prepare failed under a {args.limit_mb} MB cap:\n{result.stderr[-3000:]}")
        meta = json.loads((Path(tmp) / "out" / "meta.json").read_text())
    tokens = sum(meta["tokens"].values())
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"prepare ({args.tokenizer}, {args.workers} workers): {tokens:,} tokens in {seconds:.1f} s = "
          f"{tokens / seconds:,.0f} tokens/s ({size / 1e6 / seconds:.1f} MB/s of text)")
    print(f"memory: cap {args.limit_mb} MB of private memory (RLIMIT_DATA) per process, "
          f"peak resident {peak_mb:.0f} MB, "
          f"corpus {size / 2**20 / args.limit_mb:.1f}x the cap")


if __name__ == "__main__":
    main()
