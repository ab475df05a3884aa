"""Generation from a model: the next token of each step, text continued from a prompt, a chat question answered.

The prompt is fed once, then each new token alone through the model's KV cache, so a sample's cost grows linearly
with its length. Used by `python -m accel_train.sample`, the sample at the end of a training run and the
story-questions demo.
"""

from __future__ import annotations

import math

import torch

from accel_train.data.chat import ChatEncoder
from accel_train.data.documents import document_prefix
from accel_train.data.tokenizer import Tokenizer
from accel_train.errors import UserError
from accel_train.models.gemma3 import Gemma3, KVCache


def next_token(logits: torch.Tensor, temperature: float, top_k: int, generator: torch.Generator) -> int:
    """Pick from the last position's logits: greedy at temperature 0, else sample from the top k."""
    if temperature < torch.finfo(torch.float32).tiny:  # 0, or so small that sampling is greedy (and 0 in float32)
        return int(logits.argmax())
    logits = logits.float()
    logits = (logits - logits.max()) / temperature  # the likeliest at 0: a small temperature makes no inf - inf
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.no_grad()
def generate(model: Gemma3, ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             eot_token: int | None = None, seed: int = 0, use_cache: bool = True,
             stop_tokens: tuple[int, ...] = ()) -> list[int]:
    """The token ids that follow `ids`, ending before `eot_token` (or any of `stop_tokens`).

    Without the cache every step runs the whole sequence again: slower, and kept to check the
    cached path. The same seed gives the same tokens.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    cache = KVCache() if use_cache else None
    seq = torch.tensor([ids], device=device)
    feed, new = seq, []
    for _ in range(min(max_new_tokens, model.config.max_position_embeddings - len(ids))):
        logits, _ = model(feed if use_cache else seq, cache=cache)
        token = next_token(logits[0, -1], temperature, top_k, generator)
        if token == eot_token or token in stop_tokens:
            break
        new.append(token)
        feed = torch.tensor([[token]], device=device)
        seq = torch.cat((seq, feed), dim=1)
    return new


def sample_text(model: Gemma3, tokenizer: Tokenizer, prompt: str = "", max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int = 50, seed: int = 0) -> str:
    """The prompt and its continuation as text, in the ids of `tokenizer` (the one the model was trained with)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:  # a shell passes bytes that are not UTF-8 on as lone surrogates
        raise UserError(f"the prompt is not UTF-8 text (character {err.start}); pass it in UTF-8") from None
    ids = document_prefix(tokenizer.eot_token, tokenizer.bos_token) + tokenizer.encode(prompt)
    if len(ids) >= model.config.max_position_embeddings:
        raise UserError(f"the prompt is {len(ids)} tokens, at or beyond the model's context of "
                        f"{model.config.max_position_embeddings}; shorten it")
    if not 0 <= temperature < math.inf:
        raise UserError(f"temperature must be a finite number at least 0, got {temperature}")
    new = generate(model, ids, max_new_tokens, temperature, top_k, tokenizer.eot_token, seed)
    return prompt + tokenizer.decode(new)


def chat_answer(model: Gemma3, chat: ChatEncoder, question: str, max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int = 50, seed: int = 0) -> str:
    """The assistant's answer to `question`, asked through the chat template; it ends with the turn."""
    ids = chat.prompt(question)
    if len(ids) >= model.config.max_position_embeddings:
        raise UserError(f"the question is {len(ids)} tokens with the template, at or beyond the model's context of "
                        f"{model.config.max_position_embeddings}; shorten it")
    new = generate(model, ids, max_new_tokens, temperature, top_k, chat.tokenizer.eot_token, seed,
                   stop_tokens=(chat.end_of_turn,))
    return chat.tokenizer.decode(new)
