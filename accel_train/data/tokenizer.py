"""Tokenizers that turn text into the token ids of a data folder, and back.

A data folder's `meta.json` names its tokenizer ("byte", "gpt2", "bpe" or "hf", any HuggingFace
tokenizer kept beside the data); `load_tokenizer` gives the matching one, so sampling decodes with
exactly what preparation encoded. All share one contract: `encode(text)` never adds the end-of-text
token (preparation appends it after each document) and reads special tokens in a text as plain text;
`decode(ids)` never raises: end-of-text reads as `<|endoftext|>`, ids outside the vocabulary (a
model's padded vocabulary can sample them) and invalid UTF-8 as U+FFFD.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from accel_train.errors import UserError, first_line

EOT_TEXT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"  # a `tokenizers` tokenizer (trained BPE or HuggingFace), beside the data it encoded
CONFIG_FILE = "tokenizer_config.json"  # a HuggingFace tokenizer's special tokens (eos_token), beside it
SPECIAL_TOKENS_FILE = "special_tokens_map.json"  # where older HuggingFace folders name them
PROBE = "Once upon a time, Lily's dog ran 3.5 km!\n\tÇa va? 日本の雪 ☃ -- The end."  # compares two tokenizers


class Tokenizer:
    name: str
    vocab_size: int
    eot_token: int
    bos_token: int | None = None  # starts every document where the tokenizer defines one (Gemma's <bos>)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def save(self, data_dir: Path) -> None:
        """Write what `load_tokenizer` needs besides meta.json into a data folder (most need nothing)."""

    def fingerprint(self) -> str:
        """What tells this tokenizer from another one that encodes differently: a SHA-256 of its vocabulary, merges,
        special tokens and the rules that split a text, recorded in meta.json and compared wherever ids from two
        places meet (mixtures, resume, sample, score, export). Two trained BPEs of one size differ here."""
        identity = [self.name, self.vocab_size, self.eot_token, self.bos_token, self._definition()]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def _definition(self) -> str:
        """Everything that decides the ids of a text besides the special tokens (vocabulary, merges, rules)."""
        raise NotImplementedError

    def _decode_run(self, ids: list[int]) -> str:
        """Text of ordinary in-vocabulary ids."""
        raise NotImplementedError

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """All documents' ids, each document followed by the end-of-text token and, where the tokenizer has one,
        preceded by its beginning-of-sequence token (uint32)."""
        bos = [] if self.bos_token is None else [self.bos_token]
        parts = [np.array(bos + ids + [self.eot_token], dtype=np.uint32) for ids in self._encode_many(texts)]
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

    def _definition(self) -> str:
        return "utf-8 bytes"

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

    def _definition(self) -> str:
        """The bytes of every token in id order (the merge ranks), the pre-tokenizing pattern and special tokens."""
        digest = hashlib.sha256(getattr(self.encoding, "_pat_str", "").encode())
        for i in range(self.vocab_size):
            token = self._token_bytes(i)
            digest.update(len(token).to_bytes(4, "little") + token)
        specials = sorted((text, self.encoding.encode_single_token(text)) for text in self.encoding.special_tokens_set)
        digest.update(json.dumps(specials).encode())
        return digest.hexdigest()

    def _decode_run(self, ids: list[int]) -> str:
        return b"".join(map(self._token_bytes, ids)).decode("utf-8", errors="replace")

    def _token_bytes(self, i: int) -> bytes:
        try:
            return self.encoding.decode_single_token_bytes(i)
        except KeyError:  # an id the encoding leaves undefined
            return "\ufffd".encode()


class HFTokenizer(Tokenizer):
    """Any `tokenizers` tokenizer, such as a HuggingFace model's tokenizer.json, with `config` (its
    tokenizer_config.json, eos_token set to end-of-text) kept beside the data for sampling and export."""

    name = "hf"

    def __init__(self, tokenizer, eot_token: int, config: dict | None = None):
        tokenizer.encode_special_tokens = True  # "<eos>" inside a text is just text, as with tiktoken
        self.tokenizer, self.eot_token, self.config = tokenizer, eot_token, config
        self.bos_token = leading_special_token(tokenizer)
        self.vocab_size = encodable_vocab_size(tokenizer, max(eot_token, self.bos_token or 0))

    def encode(self, text: str) -> list[int]:
        return self._encode_many([text])[0]

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        try:
            return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        except Exception as err:  # tokenizers raises a bare Exception, e.g. for a word a WordLevel model lacks
            raise UserError(f"the {self.name} tokenizer cannot encode the text: {first_line(err)}") from None

    def _decode_run(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _definition(self) -> str:
        """The whole tokenizer.json (vocabulary, merges, added tokens, normalizer, pre-tokenizer), keys sorted."""
        return hashlib.sha256(json.dumps(json.loads(self.tokenizer.to_str()), sort_keys=True).encode()).hexdigest()

    def save(self, data_dir: Path) -> None:
        self.tokenizer.save(str(Path(data_dir) / TOKENIZER_FILE))
        if self.config is not None:
            (Path(data_dir) / CONFIG_FILE).write_text(json.dumps(self.config, indent=1, ensure_ascii=False) + "\n")


def leading_special_token(tokenizer) -> int | None:
    """The one token the tokenizer's post-processor puts before every text (Gemma's and Llama's BOS), as
    transformers adds it with add_special_tokens; None where it puts none (GPT-2's, a trained BPE)."""
    try:
        plain = tokenizer.encode(PROBE, add_special_tokens=False).ids
        full = tokenizer.encode(PROBE, add_special_tokens=True).ids
    except Exception as err:  # tokenizers raises a bare Exception, e.g. for a word a WordLevel model lacks
        raise UserError(f"the tokenizer cannot encode the text {PROBE!r}: {first_line(err)}") from None
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain]
    return full[0] if starts and starts[0] == 1 else None


