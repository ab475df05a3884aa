"""Turn text into the token memmaps the trainer reads: `train.bin`, `val.bin` and `meta.json`.

    python -m accel_train.prepare --input stories/ more.jsonl --out data/mine --tokenizer bpe
    python -m accel_train.prepare --dataset roneneldan/TinyStories --out data/tinystories --tokenizer gpt2

Documents come from text files (one document per file, or split on `--separator`), JSON Lines
files (one document per line, in `--text_field`) or a HuggingFace dataset (streamed). Each is
stripped of surrounding whitespace, skipped if empty, and followed by the end-of-text token.
The documents are cut into chunks that worker processes tokenize; at most a few chunks are in
flight at once and their tokens are appended to disk in order, so memory stays flat however
large the corpus. Each document goes to the validation split with probability `--val_fraction`,
drawn from `(seed, chunk)`: the same input gives the same files whatever the number of workers.
The output folder appears only when complete, and replaces an earlier one only with `--overwrite`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from accel_train.errors import UserError, run_cli
from accel_train.tokenizer import ByteTokenizer, Tokenizer, gpt2_tokenizer, hf_tokenizer, train_bpe

CHUNK_CHARS = 1 << 20  # text per worker job
READ_CHARS = 1 << 22  # text read at a time from a file split on a separator
JSONL_SUFFIXES = (".jsonl", ".ndjson")
BUILT_IN = ("gpt2", "byte", "bpe")  # --tokenizer names; anything else is a path


# ---- documents ----

def input_files(paths: list[str]) -> list[Path]:
    """The given files, and every non-hidden file under the given folders, in sorted order."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"input {p} does not exist")
    return files


def split_text(path: Path, separator: str) -> Iterator[str]:
    """The pieces of a text file between separators, read a block at a time."""
    with open(path, encoding="utf-8") as f:
        rest = ""
        for block in iter(lambda: f.read(READ_CHARS), ""):
            *pieces, rest = (rest + block).split(separator)
            yield from pieces
        yield rest


def jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[text_field]
            except (json.JSONDecodeError, TypeError, KeyError):
                text = None
            if not isinstance(text, str):
                raise UserError(f"{path} line {lineno}: expected a JSON object with a string field "
                                f"'{text_field}' (set --text_field)")
            yield text


def file_texts(path: Path, separator: str | None, text_field: str) -> Iterator[str]:
    try:
        if path.suffix in JSONL_SUFFIXES:
            yield from jsonl_texts(path, text_field)
        elif separator:
            yield from split_text(path, separator)
        else:
            yield path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason}); convert it or leave it out") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None


