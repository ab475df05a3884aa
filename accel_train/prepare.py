"""Turn text into the token memmaps the trainer reads: each split's shards and `meta.json`.

    python -m accel_train.prepare --input stories/ more.jsonl --out data/mine --tokenizer bpe
    python -m accel_train.prepare --dataset roneneldan/TinyStories --out data/tinystories --tokenizer gpt2
    python -m accel_train.prepare --chat --input chats.jsonl --out data/chats --tokenizer byte --block_size 512

Documents come from text files (one document per file, or split on `--separator`), JSON Lines
files (one document per line, in `--text_field`) or a HuggingFace dataset (streamed). Each is
stripped of surrounding whitespace, skipped if empty, preceded by the tokenizer's beginning-of-sequence
token where it has one (Gemma's <bos>) and followed by the end-of-text token. The documents are cut into
chunks that worker processes tokenize; at most a few chunks are in flight at once and their tokens are
appended in order to shard files of `--shard_tokens` tokens (`train_00000.bin`, ...; a split of one shard
is `train.bin`), so memory stays flat and no file grows huge however large the corpus. Each document goes
to the validation split with probability `--val_fraction`, drawn from `(seed, chunk)`: the same input
gives the same files whatever the number of workers. The output folder appears only when complete. With
`--overwrite` its files replace earlier ones of the same names in an existing folder, whose other files
stay; an `--out` that overlaps an input is refused.
With `--chat` the inputs are JSON Lines of conversations (`{"messages": [...]}`): each conversation is a
document rendered with the chat template, and a loss mask beside each shard says which tokens are trained on
(data/chat.py); a killed `--chat` prepare starts over rather than resumes.
SIGINT or SIGTERM stops prepare (status 130 or 143) with its workers ended and its staging folder
removed. A prepare killed outright (SIGKILL, a crash) leaves its staging folder: the next prepare into
the same `--out` with the same arguments and inputs resumes it, keeping its finished shards (see data/shards.py),
and one with other arguments says that it starts over.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

from accel_train.stopping import exit_at_once_on_signals, ignore_signals, stopping_on_signals, threads_born_deaf

if __name__ == "__main__":
    exit_at_once_on_signals()
with threads_born_deaf():  # before numpy starts its BLAS threads, which must leave the signals to the main thread
    from accel_train.atomic import check_out_dir
    from accel_train.data.chat import ChatEncoder, read_conversations, source_template
    from accel_train.data.dataset import documents, token_dtype, write_dataset
    from accel_train.data.shards import DEFAULT_SHARD_TOKENS
    from accel_train.data.tokenizer import ByteTokenizer, gpt2_tokenizer, hf_tokenizer, train_bpe
    from accel_train.errors import Parser, UserError, first_line, number, run_cli

READ_CHARS = 1 << 22  # text read at a time from a file split on a separator
JSONL_SUFFIXES = (".jsonl", ".ndjson")
BUILT_IN = ("gpt2", "byte", "bpe")  # --tokenizer names; anything else is a path


# ---- documents ----

def input_files(paths: list[str]) -> list[Path]:
    """The given files (a pipe such as /dev/stdin too), and every non-hidden file under the given folders, in
    sorted order."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file()
                            and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
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


def file_conversations(path: Path):
    """The conversations of a JSON Lines file, one line each."""
    try:
        yield from read_conversations(path)
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
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its failures come back as exceptions, told in one line
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # the hub client raises many types; all mean "cannot load it"
        raise UserError(f"cannot load dataset {name!r} (split {split!r}): {first_line(err)}") from None
    for i, row in enumerate(read_rows(rows, name)):
        if text_field not in row:
            raise UserError(f"dataset {name!r} has no column '{text_field}' (it has: {', '.join(row)}); "
                            "set --text_field")
        if isinstance(row[text_field], str):  # a missing (None) text is an empty document
            yield row[text_field]
        elif row[text_field] is not None:
            raise UserError(f"dataset {name!r} row {i}: '{text_field}' is {type(row[text_field]).__name__}, not text")


def read_rows(rows: Iterable[dict], name: str) -> Iterator[dict]:
    """A streamed dataset's rows; a failed read (a malformed file, the network) is a UserError, not a traceback."""
    try:
        yield from rows
    except Exception as err:  # the readers raise many types
        raise UserError(f"cannot read dataset {name!r}: {first_line(err)}") from None


# ---- command line ----

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
    p.add_argument("--vocab_size", type=number(int, 257, 2**32), default=8192,
                   help="tokens of the BPE trained for --tokenizer bpe (at least 256 bytes and end-of-text)")
    p.add_argument("--separator", default=None,
                   help="split text files into documents on this string (e.g. '<|endoftext|>'); default: one per file")
    p.add_argument("--chat", action="store_true",
                   help="the inputs are JSON Lines of conversations ({\"messages\": [...]}): train on the assistant's "
                        "tokens alone (see docs/fine-tuning.md)")
    p.add_argument("--text_field", default="text", help="field holding the text in JSON Lines and datasets")
    p.add_argument("--val_fraction", type=number(float, 0, 1, open_ends=True), default=0.005,
                   help="share of documents for val.bin")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the train/val split")
    p.add_argument("--block_size", type=number(int, 1), default=128, help="each split must hold more tokens than this")
    p.add_argument("--dtype", choices=("auto", "uint16", "uint32"), default="auto")
    p.add_argument("--shard_tokens", type=number(int, 1), default=DEFAULT_SHARD_TOKENS,
                   help="tokens per shard file of a split (200 MB of uint16 by default): a large corpus needs no "
                        "single huge file, and a killed prepare run again redoes only its unfinished shards")
    p.add_argument("--workers", type=number(int, 1), default=len(os.sched_getaffinity(0)), help="tokenizing processes")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a folder that holds files, replacing only those prepare writes")
    args = p.parse_args(argv)
    if args.separator == "":
        raise UserError("--separator must not be empty")
    if args.chat and args.dataset:
        raise UserError("--chat reads conversations from --input JSON Lines files, not from --dataset")
    if args.eot_token is not None and args.tokenizer in BUILT_IN:
        raise UserError(f"--eot_token is for a --tokenizer PATH; {args.tokenizer}'s end-of-text token is fixed")
    return args


