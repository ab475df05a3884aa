"""Conversations as tokens: the chat template, and which tokens a fine-tuning run trains on.

A conversation is `{"messages": [{"role": "system"|"user"|"assistant", "content": text}, ...]}` (the format
transformers' chat templates and TRL read). It is rendered with a Jinja chat template, exactly as transformers'
`apply_chat_template` renders it, and the ids trained on are the assistant's content and the token that ends
its turn: the ids of the conversation rendered up to the end of an assistant turn, less those of the
conversation rendered up to that turn's start with the generation prompt (`add_generation_prompt`).

The template is the tokenizer's own where a HuggingFace tokenizer folder has one; for byte, gpt2 and bpe it is
OWN_TEMPLATE, in which end-of-text ends each assistant turn. A data folder keeps its template as
`chat_template.jinja` and meta.json its SHA-256 (`chat_template_fingerprint`), compared wherever the
tokenizer's fingerprint is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from accel_train.data.tokenizer import CONFIG_FILE, EOT_TEXT, HFTokenizer, Tokenizer
from accel_train.errors import UserError, first_line

ROLES = ("system", "user", "assistant")
TEMPLATE_FILE = "chat_template.jinja"  # in a data folder, and in transformers' own folders since 4.50
# byte, gpt2 and bpe have no template of their own. `bos_token` is the end-of-text that every document follows:
# prepare renders it empty (the previous conversation's end-of-text is there), sampling and transformers render it.
OWN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>\n{{ message['content'] }}{{ eos_token }}"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def fingerprint(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


@dataclass
class Conversation:
    """One line of a conversations file: its messages, and where it came from (for error lines)."""
    where: str
    messages: list[dict]

    def __len__(self) -> int:  # characters, as prepare sizes its chunks of documents
        return sum(len(message["content"]) for message in self.messages)

    def assistant_bytes(self) -> int:
        return sum(len(m["content"].encode("utf-8")) for m in self.messages if m["role"] == "assistant")


def read_conversations(path: Path) -> Iterator[Conversation]:
    """The conversations of a JSON Lines file, each checked: a bad one is one line naming the file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                where = f"{path} line {lineno}"
                yield Conversation(where, checked_messages(line, where))


