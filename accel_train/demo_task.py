"""The shipped multiple-choice task `story_endings`: which of four sentences continues a demo story.

    python -m accel_train.demo_task        # rewrites accel_train/tasks/story_endings.jsonl

Each example is the start of a story from the demo corpus's grammar (an opening and one or two beats of its
plot) and four candidates for its next beat: the story's own, and the same beat of three other stories, which
have other characters and, mostly, other plots. Its seed differs from the corpus's, so the stories are new to
a model trained on the demo corpus; a model that learned who a story is about and what happens next in its
plot picks the right one more often than chance (1 in 4).
"""

from __future__ import annotations

import json
import random

from accel_train.demo_corpus import PLOTS, make_cast, one_of, opening
from accel_train.multiple_choice import TASKS_DIR

TASK_FILE = TASKS_DIR / "story_endings.jsonl"
EXAMPLES, ENDINGS, SEED = 200, 4, 25


def story_start(rng: random.Random) -> tuple[str, list[list[str]], dict]:
    """(opening, the plot's beats, the cast) of a new story."""
    cast = make_cast(rng)
    return " ".join(opening(rng, cast)), PLOTS[rng.choice(sorted(PLOTS))], cast


def example(rng: random.Random) -> dict:
    text, beats, cast = story_start(rng)
    told = rng.randint(1, 2)  # beats of the story in the context
    context = " ".join([text] + [one_of(rng, beat, cast) for beat in beats[:told]])
    endings = [one_of(rng, beats[told], cast)]
    while len(endings) < ENDINGS:
        _, other_beats, other_cast = story_start(rng)
        ending = one_of(rng, other_beats[min(told, len(other_beats) - 1)], other_cast)
        if ending not in endings:
            endings.append(ending)
    order = list(range(ENDINGS))
    rng.shuffle(order)
    return {"ctx": context, "endings": [endings[i] for i in order], "label": order.index(0)}


def write_task(path=TASK_FILE, examples: int = EXAMPLES, seed: int = SEED) -> None:
    rng = random.Random(seed)
    path.write_text("".join(json.dumps(example(rng)) + "\n" for _ in range(examples)), encoding="utf-8")


if __name__ == "__main__":
    write_task()
    print(f"wrote {TASK_FILE}")
