"""`python -m accel_train.prepare` against tiktoken's own batch encoder, its peak memory, and the time from
launching the trainer on its output to the first training step.

    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken_cache python benchmarks/prepare_bench.py \\
        --text /work/shared/data/tinystories_sample.txt --corpus_mb 1024 --tokenizer gpt2 --workers 2

Writes a corpus of `--corpus_mb` MB into a temporary folder (`--text` repeated, or generated stories),
documents separated by `<|endoftext|>`, and removes it at the end. Then, back to back on the same text:

1. prepare it into shards in a subprocess whose private memory (heap and anonymous maps) is capped at
   `--limit_mb` (RLIMIT_DATA, inherited by every worker): a tool that held the corpus in memory would fail;
   the peak resident memory of the largest process comes from getrusage(RUSAGE_CHILDREN).
2. (gpt2 only) tiktoken's `encode_ordinary_batch` with `--workers` threads over the same documents, read
   in the same ~1 MB batches, writing nothing: the encoding speed that prepare's files and splits cost against.
3. launch `accel_train/train.py` on the result (a tiny model) and time it to its first logged training step,
   twice: the first start reads every token once to check the ids (token_scan), the second finds that cached.
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
from accel_train.data.meta import read_meta

REPO = Path(__file__).resolve().parent.parent
SEP = "<|endoftext|>"
BATCH_CHARS = 1 << 20  # documents per encode_ordinary_batch call, as prepare's chunks
TINY = ["--model.hidden_size", "64", "--model.intermediate_size", "128", "--model.num_hidden_layers", "2",
        "--model.num_attention_heads", "2", "--model.num_key_value_heads", "1", "--model.head_dim", "32",
        "--model.query_pre_attn_scalar", "32", "--model.sliding_window", "32"]


def write_corpus(path: Path, megabytes: int, text: Path | None) -> int:
    """`text` (or generated stories) repeated until the file holds `megabytes` MB; returns its size in bytes."""
    if text:
        blocks = [text.read_text(encoding="utf-8").strip().encode() + SEP.encode()]
    else:
        blocks = [(SEP.join(stories(5_000, seed)) + SEP).encode() for seed in range(8)]
    with open(path, "wb") as f:
        for block in itertools.cycle(blocks):
            if f.tell() >= megabytes * 10**6:
                return f.tell()
            f.write(block)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_prepare(corpus: Path, out: Path, args) -> tuple[float, float]:
    """Wall and CPU seconds (of prepare and its workers) of preparing `corpus` into `out`."""
    def cap_memory():
        limit = args.limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    cmd = [sys.executable, "-m", "accel_train.prepare", "--input", str(corpus), "--separator", SEP,
           "--tokenizer", args.tokenizer, "--out", str(out), "--workers", str(args.workers)]
    start, cpu = time.perf_counter(), children_cpu_seconds()
    result = subprocess.run(cmd, preexec_fn=cap_memory, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"prepare failed under a {args.limit_mb} MB cap:\n{result.stderr[-3000:]}")
    return seconds, children_cpu_seconds() - cpu


def tiktoken_baseline(corpus: Path, threads: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and tokens of tiktoken's encode_ordinary_batch over the corpus's documents."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    tokens, seconds, cpu, rest = 0, 0.0, 0.0, ""
    with open(corpus, encoding="utf-8") as f:
        for block in iter(lambda: f.read(BATCH_CHARS), ""):
            *docs, rest = (rest + block).split(SEP)
            start, start_cpu = time.perf_counter(), time.process_time()
            tokens += sum(map(len, enc.encode_ordinary_batch([d.strip() for d in docs], num_threads=threads)))
            seconds, cpu = seconds + time.perf_counter() - start, cpu + time.process_time() - start_cpu
    return seconds, cpu, tokens


def seconds_to_first_step(data: Path, out: Path, vocab_size: int) -> float:
    """From launching the trainer on `data` to the first training row in its metrics.jsonl."""
    cmd = [sys.executable, str(REPO / "accel_train" / "train.py"), "--data_dir", str(data), "--out_dir", str(out),
           "--demo_data", "false", "--device", "cpu", "--max_iters", "2", "--warmup_steps", "1", "--log_interval", "1",
           "--eval_interval", "1000", "--eval_iters", "1", "--batch_size", "4", "--block_size", "128",
           "--sample_tokens", "0", "--plot", "false", *TINY, "--model.vocab_size", str(vocab_size)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and any("loss" in json.loads(line) for line in metrics.read_text().splitlines()
                                        if line.strip().endswith("}"))):
        if proc.poll() is not None:
            sys.exit(f"training failed:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    proc.kill()
    proc.wait()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus_mb", type=int, default=1024)
    parser.add_argument("--text", type=Path, default=None, help="a text file to repeat (default: generated stories)")
    parser.add_argument("--limit_mb", type=int, default=512, help="private-memory cap of each prepare process")
    parser.add_argument("--tokenizer", default="gpt2", choices=("byte", "bpe", "gpt2"))
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, out = Path(tmp) / "corpus.txt", Path(tmp) / "out"
        size = write_corpus(corpus, args.corpus_mb, args.text)
        print(f"corpus: {size / 1e6:,.0f} MB of {args.text or 'generated stories'}", flush=True)
        seconds, cpu = run_prepare(corpus, out, args)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        meta = read_meta(out)
        tokens = sum(meta.tokens.values())
        shards = sum(map(len, meta.shards.values()))
        print(f"prepare ({args.tokenizer}, {args.workers} workers): {size / 1e6 / seconds:.2f} MB/s of text "
              f"({size / 1e6 / cpu:.2f} MB per CPU second), {tokens:,} tokens in {seconds:.1f} s, {shards} shards; "
              f"peak resident {peak_mb:.0f} MB (cap {args.limit_mb} MB of private memory per process)", flush=True)
        if args.tokenizer == "gpt2":
            base_seconds, base_cpu, base_tokens = tiktoken_baseline(corpus, args.workers)
            print(f"tiktoken encode_ordinary_batch ({args.workers} threads): {size / 1e6 / base_seconds:.2f} MB/s "
                  f"({size / 1e6 / base_cpu:.2f} MB per CPU second), {base_tokens:,} tokens in {base_seconds:.1f} s; "
                  f"prepare runs at {base_seconds / seconds:.2f}x its speed, {base_cpu / cpu:.2f}x its CPU efficiency",
                  flush=True)
        corpus.unlink()
        for attempt in ("first start (scans every token id)", "second start (scan cached)"):
            first_step = seconds_to_first_step(out, Path(tmp) / f"run_{attempt[0]}", meta.vocab_size)
            print(f"trainer launch to first training step, {attempt}: {first_step:.1f} s", flush=True)


if __name__ == "__main__":
    main()
