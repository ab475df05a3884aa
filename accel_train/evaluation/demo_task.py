"""The shipped multiple-choice task `story_endings`: which of four endings completes a sentence of a demo story.

    python -m accel_train.evaluation.demo_task        # rewrites accel_train/evaluation/tasks/story_endings.jsonl

Each example is a new story from the demo corpus's grammar, cut inside one of its sentences (after the first),
and four candidates for the rest of that sentence (2 to 6 words): the story's own, and the rest of a sentence
of three other stories, cut the same way. Its seed differs from the corpus's, so the stories are new to a
model trained on the demo corpus; a model that learned the stories' grammar, characters and plots picks the
right one more often than chance (1 in 4).
"""

from __future__ import annotations

import json
import random
import re

from accel_train.data.demo_corpus import story
from accel_train.errors import Parser
from accel_train.evaluation.multiple_choice import TASKS_DIR

TASK_FILE = TASKS_DIR / "story_endings.jsonl"
EXAMPLES, ENDINGS, SEED = 200, 4, 25


def cut_story(rng: random.Random) -> tuple[str, str]:
    """(context, ending): a new story cut inside one of its sentences, after its first sentence, at a space that
    leaves 2 to 6 words of that sentence to tell."""
    text = story(rng)
    sentences = [m.end() for m in re.finditer(r"[.!?]\"?(?= |\n|$)", text)]
    while True:
        start, end = rng.choice(list(zip(sentences, sentences[1:])))
        spaces = [m.start() for m in re.finditer(" ", text[start + 1:end])]
        cuts = [start + 1 + i for i in spaces if 2 <= text[start + 1 + i:end].count(" ") <= 6]
        if cuts:
            cut = rng.choice(cuts)
            return text[:cut], text[cut + 1:end]


def example(rng: random.Random) -> dict:
    context, ending = cut_story(rng)
    endings = [ending]
    while len(endings) < ENDINGS:
        other = cut_story(rng)[1]
        if other not in endings:
            endings.append(other)
    order = list(range(ENDINGS))
    rng.shuffle(order)
    return {"ctx": context, "endings": [endings[i] for i in order], "label": order.index(0)}


def write_task(path=TASK_FILE, examples: int = EXAMPLES, seed: int = SEED) -> None:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(example(rng)) + "\n" for _ in range(examples)), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    Parser(prog="python -m accel_train.evaluation.demo_task", description=__doc__.splitlines()[0]).parse_args(argv)
    write_task()
    print(f"wrote {TASK_FILE}")


if __name__ == "__main__":
    main()
