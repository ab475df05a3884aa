"""Tokenizers that turn text into the token ids of a data folder, and back.

A data folder's `meta.json` names its tokenizer ("byte", "gpt2" or "bpe"); `load_tokenizer`
gives the matching one, so sampling decodes with exactly what preparation encoded. All three
share one contract: `encode(text)` never adds the end-of-text token (preparation appends it
after each document) and `decode(ids)` never raises: end-of-text reads as `<|endoftext|>`, ids
outside the vocabulary (a model's padded vocabulary can sample them) and invalid UTF-8 as U+FFFD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from accel_train.errors import UserError

EOT_TEXT = "<|endoftext|>"
BPE_FILE = "tokenizer.json"  # a trained BPE, saved beside the data it encoded


class Tokenizer:
    name: str
    vocab_size: int
    eot_token: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def save(self, data_dir: Path) -> None:
        """Write what `load_tokenizer` needs besides meta.json into a data folder (most need nothing)."""

    def _decode_run(self, ids: list[int]) -> str:
        """Text of ordinary in-vocabulary ids."""
        raise NotImplementedError

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """All documents' ids, each document followed by the end-of-text token (uint32)."""
        parts = [np.array(ids + [self.eot_token], dtype=np.uint32) for ids in self._encode_many(texts)]
        return np.concatenate([np.zeros(0, dtype=np.uint32), *parts])

    def _encode_many(self, texts: list[str]):
        return map(self.encode, texts)

    def decode(self, ids) -> str:
        out, run = [], []
        for i in map(int, ids):
            if 0 <= i < self.vocab_size and i != self.eot_token:
                run.append(i)
                continue
            out += [self._decode_run(run), EOT_TEXT if i == self.eot_token else "\ufffd"]
            run = []
        out.append(self._decode_run(run))
        return "".join(out)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are ids 0..255 and end-of-text is 256: needs no vocabulary file at all."""

    name, vocab_size, eot_token = "byte", 257, 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        data = [text.encode("utf-8") for text in texts]
        ids = np.frombuffer(b"".join(data), dtype=np.uint8).astype(np.uint32)
        return np.insert(ids, np.cumsum([len(d) for d in data], dtype=np.int64), self.eot_token)

    def _decode_run(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding, such as GPT-2's (50,257 tokens, end-of-text 50256)."""

    def __init__(self, encoding, name: str):
        self.encoding, self.name = encoding, name
        self.vocab_size, self.eot_token = encoding.n_vocab, encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)  # "<|endoftext|>" inside a text is just text

    def _decode_run(self, ids: list[int]) -> str:
        return b"".join(map(self._token_bytes, ids)).decode("utf-8", errors="replace")

    def _token_bytes(self, i: int) -> bytes:
        try:
            return self.encoding.decode_single_token_bytes(i)
        except KeyError:  # an id the encoding leaves undefined
            return "\ufffd".encode()


class BpeTokenizer(Tokenizer):
    """A byte-level BPE trained with the `tokenizers` library; `<|endoftext|>` is its special token."""

    name = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        self.eot_token = tokenizer.token_to_id(EOT_TEXT)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def _encode_many(self, texts: list[str]):
        return (e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False))

    def _decode_run(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def save(self, data_dir: Path) -> None:
        self.tokenizer.save(str(Path(data_dir) / BPE_FILE))


def gpt2_tokenizer() -> TiktokenTokenizer:
    """tiktoken's GPT-2 encoding: downloaded once into tiktoken's cache (TIKTOKEN_CACHE_DIR)."""
    import tiktoken

    try:
        return TiktokenTokenizer(tiktoken.get_encoding("gpt2"), "gpt2")
    except Exception as err:  # tiktoken raises whatever its download raised
        raise UserError(f"cannot load tiktoken's gpt2 encoding ({type(err).__name__}: {err}); it is downloaded "
                        "once, so connect to the internet or point TIKTOKEN_CACHE_DIR at a folder that holds it") from None


def train_bpe(texts, vocab_size: int, length: int | None = None) -> BpeTokenizer:
    """A byte-level BPE of `vocab_size` tokens trained on an iterable of texts, read once."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer, length=length)
    return BpeTokenizer(tokenizer)


def load_tokenizer(data_dir) -> Tokenizer:
    """The tokenizer that `meta.json` in `data_dir` names. GPT-2's is assumed only where it can be: a folder
    without meta.json (the seed's data) or a meta.json without a tokenizer but with GPT-2's vocabulary size."""
    from accel_train.data import GPT2_VOCAB_SIZE, read_meta

    data_dir = Path(data_dir)
    if not data_dir.is_dir():  # not the seed's data: no folder at all says nothing about the tokenizer
        raise UserError(f"data folder {data_dir} not found: its meta.json names the tokenizer; pass --data_dir")
    meta = read_meta(data_dir)
    name = meta.get("tokenizer")
    if name is None and meta["vocab_size"] != GPT2_VOCAB_SIZE:
        raise UserError(f"{data_dir}/meta.json names no tokenizer and its vocab_size {meta['vocab_size']} is not "
                        f"GPT-2's {GPT2_VOCAB_SIZE}; add \"tokenizer\": \"byte\", \"gpt2\" or \"bpe\" to it")
    name = name or "gpt2"
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return gpt2_tokenizer()
    if name == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        path = data_dir / BPE_FILE
        try:
            return BpeTokenizer(HFTokenizer.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception for a missing or malformed file
            raise UserError(f"cannot load the BPE tokenizer {path}: {err}") from None
    raise UserError(f"{data_dir}/meta.json names tokenizer {name!r}; expected 'byte', 'gpt2' or 'bpe'")
