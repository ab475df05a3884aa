"""Realized proportions of a weighted mixture's sources over 10,000 windows, against the weights.

    python benchmarks/mixture_proportions.py [--text tests/fixtures/tinystories/tinystories_500.txt]
        [--work /tmp/mixture_proportions] [--weights 0.7,0.2,0.1] [--windows 10000] [--batch_sizes 32,4]

Prepares three byte-tokenized folders (every third story of the text each) and draws the training stream
of `data_mix` over them exactly as the trainer does (accel_train.stream.WindowStream), then counts which
source each window came from: in all, and the largest gap between a source's count and its share over
any prefix of the stream. Prints Markdown.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from accel_train.data.mixture import parse_mix, sources_of  # noqa: E402
from accel_train.data.stream import WindowStream  # noqa: E402

NAMES = ("web", "books", "code")


def prepare(text: Path, work: Path) -> list[Path]:
    stories = text.read_text(encoding="utf-8").split("<|endoftext|>")
    folders = []
    for i, name in enumerate(NAMES):
        folder = work / name
        if not (folder / "meta.json").exists():
            part = work / f"{name}.txt"
            part.write_text("<|endoftext|>".join(stories[i::3]), encoding="utf-8")
            subprocess.run([sys.executable, "-m", "accel_train.prepare", "--input", str(part), "--separator",
                            "<|endoftext|>", "--tokenizer", "byte", "--out", str(folder)], cwd=REPO, check=True)
        folders.append(folder)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=str(REPO / "tests" / "fixtures" / "tinystories" / "tinystories_500.txt"))
    parser.add_argument("--work", default="/tmp/mixture_proportions")
    parser.add_argument("--weights", default="0.7,0.2,0.1")
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--batch_sizes", default="32,4")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    folders = prepare(Path(args.text), Path(args.work))
    mix = parse_mix(",".join(f"{f}={w}" for f, w in zip(folders, args.weights.split(","))))
    sources = sources_of(mix)
    print("| batch size | source | weight | windows | realized share | largest gap over any prefix (windows) |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for batch_size in map(int, args.batch_sizes.split(",")):
        stream = WindowStream(sources, 64, batch_size, 1337, "epoch", "any")
        drawn = np.array([s for b in range(-(-args.windows // batch_size)) for s, _ in stream.batch(b)])
        drawn = drawn[:args.windows]
        for i, source in enumerate(sources):
            running = np.cumsum(drawn == i) - source.weight * np.arange(1, len(drawn) + 1)
            count = int((drawn == i).sum())
            print(f"| {batch_size} | {source.name} | {source.weight:.2f} | {count:,} | {count / len(drawn):.4f} | "
                  f"{np.abs(running).max():.1f} |")


if __name__ == "__main__":
    main()
