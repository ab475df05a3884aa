"""Write a prepared data folder from documents: tokenize them in worker processes, in order, into each split's
shards (data/shards.py), then meta.json and the tokenizer's files, published whole (atomic.staged_folder). What
`python -m accel_train.prepare` and the demo corpus both use; see prepare.py for the documents' treatment.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import signal
import socket
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm.auto import tqdm

from accel_train.atomic import alive, staged_folder, staging_prefix
from accel_train.data.chat import TEMPLATE_FILE, ChatEncoder, fingerprint
from accel_train.data.meta import SPLITS, dataset_meta, write_meta
from accel_train.data.shards import (DEFAULT_SHARD_TOKENS, MASK_SUFFIX, PROGRESS_FILE, ShardFiles, resume_point,
                                     save_progress)
from accel_train.data.tokenizer import Tokenizer
from accel_train.errors import UserError
from accel_train.numerals import whole_number
from accel_train.stopping import SIGNALS, signals_held

CHUNK_CHARS = 1 << 20  # text per worker job
PR_SET_PDEATHSIG = 1  # linux/prctl.h
SPLIT_FILE = re.compile(r"(train|val)(_\d{5})?\.bin")  # what prepare writes a split into


def documents(texts: Iterable[str]) -> Iterator[str]:
    """The texts stripped of surrounding whitespace, the empty ones left out."""
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
    """Tokenizes one chunk and deals its documents to the splits: texts, or with `chat` conversations (then each
    split also gets its loss mask, and its bytes are the assistant's)."""

    def __init__(self, tokenizer: Tokenizer, val_fraction: float, seed: int, chat: ChatEncoder | None = None,
                 block_size: int = 128):
        self.tokenizer, self.val_fraction, self.seed = tokenizer, val_fraction, seed
        self.chat, self.block_size = chat, block_size

    def __call__(self, job: tuple[int, list]) -> dict:
        index, docs = job
        is_val = np.random.default_rng((self.seed, index)).random(len(docs)) < self.val_fraction
        out = {}
        for split, mask in (("train", ~is_val), ("val", is_val)):
            picked = [doc for doc, keep in zip(docs, mask) if keep]
            out[split] = self._encode(picked)
        out["bytes"] = out["train"][2] + out["val"][2]
        return out

    def _encode(self, docs: list) -> tuple:
        """(ids, documents, bytes) of texts; (ids, conversations, the assistant's bytes, trained mask) of
        conversations."""
        if self.chat is None:
            return self.tokenizer.encode_documents(docs), len(docs), sum(len(doc.encode("utf-8")) for doc in docs)
        encoded = [self.chat.encode(conversation, self.block_size) for conversation in docs]
        ids, masks = zip(*encoded) if encoded else ((), ())
        return (np.concatenate([np.zeros(0, np.uint32), *ids]), len(docs),
                sum(conversation.assistant_bytes() for conversation in docs),
                np.concatenate([np.zeros(0, np.uint8), *masks]))


class Worker:
    """What a tokenizing worker process holds: the encoder it was forked with, set once as it starts (`start`), so
    that a job carries its documents alone, not the tokenizer."""
    encoder: ChunkEncoder | None = None

    @staticmethod
    def start(encoder: ChunkEncoder, parent: int) -> None:
        """Set a worker up. Its parent alone answers signals and ends its workers, so a worker ignores SIGINT and
        SIGTERM (Ctrl-C, or a `kill` of the process group, signals every worker too: one that died while it sent a
        result would hang the pool); on Linux the kernel ends a worker whose parent was killed outright. The worker
        was forked with signals held, so none reaches the parent's handlers it inherited."""
        Worker.encoder = encoder
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        if sys.platform == "linux":
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    @staticmethod
    def encode(job):
        return Worker.encoder(job)


def encode_in_order(encoder: ChunkEncoder, jobs: Iterable, workers: int) -> Iterator[dict]:
    """`encoder` over `jobs`, in order, in `workers` processes with at most 2 x workers jobs in flight.

    Close it when stopping early: the jobs not yet started are dropped, and the workers end after the one each
    holds. (Terminating a worker while it sends a result would hang the pool.)
    """
    if workers == 1:
        for job in jobs:
            with signals_held():  # threads the tokenizer starts (its thread pool) are born deaf to the signals
                result = encoder(job)
            yield result
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
    # fork: workers inherit the tokenizer as loaded (no second download, no re-pickling per job)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=Worker.start,
                               initargs=(encoder, os.getpid()))
    try:
        pending = deque()
        for job in jobs:
            with signals_held():  # the first submit forks the workers and starts the pool's threads
                pending.append(pool.submit(Worker.encode, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


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


def adopt_unfinished(out_dir: Path, staging: Path) -> bool:
    """Take over, as `staging`, the newest staging folder of a prepare on this machine that was killed after it
    finished a shard (it holds a progress record); True where there was one."""
    prefix = f"{staging_prefix(out_dir)}{socket.gethostname()}-"
    def killed(path: Path) -> bool:
        pid = whole_number(path.name[len(prefix):]) if path.name.startswith(prefix) else None
        return pid is not None and (path == staging or not alive(pid))
    candidates = [path for where in (out_dir.parent, out_dir) if where.is_dir() for path in where.iterdir()
                  if killed(path) and (path / PROGRESS_FILE).is_file()]
    if not candidates:
        return False
    newest = max(candidates, key=lambda path: (path / PROGRESS_FILE).stat().st_mtime_ns)
    if newest != staging:
        os.replace(newest, staging)
    return True


def write_dataset(out_dir, docs: Iterable[str], tokenizer: Tokenizer, *, source: dict, dtype: str = "auto",
                  val_fraction: float = 0.005, seed: int = 0, block_size: int = 128, workers: int = 1,
                  overwrite: bool = False, exists_hint: str = "choose another folder",
                  total_bytes: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                  input_identity: list | None = None, chat: ChatEncoder | None = None) -> dict:
    """Tokenize `docs` into `out_dir`: each split's shards (see data/shards.py), meta.json and the tokenizer's own
    file; returns the meta. `input_identity` tells this input from another where `source` cannot (file sizes
    and times), so that only a rerun on the same input resumes a killed one. With `chat`, `docs` are
    Conversations: a loss mask is written beside each shard, and the chat template beside meta.json.

    With `overwrite`, those files replace earlier ones of the same names; out_dir's other files stay.
    """
    out_dir = Path(out_dir).resolve()
    dtype = token_dtype(tokenizer.vocab_size, dtype)
    settings = {"source": source, "input": input_identity, "dtype": dtype, "val_fraction": val_fraction, "seed": seed,
                "shard_tokens": shard_tokens, "chunk_chars": CHUNK_CHARS, "tokenizer": tokenizer.fingerprint(),
                "chat": chat and fingerprint(chat.template)}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    with staged_folder(out_dir, overwrite, exists_hint, last="meta.json", held=signals_held,
                       adopt=adopt_unfinished, obsolete=SPLIT_FILE.fullmatch) as tmp:
        try:
            tokenizer.save(tmp)
        except Exception as err:  # `tokenizers` reports a failed write as a bare Exception
            raise OSError(str(err)) from None
        cursor, shards = resume_point(tmp, key, np.dtype(dtype).itemsize)
        files = {split: ShardFiles(tmp, split, dtype, shard_tokens, shards[split]) for split in SPLITS}
        counts = {count: dict(cursor[count]) for count in ("tokens", "documents", "bytes")}
        masks = {}
        if chat is not None:  # no progress record is written, so a killed run starts over (cursor at 0)
            masks = {split: ShardFiles(tmp, split, "uint8", shard_tokens, suffix=MASK_SUFFIX) for split in SPLITS}
            counts["trained_tokens"] = dict.fromkeys(SPLITS, 0)
            (tmp / TEMPLATE_FILE).write_text(chat.template, encoding="utf-8")
        with contextlib.ExitStack() as stack:
            for f in [*files.values(), *masks.values()]:
                stack.callback(f.abandon)
            with signals_held():  # tqdm starts a monitor thread, which must not take them
                bar = stack.enter_context(tqdm(total=total_bytes, initial=sum(counts["bytes"].values()), unit="B",
                                               unit_scale=True, desc="prepare", disable=None))
            encoder = ChunkEncoder(tokenizer, val_fraction, seed, chat, block_size)
            jobs = itertools.islice(chunks(docs), cursor["chunk"], None)
            results = stack.enter_context(contextlib.closing(encode_in_order(encoder, jobs, workers)))
            for index, result in enumerate(results, cursor["chunk"]):
                finished_shard = [files[split].write(result[split][0]) for split in SPLITS]  # every split written
                for split, f in masks.items():
                    f.write(result[split][3])
                add_counts(counts, result)
                if any(finished_shard) and not masks:
                    save_progress(tmp, key, files, {"chunk": index + 1, **counts})
                bar.update(result["bytes"])
                bar.set_postfix(tokens=f"{sum(counts['tokens'].values()):,}")
            shards = {split: f.close() for split, f in files.items()}
            masks = {split: f.close() for split, f in masks.items()} or None
        (tmp / PROGRESS_FILE).unlink(missing_ok=True)
        check_splits(counts, source, block_size)
        meta = dataset_meta(tokenizer, dtype, shards, {key: counts[key] for key in counts if key != "tokens"}, masks,
                            chat and fingerprint(chat.template), source=source, val_fraction=val_fraction,
                            seed=seed, shard_tokens=shard_tokens)
        write_meta(tmp, meta)
    return meta


def add_counts(counts: dict, result: dict) -> None:
    """Add a chunk's tokens, documents, text bytes (and tokens trained on) to each split's counts."""
    for split in SPLITS:
        ids, n_docs, n_bytes, *mask = result[split]
        counts["tokens"][split] += len(ids)
        counts["documents"][split] += n_docs
        counts["bytes"][split] += n_bytes
        if mask:
            counts["trained_tokens"][split] += int(mask[0].sum())


def check_splits(counts: dict, source: dict, block_size: int) -> None:
    """Refuse a split shorter than one block, naming the remedies that can lengthen it: each document goes whole
    to one split (val with probability --val_fraction), so a fraction moves documents between the splits, but for
    a single document only splitting it into several can fill both."""
    documents = counts["documents"]
    if not sum(documents.values()):
        raise UserError(f"no documents in {describe(source)}: the input is empty")
    for split, n in counts["tokens"].items():
        if n > block_size:
            continue
        if sum(documents.values()) == 1:
            remedies = ["split the input into documents (--separator for text files; JSON Lines hold one per line)",
                        "use more data"]
        else:
            remedies = ["use more data", f"a {'smaller' if split == 'train' else 'larger'} --val_fraction"]
            remedies += ["a smaller --block_size"] if n else []  # no block size fits in nothing
        raise UserError(f"the {split} split holds {n:,} tokens ({documents[split]:,} of the input's "
                        f"{sum(documents.values()):,} documents), fewer than one block of {block_size + 1}; "
                        f"{', '.join(remedies[:-1])} or {remedies[-1]}")


def describe(source: dict) -> str:
    if "dataset" in source:
        return f"dataset {source['dataset']}"
    return ", ".join(source.get("inputs", [])) or "the input"
