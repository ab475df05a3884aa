"""Generate text from a trained checkpoint, decoded with the tokenizer its data was prepared with.

    python -m accel_train.sample --checkpoint out/demo --prompt "Once upon a time"

The prompt is fed once, then each new token alone through the model's KV cache, so a sample's
cost grows linearly with its length. Every prompt starts after an end-of-text token, as every
training document did; a sample ends at the next end-of-text token, at --max_new_tokens, or at
the model's context length. --data_dir (default: the run's folder) must hold the tokenizer the model was
trained with: another is refused in one line.

    python -m accel_train.sample --checkpoint out/demo_sft --chat "Where did Lily go?" --temperature 0

`--chat` asks a model fine-tuned on conversations: the question is rendered with the chat template its data
was prepared with (as transformers' apply_chat_template renders it, generation prompt included), and the
answer ends at the token that ends the assistant's turn.
"""

from __future__ import annotations

import math
import sys

import torch

from accel_train.checkpointing.trained_model import TrainedModel
from accel_train.data.chat import ChatEncoder
from accel_train.data.tokenizer import Tokenizer
from accel_train.errors import Parser, UserError, first_line, number, run_cli
from accel_train.evaluation.multiple_choice import document_prefix
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


def usable_device(name: str) -> torch.device:
    """The --device, checked by computing on it and reading the result back: a name torch does not know, a GPU
    this machine lacks and `meta` (shapes without data) all fail here, in one line, before the slow load."""
    try:
        device = torch.device(name)
        torch.ones(1, device=device).add(1).cpu()
    except (RuntimeError, AssertionError, NotImplementedError, ValueError) as err:
        raise UserError(f"cannot compute on --device {name!r}: {first_line(err)}") from None
    return device


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m accel_train.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder, or an out_dir (its newest)")
    parser.add_argument("--prompt", default="", help="text to continue (default: a new document)")
    parser.add_argument("--chat", default=None, metavar="QUESTION",
                        help="ask a fine-tuned model: the question through its chat template, the answer printed")
    parser.add_argument("--max_new_tokens", type=number(int, 1), default=200)
    parser.add_argument("--temperature", type=number(float, 0), default=0.8, help="0 picks the likeliest token")
    parser.add_argument("--top_k", type=number(int, 0), default=50, help="sample among the k likeliest tokens; 0: all")
    parser.add_argument("--seed", type=number(int, 0, 2**63 - 1), default=0, help="sample i uses seed + i")
    parser.add_argument("--num_samples", type=number(int, 1), default=1)
    parser.add_argument("--data_dir", default=None, help="where meta.json names the tokenizer (default: the run's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    if args.chat is not None and args.prompt:
        raise UserError("give --prompt (text to continue) or --chat (a question to answer), not both")
    device = usable_device(args.device)
    trained = TrainedModel(args.checkpoint)
    model, tokenizer = trained.model, trained.tokenizer(args.data_dir)
    chat = ChatEncoder(tokenizer, trained.chat_template(args.data_dir)) if args.chat is not None else None
    try:
        model.to(device)
    except RuntimeError as err:  # e.g. out of GPU memory
        raise UserError(f"cannot use --device {args.device}: {first_line(err)}") from None
    for i in range(args.num_samples):
        if i:
            print("-" * 40)
        if chat is not None:
            print(chat_answer(model, chat, args.chat, args.max_new_tokens, args.temperature, args.top_k, args.seed + i),
                  flush=True)
        else:
            print(sample_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                              args.seed + i), flush=True)


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