def dataset_texts(name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    """Texts of a HuggingFace dataset (a hub name or a local folder), streamed rather than cached whole."""
    try:
        import datasets
    except ImportError:
        raise UserError("--dataset needs the `datasets` library: pip install 'accel_train[prepare]'") from None
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # the hub client raises many types; all mean "cannot load it"
        raise UserError(f"cannot load dataset {name!r} (split {split!r}): {err}") from None
    for i, row in enumerate(rows):
        if text_field not in row:
            raise UserError(f"dataset {name!r} has no column '{text_field}' (it has: {', '.join(row)}); "
                            "set --text_field")
        if isinstance(row[text_field], str):  # a missing (None) text is an empty document
            yield row[text_field]
        elif row[text_field] is not None:
            raise UserError(f"dataset {name!r} row {i}: '{text_field}' is {type(row[text_field]).__name__}, not text")


def documents(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        text = text.strip()
        if text:
            yield text


def chunks(docs: Iterable[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[tuple[int, list[str]]]:
    """Numbered lists of consecutive documents of about `chunk_chars` characters each."""
    index, chunk, size = 0, [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if size >= chunk_chars:
            yield index, chunk
            index, chunk, size = index + 1, [], 0
    if chunk:
        yield index, chunk


# ---- tokenizing in parallel ----

class ChunkEncoder:
    """Tokenizes one chunk and deals its documents to the splits."""

    def __init__(self, tokenizer: Tokenizer, val_fraction: float, seed: int):
        self.tokenizer, self.val_fraction, self.seed = tokenizer, val_fraction, seed

    def __call__(self, job: tuple[int, list[str]]) -> dict:
        index, docs = job
        is_val = np.random.default_rng((self.seed, index)).random(len(docs)) < self.val_fraction
        out = {}
        for split, mask in (("train", ~is_val), ("val", is_val)):
            picked = [doc for doc, keep in zip(docs, mask) if keep]
            out[split] = (self.tokenizer.encode_documents(picked), len(picked),
                          sum(len(doc.encode("utf-8")) for doc in picked))
        out["bytes"] = out["train"][2] + out["val"][2]
        return out


_worker_encoder: ChunkEncoder | None = None


def _start_worker(encoder: ChunkEncoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(job):
    return _worker_encoder(job)


def encode_in_order(encoder: ChunkEncoder, jobs: Iterable, workers: int) -> Iterator[dict]:
    """`encoder` over `jobs`, in order, in `workers` processes with at most 2 x workers jobs in flight."""
    if workers == 1:
        yield from map(encoder, jobs)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
    # fork: workers inherit the tokenizer as loaded (no second download, no re-pickling per job)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_start_worker, initargs=(encoder,)) as pool:
        pending = deque()
        for job in jobs:
            pending.append(pool.submit(_encode_in_worker, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ---- writing ----

def token_dtype(vocab_size: int, requested: str = "auto") -> str:
    """uint16 where every id fits in it, else uint32; a requested dtype too small is an error."""
    fits16 = vocab_size <= 1 << 16
    if requested == "auto":
        return "uint16" if fits16 else "uint32"
    if requested == "uint16" and not fits16:
        raise UserError(f"a vocabulary of {vocab_size:,} tokens does not fit uint16 (at most 65,536); "
                        "use --dtype uint32 or auto")
    return requested


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite to replace it or choose another --out")


def publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished folder into place, replacing (then deleting) any earlier output."""
    old = out_dir.with_name(f".{out_dir.name}.old{os.getpid()}")
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    elif out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def write_dataset(out_dir, docs: Iterable[str], tokenizer: Tokenizer, *, source: dict, dtype: str = "auto",
                  val_fraction: float = 0.005, seed: int = 0, block_size: int = 128, workers: int = 1,
                  overwrite: bool = False, total_bytes: int | None = None) -> dict:
    """Tokenize `docs` into `out_dir`/{train.bin, val.bin, meta.json} (and the tokenizer's own file); returns the meta."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    dtype = token_dtype(tokenizer.vocab_size, dtype)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokens, counts, text_bytes = {"train": 0, "val": 0}, {"train": 0, "val": 0}, {"train": 0, "val": 0}
    try:
        tokenizer.save(tmp)
        with contextlib.ExitStack() as stack:
            files = {split: stack.enter_context(open(tmp / f"{split}.bin", "wb")) for split in tokens}
            bar = stack.enter_context(tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare",
                                           disable=None))
            encoder = ChunkEncoder(tokenizer, val_fraction, seed)
            for result in encode_in_order(encoder, chunks(docs), workers):
                for split in tokens:
                    ids, n_docs, n_bytes = result[split]
                    files[split].write(ids.astype(dtype).tobytes())
                    tokens[split] += len(ids)
                    counts[split] += n_docs
                    text_bytes[split] += n_bytes
                bar.update(result["bytes"])
                bar.set_postfix(tokens=f"{sum(tokens.values()):,}")
        if not sum(counts.values()):
            raise UserError(f"no documents in {describe(source)}: the input is empty")
        for split, n in tokens.items():
            if n <= block_size:
                raise UserError(f"the {split} split holds {n:,} tokens, fewer than one block of {block_size + 1}; "
                                "use more data, a larger --val_fraction or a smaller --block_size")
        meta = {"dtype": dtype, "vocab_size": tokenizer.vocab_size, "tokenizer": tokenizer.name,
                "eot_token": tokenizer.eot_token, "tokens": tokens, "documents": counts, "bytes": text_bytes,
                "source": source,
                "val_fraction": val_fraction, "seed": seed}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        check_out_dir(out_dir, overwrite)  # nothing appeared there meanwhile
        publish(tmp, out_dir)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def describe(source: dict) -> str:
    if "dataset" in source:
        return f"dataset {source['dataset']}"
    return ", ".join(source.get("inputs", [])) or "the input"


# ---- command line ----

class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = Parser(prog="python -m accel_train.prepare", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="text or .jsonl files, or folders of them")
    src.add_argument("--dataset", metavar="NAME", help="a HuggingFace dataset: hub name or local folder")
    p.add_argument("--dataset_config", default=None, help="the dataset's configuration name, if it has several")
    p.add_argument("--dataset_split", default="train", help="which split of the dataset to read (default: train)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--tokenizer", default="gpt2", metavar="NAME_OR_PATH",
                   help="gpt2, byte, bpe, or a HuggingFace tokenizer.json or folder holding one (a downloaded model)")
    p.add_argument("--eot_token", default=None, metavar="TOKEN",
                   help="end-of-text token of a --tokenizer PATH (default: its eos_token)")
    p.add_argument("--vocab_size", type=int, default=8192, help="tokens of the BPE trained for --tokenizer bpe")
    p.add_argument("--separator", default=None,
                   help="split text files into documents on this string (e.g. '<|endoftext|>'); default: one per file")
    p.add_argument("--text_field", default="text", help="field holding the text in JSON Lines and datasets")
    p.add_argument("--val_fraction", type=float, default=0.005, help="share of documents for val.bin")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--block_size", type=int, default=128, help="each split must hold more tokens than this")
    p.add_argument("--dtype", choices=("auto", "uint16", "uint32"), default="auto")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="tokenizing processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = p.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val_fraction must lie between 0 and 1, got {args.val_fraction}")
    if args.workers < 1 or args.block_size < 1:
        raise UserError("--workers and --block_size must be at least 1")
    if args.tokenizer == "bpe" and not 257 <= args.vocab_size:
        raise UserError(f"--vocab_size must be at least 257 (256 bytes and end-of-text), got {args.vocab_size}")
    if args.separator == "":
        raise UserError("--separator must not be empty")
    if args.eot_token is not None and args.tokenizer in BUILT_IN:
        raise UserError(f"--eot_token is for a --tokenizer PATH; {args.tokenizer}'s end-of-text token is fixed")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.out)
    check_out_dir(out_dir, args.overwrite)  # fail before any slow work
    if args.dataset:
        source = {"dataset": args.dataset, "config": args.dataset_config, "split": args.dataset_split}

        def texts():
            return dataset_texts(args.dataset, args.dataset_config, args.dataset_split, args.text_field)
        total_bytes = None
    else:
        files = input_files(args.input)
        source = {"inputs": list(args.input), "files": len(files)}

        def texts():
            return (text for f in files for text in file_texts(f, args.separator, args.text_field))
        plain = [f for f in files if f.suffix not in JSONL_SUFFIXES]
        total_bytes = sum(f.stat().st_size for f in plain) if len(plain) == len(files) else None

    if args.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    elif args.tokenizer == "gpt2":
        tokenizer = gpt2_tokenizer()
    elif args.tokenizer not in BUILT_IN:
        tokenizer = hf_tokenizer(args.tokenizer, args.eot_token)
    else:
        token_dtype(args.vocab_size, args.dtype)  # fail before training
        print(f"training a {args.vocab_size}-token BPE ...", file=sys.stderr)
        tokenizer = train_bpe(documents(texts()), args.vocab_size)
    meta = write_dataset(out_dir, documents(texts()), tokenizer, source=source, dtype=args.dtype,
                         val_fraction=args.val_fraction, seed=args.seed, block_size=args.block_size,
                         workers=args.workers, overwrite=args.overwrite, total_bytes=total_bytes)
    print(f"wrote {out_dir}: {meta['tokens']['train']:,} train and {meta['tokens']['val']:,} val tokens "
          f"({meta['dtype']}, {meta['tokenizer']} vocabulary of {meta['vocab_size']:,})")
    return meta


if __name__ == "__main__":
    run_cli(main)
