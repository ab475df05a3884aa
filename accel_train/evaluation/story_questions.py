"""The fine-tuning demo: questions about short stories of the demo corpus's grammar, and their exact-answer rate.

    python -m accel_train.evaluation.story_questions --write data/story_questions
    python -m accel_train.evaluation.story_questions --checkpoint out/demo_sft --data_dir data/demo_chat

`--write` makes train.jsonl and heldout.jsonl: conversations in which the user gives a short story (the demo
corpus's cast, opening and a scene) and asks who went along, where they went or what the hero had, and the
assistant answers with the words the story states. The held-out stories are drawn from another seed and none
is also a training story. `--checkpoint` asks a checkpoint each held-out question through the chat template of
--data_dir (greedy, as `sample --chat` does) and counts the answers that are exactly right, and those of the
kind asked (a name, a place, a thing), right or not.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from accel_train.data.demo_corpus import BOYS, GIRLS, OPENINGS, PLACES, THINGS, make_cast, one_of, scene
from accel_train.errors import Parser, UserError, number, run_cli

TRAIN_SEED, HELDOUT_SEED = 1, 2
QUESTIONS = {  # kind: (the question, the answer: words the story states)
    "who": ("Who went with {hero}?", "{friend}"),
    "where": ("Where did {hero} go?", "{place}"),
    "what": ("What did {hero} have?", "a {look} {thing}"),
}
STARTS = ["{when}, {hero} went to {place} with {friend}.", "{when}, {hero} and {friend} went to {place}."]
HAVING = ["{He} had a {look} {thing}.", "{hero} took a {look} {thing} along.", "{hero} had a {look} {thing}."]


def story_question(rng: random.Random) -> dict:
    """One conversation: a short story, one question about it, and its answer."""
    cast = make_cast(rng)
    cast["when"] = one_of(rng, OPENINGS, cast)
    story = " ".join([one_of(rng, STARTS, cast), one_of(rng, HAVING, cast), scene(rng, cast)])
    question, answer = (text.format(**cast) for text in QUESTIONS[rng.choice(list(QUESTIONS))])
    return {"messages": [{"role": "user", "content": f"{story}\n{question}"},
                         {"role": "assistant", "content": answer}]}


def conversations(count: int, seed: int, leave_out: set[str] = frozenset()) -> list[dict]:
    """`count` conversations drawn from `seed`, none whose story is in `leave_out`."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        conversation = story_question(rng)
        if story_of(conversation) not in leave_out:
            out.append(conversation)
    return out


def story_of(conversation: dict) -> str:
    return conversation["messages"][0]["content"].rsplit("\n", 1)[0]


def write(folder, train: int = 4000, heldout: int = 200) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    train_set = conversations(train, TRAIN_SEED)
    sets = {"train": train_set, "heldout": conversations(heldout, HELDOUT_SEED, set(map(story_of, train_set)))}
    for name, rows in sets.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {folder}: {train} training and {heldout} held-out conversations")


def right_kind(question: str, answer: str) -> bool:
    """Whether `answer` is an answer of the kind the question asks for (a name, a place, a thing), right or not:
    what fine-tuning teaches first, before the model can pick the one its story states."""
    if question.startswith("Who"):
        return answer in GIRLS + BOYS
    if question.startswith("Where"):
        return answer in PLACES
    return answer.startswith("a ") and any(answer.endswith(f" {thing}") for thing in THINGS)


def exact_answers(checkpoint, data_dir, questions) -> tuple[int, int, int]:
    """(exactly right answers, answers of the right kind, questions) of `checkpoint` on the conversations file
    `questions`, asked greedily."""
    from accel_train.checkpointing.trained_model import TrainedModel
    from accel_train.data.chat import ChatEncoder, read_conversations
    from accel_train.models.generation import chat_answer

    trained = TrainedModel(checkpoint)
    chat = ChatEncoder(trained.tokenizer(data_dir), trained.chat_template(data_dir))
    right = kind = total = 0
    for conversation in read_conversations(Path(questions)):
        user, assistant = conversation.messages[:2]
        answer = chat_answer(trained.model, chat, user["content"], max_new_tokens=40, temperature=0).strip()
        right, total = right + (answer == assistant["content"]), total + 1
        kind += right_kind(user["content"].rsplit("\n", 1)[-1], answer)
    return right, kind, total


def main(argv: list[str]) -> None:
    parser = Parser(prog="python -m accel_train.evaluation.story_questions", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="FOLDER", help="write train.jsonl and heldout.jsonl into FOLDER")
    parser.add_argument("--train", type=number(int, 1), default=4000, help="training conversations to write")
    parser.add_argument("--heldout", type=number(int, 1), default=200, help="held-out conversations to write")
    parser.add_argument("--checkpoint", help="score this checkpoint (or out_dir) on the held-out questions")
    parser.add_argument("--data_dir", help="conversations prepared with --chat: the chat template to ask with")
    parser.add_argument("--questions", default="data/story_questions/heldout.jsonl")
    args = parser.parse_args(argv)
    if args.write:
        write(args.write, args.train, args.heldout)
        return
    if not args.checkpoint or not args.data_dir:
        raise UserError("give --write FOLDER, or --checkpoint and --data_dir to score")
    if not Path(args.questions).is_file():
        raise UserError(f"{args.questions} not found; write it with --write first")
    right, kind, total = exact_answers(args.checkpoint, args.data_dir, args.questions)
    print(f"{args.checkpoint}: {right} of {total} held-out questions answered exactly ({right / total:.1%}); "
          f"{kind} answered with a name, place or thing of the kind asked ({kind / total:.1%})")


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