def checked_messages(line: str, where: str) -> list[dict]:
    try:
        messages = json.loads(line).get("messages")
    except (ValueError, AttributeError):
        messages = None
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: expected a JSON object with a non-empty list 'messages'")
    for k, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role is None:
            raise UserError(f"{where}: message {k} has no role")
        if role not in ROLES:
            raise UserError(f"{where}: message {k} has the unknown role {role!r:.40}; use {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise UserError(f"{where}: message {k} ({role}) has empty content")
    if not any(message["role"] == "assistant" for message in messages):
        raise UserError(f"{where}: the conversation has no assistant turn, so nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def source_template(tokenizer: Tokenizer, path: str | None) -> str:
    """The template of a tokenizer prepare was given: a HuggingFace folder's own (its chat_template.jinja, or
    tokenizer_config.json's chat_template), else ours."""
    if not isinstance(tokenizer, HFTokenizer) or tokenizer.name == "bpe":
        return OWN_TEMPLATE
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    template = (tokenizer.config or {}).get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        raise UserError(f"the tokenizer {path} has no chat template ({TEMPLATE_FILE}, or chat_template in "
                        f"{CONFIG_FILE}); give a tokenizer that has one, or --tokenizer byte, gpt2 or bpe")
    return template


def load_template(data_dir) -> str:
    """The template a data folder was prepared with, checked against meta.json's fingerprint."""
    from accel_train.data.meta import read_meta

    meta, path = read_meta(data_dir), Path(data_dir) / TEMPLATE_FILE
    if meta.chat_template_fingerprint is None:
        raise UserError(f"{data_dir} holds no conversations (its meta.json names no chat template); pass the "
                        "--data_dir of conversations prepared with --chat")
    try:
        template = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    if fingerprint(template) != meta.chat_template_fingerprint:
        raise UserError(f"{path} is not the template the data was prepared with (its fingerprint differs from "
                        "meta.json's chat_template_fingerprint); put back the file prepare wrote")
    return template


class ChatEncoder:
    """A tokenizer and a chat template: conversations to ids and the trained mask, prompts to ids."""

    def __init__(self, tokenizer: Tokenizer, template: str):
        self.tokenizer, self.template = tokenizer, template
        self.end_of_turn = self._end_of_turn()

    def render(self, messages: list[dict], add_generation_prompt: bool, opening: bool) -> str:
        """The template's text of `messages`, as transformers renders it; `opening` renders the token that
        starts a document (BOS, or for tokenizers without one the end-of-text that precedes every document)."""
        from transformers.utils.chat_template_utils import render_jinja_template

        bos = self._text(self.tokenizer.bos_token) if self.tokenizer.bos_token is not None else EOT_TEXT
        try:
            rendered, _ = render_jinja_template([messages], chat_template=self.template,
                                                add_generation_prompt=add_generation_prompt,
                                                bos_token=bos if opening or self.tokenizer.bos_token is not None
                                                else "", eos_token=self._text(self.tokenizer.eot_token))
        except Exception as err:  # jinja raises many types, the template's raise_exception too
            raise UserError(f"the chat template fails on it: {first_line(err)}") from None
        return rendered[0]

    def _text(self, token: int) -> str:
        if isinstance(self.tokenizer, HFTokenizer):
            return self.tokenizer.tokenizer.id_to_token(token)
        return EOT_TEXT

    def ids(self, text: str) -> list[int]:
        """The ids of rendered text: the template's special tokens are tokens here, as transformers reads them."""
        if isinstance(self.tokenizer, HFTokenizer):
            backend = self.tokenizer.tokenizer
            backend.encode_special_tokens = False
            try:
                return backend.encode(text, add_special_tokens=False).ids
            finally:
                backend.encode_special_tokens = True
        pieces = [self.tokenizer.encode(piece) for piece in text.split(EOT_TEXT)]
        return [i for k, piece in enumerate(pieces) for i in ([self.tokenizer.eot_token] * bool(k) + piece)]

    def turns(self, messages: list[dict]) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of a conversation and the (start, end) of each assistant turn among them."""
        full, spans = self.ids(self.render(messages, False, False)), []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.ids(self.render(messages[:i], True, False))
            through = self.ids(self.render(messages[:i + 1], False, False).rstrip())
            if full[:len(before)] != before or full[:len(through)] != through:
                raise UserError("the chat template does not render the start of a conversation as a prefix of "
                                "the whole, so its assistant tokens cannot be found")
            spans.append((len(before), len(through)))
        return full, spans

    def encode(self, conversation: Conversation, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        """A conversation's document (BOS where the data starts documents with it, end-of-text last) and its
        trained mask, cut after its last assistant turn that fits a window of block_size + 1 tokens."""
        try:
            ids, spans = self.turns(conversation.messages)
        except UserError as err:
            raise UserError(f"{conversation.where}: {err}") from None
        bos, eot = self.tokenizer.bos_token, self.tokenizer.eot_token
        lead = [bos] if bos is not None and ids[:1] != [bos] else []
        fits = [(start, end) for start, end in spans if len(lead) + end + (ids[end - 1] != eot) <= block_size + 1]
        if not fits:
            raise UserError(f"{conversation.where}: the conversation's first assistant turn ends after "
                            f"{len(lead) + spans[0][1]} tokens, beyond a window of --block_size {block_size} + 1; "
                            "shorten it or raise --block_size")
        cut = fits[-1][1] if len(fits) < len(spans) else len(ids)
        document = lead + ids[:cut] + ([eot] if ids[cut - 1] != eot else [])
        mask = np.zeros(len(document), dtype=np.uint8)
        for start, end in fits:
            mask[len(lead) + start:len(lead) + end] = 1
        return np.array(document, dtype=np.uint32), mask

    def prompt(self, question: str) -> list[int]:
        """The ids that ask `question` and open the assistant's turn, as transformers' apply_chat_template gives
        them (add_generation_prompt=True)."""
        ids = self.ids(self.render([{"role": "user", "content": question}], True, True))
        bos = self.tokenizer.bos_token
        return ([bos] if bos is not None and ids[:1] != [bos] else []) + ids

    def _end_of_turn(self) -> int:
        """The token that ends an assistant turn in this template (the last one trained on in a probe)."""
        ids, spans = self.turns([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
        return ids[spans[0][1] - 1]
