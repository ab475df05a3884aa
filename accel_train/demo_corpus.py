"""The built-in demo corpus: short children's stories generated from a grammar, byte-tokenized.

It needs no download, is written in seconds, and has enough structure (characters, places,
objects, cause and effect) that a tiny model's samples read like it, and enough variety
that the model cannot simply memorize it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Leo", "Zoe", "Sam", "Ella", "Jack", "Nina", "Finn",
         "Ruby", "Oscar", "Lucy", "Theo", "Ivy", "Noah"]
ANIMALS = ["cat", "dog", "bird", "rabbit", "frog", "duck", "fox", "bear", "mouse", "turtle", "owl", "puppy"]
PLACES = ["the park", "the garden", "the beach", "the forest", "the farm", "the lake", "the hill", "the town",
          "the school", "the river", "the yard", "the zoo"]
OBJECTS = ["ball", "kite", "box", "hat", "book", "boat", "drum", "cup", "shell", "stone", "flower", "toy car",
           "blanket", "map", "key", "bell"]
COLORS = ["red", "blue", "green", "yellow", "shiny", "big", "little", "soft", "old", "new", "pink", "golden"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "curious", "angry", "surprised", "calm"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "quiet", "bright", "cloudy"]
TIMES = ["One day", "Once upon a time", "One morning", "Last summer", "One evening", "Long ago"]
PROBLEMS = [
    "the {obj} fell into the water",
    "the {obj} was stuck in a tree",
    "a {animal} took the {obj} and ran away",
    "the {obj} was broken",
    "{friend} could not find the {obj}",
    "the wind blew the {obj} far away",
]
FIXES = [
    "{hero} found a long stick and got the {obj} back",
    "{hero} asked mom for help, and together they fixed the {obj}",
    "{hero} and {friend} looked everywhere until they found the {obj} under a bush",
    "the {animal} came back and gave the {obj} to {hero}",
    "{hero} climbed up carefully and got the {obj}",
    "{friend} had a good idea, and soon the {obj} was safe",
]
LESSONS = [
    "{hero} learned that it is good to share.",
    "From that day on, {hero} and {friend} were best friends.",
    "{hero} said, \"Thank you, {friend}!\" and they both smiled.",
    "They played with the {obj} until the sun went down.",
    "{hero} felt {feeling} and went home to sleep.",
    "Now {hero} always keeps the {obj} close.",
]


def story(rng: random.Random) -> str:
    """One story: a setting, a wish, a problem, a fix and an ending, with a consistent cast."""
    hero, friend = rng.sample(NAMES, 2)
    words = {"hero": hero, "friend": friend, "obj": rng.choice(OBJECTS), "animal": rng.choice(ANIMALS),
             "feeling": rng.choice(FEELINGS)}
    color, place, weather = rng.choice(COLORS), rng.choice(PLACES), rng.choice(WEATHER)
    lines = [
        f"{rng.choice(TIMES)}, {hero} went to {place} with {friend}. It was a {weather} day.",
        f"{hero} had a {color} {words['obj']}. {hero} loved the {words['obj']} very much.",
    ]
    if rng.random() < 0.5:
        lines.append(f"They saw a {words['animal']} near {place}. The {words['animal']} was "
                     f"{rng.choice(FEELINGS)}.")
    lines.append("But " + rng.choice(PROBLEMS).format(**words) + f". {hero} was {rng.choice(FEELINGS)}.")
    lines.append("Then " + rng.choice(FIXES).format(**words) + ".")
    lines.append(rng.choice(LESSONS).format(**words))
    return " ".join(lines)


def stories(count: int, seed: int = 0):
    rng = random.Random(seed)
    return (story(rng) for _ in range(count))


EOT = 256  # the byte tokenizer's end-of-text id: bytes are 0..255


def byte_tokens(texts) -> np.ndarray:
    """Each text as its UTF-8 bytes followed by the end-of-text token."""
    parts = []
    for text in texts:
        parts.append(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16))
        parts.append(np.array([EOT], dtype=np.uint16))
    return np.concatenate(parts)


def write_demo_data(data_dir, num_stories: int = 24_000, val_fraction: float = 0.05, seed: int = 0) -> None:
    """Write train.bin, val.bin and meta.json of the demo corpus; the folder appears only when complete."""
    data_dir = Path(data_dir)
    tmp = data_dir.with_name(f".{data_dir.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    texts = list(stories(num_stories, seed))
    n_val = max(1, int(num_stories * val_fraction))
    splits = {"train": byte_tokens(texts[n_val:]), "val": byte_tokens(texts[:n_val])}
    for split, tokens in splits.items():
        tokens.tofile(tmp / f"{split}.bin")
    meta = {"dtype": "uint16", "vocab_size": 257, "tokenizer": "byte", "eot_token": EOT, "source": "demo-stories",
            "tokens": {split: int(len(t)) for split, t in splits.items()}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if data_dir.exists() and not any(data_dir.iterdir()):
        data_dir.rmdir()
    os.replace(tmp, data_dir)
