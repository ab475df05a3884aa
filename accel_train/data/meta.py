"""`meta.json`, the description of a prepared data folder: the one place that reads and writes it.

The schema (every key but dtype and vocab_size may be missing in data prepared by older versions):

    dtype        "uint16" or "uint32": how the token files store ids
    vocab_size   1 + the largest id a token file may hold
    tokenizer    "byte", "gpt2", "bpe" or "hf" (see tokenizer.load_tokenizer)
    tokenizer_fingerprint  a SHA-256 of the tokenizer's vocabulary, merges and special tokens
                 (tokenizer.Tokenizer.fingerprint): what the ids mean, where the name alone says too little
    eot_token    the end-of-text id that ends every document
    bos_token    the id that starts every document, or null where the tokenizer defines none
    shards       {"train": [{"file": "train.bin", "tokens": N}, ...], "val": [...]}: each split is the
                 concatenation of its shard files, in this order (files lie in the folder itself)
    tokens       {"train": N, "val": N}: tokens per split (the sum of its shards)
    documents    {"train": N, "val": N}: documents per split
    bytes        {"train": N, "val": N}: UTF-8 bytes of text per split (turns loss into bits per byte)
    source, val_fraction, seed, shard_tokens: how prepare made it, for people reading the file

Conversations (prepare --chat) add:
    loss_mask    {"train": ["train.mask", ...], "val": [...]}: beside each shard, one uint8 per token, 1 where
                 the token is trained on as a target (the assistant's), 0 where it is not; a folder without it
                 trains on every token
    trained_tokens  {"train": N, "val": N}: tokens trained on per split (the mask's ones)
    chat_template_fingerprint  the SHA-256 of the folder's chat_template.jinja (data/chat.py)
    (bytes then counts the UTF-8 bytes of the assistant's content alone: see tokens_per_byte)

A folder without meta.json is the seed's data: uint16 ids of GPT-2's vocabulary in train.bin and val.bin.

Readers get a `DataMeta`, never the JSON object: each key is spelled once, here, so a misspelt key is an
AttributeError in the first test rather than a silent None (scoring once read "bos" for "bos_token").
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from accel_train.errors import UserError

META_FILE = "meta.json"
OPTIONAL = ("shards", "loss_mask", "trained_tokens", "chat_template_fingerprint")  # written only where they apply
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
GPT2_VOCAB_SIZE = 50257
SPLITS = ("train", "val")
COUNTS = ("tokens", "documents", "bytes", "trained_tokens")  # per split; a count may be null where it was not kept
TOKEN_MEANING = ("tokenizer", "vocab_size", "eot_token", "bos_token", "tokenizer_fingerprint",
                 "chat_template_fingerprint")  # what ids mean
FINGERPRINTS = ("tokenizer_fingerprint", "chat_template_fingerprint")  # compared only where both sides have one


@dataclass(frozen=True)
class DataMeta:
    """A data folder's checked meta.json (see the module's docstring); `found` is False for the seed's data."""
    dtype: str
    vocab_size: int
    tokenizer: str | None = None
    eot_token: int | None = None
    bos_token: int | None = None
    tokenizer_fingerprint: str | None = None
    tokens: dict = field(default_factory=dict)
    documents: dict = field(default_factory=dict)
    bytes: dict = field(default_factory=dict)
    shards: dict | None = None
    loss_mask: dict | None = None
    trained_tokens: dict = field(default_factory=dict)
    chat_template_fingerprint: str | None = None
    how: dict = field(default_factory=dict)  # source, val_fraction, seed, ...: for people reading the file
    found: bool = True

    @classmethod
    def of_json(cls, meta: dict) -> "DataMeta":
        known = {key: meta[key] for key in cls.__dataclass_fields__ if key in meta and key not in ("how", "found")}
        return cls(**known, how={key: value for key, value in meta.items() if key not in cls.__dataclass_fields__})

    def to_json(self) -> dict:
        meta = {key: value for key, value in asdict(self).items()
                if key not in ("how", "found") and not (key in OPTIONAL and not value)}
        return {**meta, **self.how}

    def meaning(self) -> dict:
        """What the token ids mean: two folders (or a folder and a checkpoint's data) agree on all of it or their
        ids are not interchangeable. See `meaning_differences`."""
        return {key: getattr(self, key) for key in TOKEN_MEANING}

    def tokens_per_byte(self, split: str) -> float | None:
        """Tokens per UTF-8 byte of text in `split`; None for data prepared before prepare counted bytes. For
        conversations, the tokens trained on per byte of the assistant's content: the loss is theirs alone (the
        end-of-turn tokens among them have no bytes of their own)."""
        tokens = (self.trained_tokens if self.loss_mask else self.tokens).get(split)
        text_bytes = self.bytes.get(split)
        return tokens / text_bytes if tokens and text_bytes else None


def meaning_differences(was: dict, now: dict) -> list[str]:
    """`key is A there, B here` for each way the token meanings `was` and `now` (DataMeta.meaning) differ. Data
    prepared before fingerprints has none: its fingerprint is compared only where both sides have one, and the
    rest of what it records (tokenizer name, vocabulary size, end-of-text and BOS ids) always."""
    return [f"{key} is {was.get(key)} there, {now.get(key)} here" for key in TOKEN_MEANING
            if was.get(key) != now.get(key)
            and not (key in FINGERPRINTS and None in (was.get(key), now.get(key)))]


