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

import sys

from accel_train.checkpointing.trained_model import TrainedModel
from accel_train.data.chat import ChatEncoder
from accel_train.errors import Parser, UserError, first_line, number, run_cli
from accel_train.models.generation import chat_answer, sample_text
from accel_train.training.hardware import usable_device


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