def encodable_vocab_size(tokenizer, eot_token: int) -> int:
    """1 + the largest id a document can hold: the model's tokens, added ones and end-of-text. Other special
    tokens never occur, being read as text, so trailing ones do not count: Gemma 3's tokenizer holds 262,145
    tokens, the last (<image_soft_token>) beyond the model's 262,144 embeddings."""
    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    model_ids = tokenizer.get_vocab(with_added_tokens=False).values()
    added_ids = (i for i in tokenizer.get_added_tokens_decoder() if i not in special)
    return 1 + max(eot_token, max(model_ids, default=0), max(added_ids, default=0))


class BpeTokenizer(HFTokenizer):
    """A byte-level BPE trained with the `tokenizers` library; `<|endoftext|>` is its special token."""

    name = "bpe"

    def __init__(self, tokenizer):
        super().__init__(tokenizer, tokenizer.token_to_id(EOT_TEXT))


def gpt2_tokenizer() -> TiktokenTokenizer:
    """tiktoken's GPT-2 encoding: downloaded once into tiktoken's cache (TIKTOKEN_CACHE_DIR)."""
    import tiktoken

    try:
        return TiktokenTokenizer(tiktoken.get_encoding("gpt2"), "gpt2")
    except Exception as err:  # tiktoken raises whatever its download raised
        raise UserError(f"cannot load tiktoken's gpt2 encoding ({type(err).__name__}: {err}); it is downloaded "
                        "once, so connect to the internet or point TIKTOKEN_CACHE_DIR at a folder that holds it"
                        ) from None


def train_bpe(texts, vocab_size: int, length: int | None = None) -> BpeTokenizer:
    """A byte-level BPE of `vocab_size` tokens trained on an iterable of texts, read once."""
    from tokenizers import Tokenizer as HFBackend, decoders, models, pre_tokenizers, trainers

    tokenizer = HFBackend(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer, length=length)
    return BpeTokenizer(tokenizer)


def _token_text(token, where: Path) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's fields ({"content": ...})."""
    text = token.get("content") if isinstance(token, dict) else token
    if text is not None and not isinstance(text, str):
        raise UserError(f"eos_token in {where} must be a token's text or {{\"content\": text}}, got {token!r}; "
                        "name the end-of-text token with --eot_token")
    return text