def read_meta(data_dir) -> DataMeta:
    """`meta.json` of a data folder, its fields checked before anything relies on them; a folder without one
    is taken as the seed's uint16 GPT-2 data."""
    path = Path(data_dir) / META_FILE
    if not path.exists():
        warnings.warn(f"{path} not found: assuming uint16 tokens of the GPT-2 vocabulary", stacklevel=2)
        return DataMeta("uint16", GPT2_VOCAB_SIZE, tokenizer="gpt2", found=False)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: malformed JSON or not UTF-8
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a JSON object, not a {type(meta).__name__}")
    if not isinstance(meta.get("dtype"), str) or meta["dtype"] not in DTYPES:
        raise UserError(f"{path}: 'dtype' must be one of {', '.join(DTYPES)}, got {meta.get('dtype')!r:.60}")
    if not is_count(meta.get("vocab_size")) or meta["vocab_size"] < 1:
        raise UserError(f"{path}: 'vocab_size' must be a positive integer, got {meta.get('vocab_size')!r:.60}")
    for key in ("eot_token", "bos_token"):
        if meta.get(key) is not None and not (is_count(meta[key]) and meta[key] < meta["vocab_size"]):
            raise UserError(f"{path}: '{key}' must be a token id below vocab_size, got {meta[key]!r:.60}")
    for key in ("tokenizer", *FINGERPRINTS):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise UserError(f"{path}: '{key}' must be a string, got {meta[key]!r:.60}")
    for key in COUNTS:
        counts = meta.get(key, {})
        if not isinstance(counts, dict) or not all(n is None or is_count(n) for n in counts.values()):
            raise UserError(f"{path}: '{key}' must map each split to its count (or null), got {counts!r:.60}")
    if "shards" in meta:
        _check_shards(path, meta["shards"])
    if meta.get("loss_mask") is not None:
        _check_loss_mask(path, meta)
    return DataMeta.of_json(meta)


def _check_shards(path: Path, shards) -> None:
    """Each split lists at least one shard, a file name in the folder with its token count."""
    def is_shard(entry) -> bool:
        return (isinstance(entry, dict) and isinstance(entry.get("file"), str) and is_count(entry.get("tokens"))
                and entry["file"] not in ("", ".", "..") and os.sep not in entry["file"] and "/" not in entry["file"])
    if not isinstance(shards, dict) or set(shards) != set(SPLITS) or not all(
            isinstance(listed, list) and listed and all(map(is_shard, listed)) for listed in shards.values()):
        raise UserError(f"{path}: 'shards' must map 'train' and 'val' each to a list of "
                        f"{{\"file\": name, \"tokens\": count}}, got {shards!r:.80}")


def _check_loss_mask(path: Path, meta: dict) -> None:
    """One mask file beside each listed shard."""
    masks, shards = meta["loss_mask"], meta.get("shards")
    if not (isinstance(shards, dict) and isinstance(masks, dict) and set(masks) == set(SPLITS) and all(
            isinstance(masks[split], list) and len(masks[split]) == len(shards[split])
            and all(isinstance(name, str) and name and os.sep not in name and "/" not in name
                    for name in masks[split]) for split in SPLITS)):
        raise UserError(f"{path}: 'loss_mask' must map 'train' and 'val' each to a list of file names, one per "
                        f"shard, got {masks!r:.80}")


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def listed_masks(meta: DataMeta, split: str) -> list[tuple[str, int]] | None:
    """(file name, token count) of each loss-mask file of `split`, or None where the folder has no mask."""
    if meta.loss_mask is None:
        return None
    return [(name, tokens) for name, (_, tokens) in zip(meta.loss_mask[split], listed_shards(meta, split))]


def listed_shards(meta: DataMeta, split: str) -> list[tuple[str, int]] | None:
    """(file name, token count) of each shard of `split` in order, or None where meta.json lists none (data
    prepared before shards: one file per split)."""
    if meta.shards is None:
        return None
    return [(entry["file"], entry["tokens"]) for entry in meta.shards[split]]


def write_meta(folder, meta: DataMeta) -> None:
    """Write `meta` as `folder`/meta.json (a staging folder's: prepare publishes it last, as it describes the rest)."""
    (Path(folder) / META_FILE).write_text(json.dumps(meta.to_json(), indent=1) + "\n")


def dataset_meta(tokenizer, dtype: str, shards: dict, counts: dict, masks: dict | None = None,
                 chat_template_fingerprint: str | None = None, **how) -> DataMeta:
    """The meta.json of a prepared folder: its tokenizer's ids, its `shards` ({split: [(file, tokens), ...]}),
    `counts` ({"documents": {split: n}, "bytes": {split: n}}, and "trained_tokens" for conversations), the
    conversations' loss `masks` ({split: [(file, tokens), ...]}) and template, and `how` it was made."""
    return DataMeta(dtype, tokenizer.vocab_size, tokenizer=tokenizer.name, eot_token=tokenizer.eot_token,
                    bos_token=tokenizer.bos_token, tokenizer_fingerprint=tokenizer.fingerprint(),
                    tokens={split: sum(n for _, n in listed) for split, listed in shards.items()},
                    documents=counts["documents"], bytes=counts["bytes"],
                    shards={split: [{"file": name, "tokens": n} for name, n in listed]
                            for split, listed in shards.items()},
                    loss_mask=masks and {split: [name for name, _ in listed] for split, listed in masks.items()},
                    trained_tokens=counts.get("trained_tokens", {}),
                    chat_template_fingerprint=chat_template_fingerprint, how=how)