OVERWRITE_HINT = ("pass --overwrite to replace the files prepare writes (the splits' .bin files, meta.json, "
                  "tokenizer.json and tokenizer_config.json; the others stay) or choose another --out")


def check_apart(out_dir: Path, inputs: list[Path]) -> None:
    """Refuse an --out that is the current folder or holds it, or that is, holds or lies inside an input (symlinks
    followed): writing there could replace an input, or feed prepare's output to its next run."""
    cwd = Path.cwd().resolve()
    if out_dir == cwd or out_dir in cwd.parents:
        raise UserError(f"--out {out_dir} is the current folder or holds it; give the data a folder of its own")
    for path in inputs:
        real = path.resolve()
        if real == out_dir or out_dir in real.parents or real in out_dir.parents:
            raise UserError(f"--out {out_dir} overlaps the input {path} (one is or holds the other); "
                            "choose an --out apart from the inputs")


def main(argv: list[str] | None = None) -> dict:
    with stopping_on_signals():
        args = parse_args(sys.argv[1:] if argv is None else argv)
        meta = prepare(args)
        print(f"wrote {args.out}: {meta.tokens['train']:,} train and {meta.tokens['val']:,} val tokens "
              f"({meta.dtype}, {meta.tokenizer} vocabulary of {meta.vocab_size:,})")
    return meta


def file_identity(path: Path) -> list:
    """What tells an input file from an edited one without reading it: its path, size and modification time (a
    pipe has only its path)."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns] if path.is_file() else [str(path)]


def prepare(args: argparse.Namespace) -> dict:
    """What the command line asks for: check it, read the inputs, tokenize them into --out; returns the meta."""
    out_dir = Path(args.out).resolve()
    if args.dataset:
        source = {"dataset": args.dataset, "config": args.dataset_config, "split": args.dataset_split}
        inputs = [Path(args.dataset)] if Path(args.dataset).exists() else []  # a local folder, not a hub name

        def texts():
            return dataset_texts(args.dataset, args.dataset_config, args.dataset_split, args.text_field)
        total_bytes, input_identity = None, {"text_field": args.text_field}
    else:
        files = input_files(args.input)
        input_identity = {"files": list(map(file_identity, files)), "separator": args.separator,
                          "text_field": args.text_field}
        source = {"inputs": list(args.input), "files": len(files)}
        inputs = [*map(Path, args.input), *files]

        def texts():
            if args.chat:  # what a BPE is trained on: the messages' text
                return (message["content"] for c in conversations() for message in c.messages)
            return (text for f in files for text in file_texts(f, args.separator, args.text_field))

        def conversations():
            return (c for f in files for c in file_conversations(f))
        plain = [f for f in files if f.is_file() and f.suffix not in JSONL_SUFFIXES]
        total_bytes = sum(f.stat().st_size for f in plain) if len(plain) == len(files) else None
        if args.tokenizer == "bpe" and not all(f.is_file() for f in files):
            raise UserError("--tokenizer bpe reads the input twice (to train, then to encode) and a pipe can be read "
                            "once; save it to a file first")
    check_apart(out_dir, inputs)
    check_out_dir(out_dir, args.overwrite, OVERWRITE_HINT)  # fail before any slow work
    if args.tokenizer == "byte":
        tokenizer = ByteTokenizer()
    elif args.tokenizer == "gpt2":
        tokenizer = gpt2_tokenizer()
    elif args.tokenizer not in BUILT_IN:
        tokenizer = hf_tokenizer(args.tokenizer, args.eot_token)
    else:
        token_dtype(args.vocab_size, args.dtype)  # fail before training
        print(f"training a {args.vocab_size}-token BPE ...", flush=True)  # stderr is for errors
        tokenizer = train_bpe(documents(texts()), args.vocab_size)
    chat = ChatEncoder(tokenizer, source_template(tokenizer, args.tokenizer)) if args.chat else None
    return write_dataset(out_dir, conversations() if chat else documents(texts()), tokenizer, source=source,
                         dtype=args.dtype, val_fraction=args.val_fraction, seed=args.seed, block_size=args.block_size,
                         workers=args.workers, overwrite=args.overwrite, exists_hint=OVERWRITE_HINT,
                         total_bytes=None if chat else total_bytes, shard_tokens=args.shard_tokens,
                         input_identity=input_identity, chat=chat)


def command() -> None:
    """The command line (`python -m accel_train.prepare`, `accel-prepare`)."""
    run_cli(main)
    ignore_signals()


if __name__ == "__main__":
    command()