def hf_tokenizer(path, eot_token: str | None = None) -> HFTokenizer:
    """A HuggingFace tokenizer from a tokenizer.json or a folder that holds one (a downloaded model, an export).
    End-of-text is `eot_token` if given, else the eos_token of the tokenizer_config.json beside it."""
    from tokenizers import Tokenizer as HFBackend

    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no tokenizer at {path}: give a tokenizer.json or a folder that holds one")
    try:
        backend = HFBackend.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception for a malformed file
        raise UserError(f"cannot load the tokenizer {file}: {str(err).strip().splitlines()[0]}") from None
    config = {}
    for name in (SPECIAL_TOKENS_FILE, CONFIG_FILE):  # the newer file wins
        if (file.parent / name).is_file():
            try:
                config.update(json.loads((file.parent / name).read_text(encoding="utf-8")))
            except (ValueError, TypeError) as err:
                raise UserError(f"cannot read {file.parent / name}: {err}") from None
    eot_text = eot_token or _token_text(config.get("eos_token"), file.parent)
    if not eot_text:
        raise UserError(f"the tokenizer {file} has no eos_token (in a {CONFIG_FILE} beside it); "
                        "name its end-of-text token with --eot_token")
    eot = backend.token_to_id(eot_text)
    if eot is None:
        raise UserError(f"end-of-text token {eot_text!r} is not a token of {file}; name one with --eot_token")
    return HFTokenizer(backend, eot, {**config, "eos_token": eot_text})


def encodes_like(tokenizer: Tokenizer, file) -> bool:
    """Whether the HuggingFace tokenizer.json `file` encodes as `tokenizer` does: the same ids for a text of
    several scripts and the same vocabulary size, enough to tell one tokenizer from another."""
    from tokenizers import Tokenizer as HFBackend

    try:
        other = HFTokenizer(HFBackend.from_file(str(file)), tokenizer.eot_token)
    except Exception as err:  # tokenizers raises a bare Exception for a malformed file
        raise UserError(f"cannot load the tokenizer {file}: {str(err).strip().splitlines()[0]}") from None
    return other.encode(PROBE) == tokenizer.encode(PROBE) and other.vocab_size == tokenizer.vocab_size


def load_tokenizer(data_dir) -> Tokenizer:
    """The tokenizer that `meta.json` in `data_dir` names, starting documents with BOS only where that data does
    (data prepared before BOS was added has none). GPT-2's is assumed only where it can be: a folder without
    meta.json (the seed's data) or a meta.json without a tokenizer but with GPT-2's vocabulary size. Where
    meta.json records the tokenizer's fingerprint, the tokenizer loaded must have it: a tokenizer.json replaced
    beside the data would encode and decode with other ids."""
    from accel_train.data.meta import GPT2_VOCAB_SIZE, read_meta

    data_dir = Path(data_dir)
    if not data_dir.is_dir():  # not the seed's data: no folder at all says nothing about the tokenizer
        raise UserError(f"data folder {data_dir} not found: its meta.json names the tokenizer; pass --data_dir")
    meta = read_meta(data_dir)
    if meta.tokenizer is None and meta.vocab_size != GPT2_VOCAB_SIZE:
        raise UserError(f"{data_dir}/meta.json names no tokenizer and its vocab_size {meta.vocab_size} is not "
                        f"GPT-2's {GPT2_VOCAB_SIZE}; add \"tokenizer\": \"byte\", \"gpt2\" or \"bpe\" to it")
    tokenizer = _named_tokenizer(meta.tokenizer or "gpt2", data_dir)
    tokenizer.bos_token = meta.bos_token
    if meta.tokenizer_fingerprint not in (None, tokenizer.fingerprint()):
        raise UserError(f"the {tokenizer.name} tokenizer in {data_dir} is not the one its data was prepared with "
                        "(its fingerprint differs from meta.json's tokenizer_fingerprint); put back the tokenizer "
                        "files prepare wrote, or prepare the data again")
    return tokenizer


def _named_tokenizer(name: str, data_dir: Path) -> Tokenizer:
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return gpt2_tokenizer()
    if name == "bpe":
        from tokenizers import Tokenizer as HFBackend

        path = data_dir / TOKENIZER_FILE
        try:
            return BpeTokenizer(HFBackend.from_file(str(path)))
        except Exception as err:  # tokenizers raises a bare Exception for a missing or malformed file
            raise UserError(f"cannot load the BPE tokenizer {path}: {err}") from None
    if name == "hf":  # its tokenizer_config.json names end-of-text as eos_token
        return hf_tokenizer(data_dir)
    raise UserError(f"{data_dir}/meta.json names tokenizer {name!r}; expected 'byte', 'gpt2', 'bpe' or 'hf'")
