"""`prepare` never costs data: --overwrite replaces only the files prepare writes, an --out that overlaps an input
is refused, and nothing (a file, a worker, a temporary folder) is left behind by an error or a signal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from accel_train.demo_corpus import stories
from helpers import REPO, snapshot, subprocess_env

SEP = "<|endoftext|>"
BYTE = ["--tokenizer", "byte", "--separator", SEP, "--val_fraction", "0.2", "--block_size", "16", "--workers", "1"]


def prepare(*args, cwd=REPO, stdin=None) -> subprocess.CompletedProcess:
    """`python -m accel_train.prepare ARGS` run in `cwd` with this checkout's package."""
    return subprocess.run([sys.executable, "-m", "accel_train.prepare", *map(str, args)], cwd=cwd, input=stdin,
                          env=subprocess_env({"PYTHONPATH": str(REPO)}), capture_output=True, text=True, timeout=300)


def corpus_text(n=60, seed=0):
    return SEP.join(stories(n, seed=seed))


def leftovers(root: Path) -> list[str]:
    """Temporary folders anywhere under root: prepare's are hidden and named after --out."""
    return [str(p.relative_to(root)) for p in root.rglob(".*") if ".tmp" in p.name]


def assert_refused(result, *words):
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words), (words, lines[0])


def test_overwrite_replaces_only_the_files_prepare_writes(tmp_path):
    mine = tmp_path / "prep" / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "NOTES.md").write_text("my notes")
    (mine / "sub" / "keep.txt").write_text("kept")
    (mine / "train.bin").write_bytes(b"old tokens")
    (mine / "tokenizer.json").write_text("an earlier BPE")
    (tmp_path / "raw.txt").write_text(corpus_text())
    result = prepare("--input", tmp_path / "raw.txt", "--out", mine, "--overwrite", *BYTE)
    assert result.returncode == 0, result.stderr
    assert (mine / "NOTES.md").read_text() == "my notes" and (mine / "sub" / "keep.txt").read_text() == "kept"
    assert (mine / "train.bin").read_bytes() != b"old tokens"
    assert json.loads((mine / "meta.json").read_text())["tokenizer"] == "byte"
    assert sorted(p.name for p in mine.iterdir()) == ["NOTES.md", "meta.json", "sub", "tokenizer.json", "train.bin",
                                                     "val.bin"]
    assert not leftovers(tmp_path)


def overlap_cases(root: Path) -> dict:
    """{case: prepare arguments} where --out is, holds or lies inside one of the inputs, however it is spelled."""
    mine = root / "prep" / "mine"
    (mine / "texts").mkdir(parents=True)
    (mine / "raw_corpus.txt").write_text(corpus_text())
    (mine / "texts" / "a.txt").write_text(corpus_text(seed=1))
    (mine / "NOTES.md").write_text("my notes")
    (mine / "data.jsonl").write_text(json.dumps({"text": "a story"}) + "\n")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "b.txt").write_text(corpus_text(seed=2))
    (root / "link").symlink_to(mine, target_is_directory=True)
    linked = root / "linked"
    linked.mkdir()
    (linked / "c.txt").symlink_to(mine / "raw_corpus.txt")
    over = ["--out", mine, "--overwrite"]
    return {
        "an input file inside --out": ["--input", mine / "raw_corpus.txt", *over],
        "--out is the input folder": ["--input", mine, *over],
        "an input folder inside --out": ["--input", mine / "texts", *over],
        "--out inside an input folder": ["--input", corpus, "--out", corpus / "prepared"],
        "--out inside an input folder, not yet there": ["--input", corpus, "--out", corpus / "new" / "deeper"],
        "--out through a symlink": ["--input", mine / "raw_corpus.txt", "--out", root / "link", "--overwrite"],
        "an input spelled with ..": ["--input", mine / "texts" / ".." / "raw_corpus.txt", *over],
        "a symlinked file in an input folder": ["--input", linked, *over],
        "--out is the local dataset": ["--dataset", mine, *over],
        "--out holds the local dataset": ["--dataset", mine / "texts", *over],
    }


def test_an_out_that_overlaps_an_input_is_refused(tmp_path):
    cases = overlap_cases(tmp_path)
    before = snapshot(tmp_path)
    for case, args in cases.items():
        result = prepare(*args, *BYTE)
        assert_refused(result, "--out", "input")
        assert snapshot(tmp_path) == before, case
        assert not leftovers(tmp_path), case
    assert not (tmp_path / "corpus" / "prepared").exists() and not (tmp_path / "corpus" / "new").exists()


@pytest.mark.parametrize("out", [".", "..", "./"])
def test_the_current_folder_is_never_an_out(tmp_path, out):
    work = tmp_path / "work"
    work.mkdir()
    (work / "important.txt").write_text("mine")
    (tmp_path / "raw.txt").write_text(corpus_text())
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        result = prepare("--input", tmp_path / "raw.txt", "--out", out, *extra, *BYTE, cwd=work)
        assert_refused(result, "--out")
        assert snapshot(tmp_path) == before and not leftovers(tmp_path)
        assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}")]


def test_a_pipe_is_an_input_read_once(tmp_path):
    result = prepare("--input", "/dev/stdin", "--out", tmp_path / "out", *BYTE, stdin=corpus_text())
    assert result.returncode == 0, result.stderr
    assert sum(json.loads((tmp_path / "out" / "meta.json").read_text())["documents"].values()) == 60
    result = prepare("--input", "/dev/stdin", "--out", tmp_path / "bpe", *BYTE, "--tokenizer", "bpe",
                     stdin=corpus_text())
    assert_refused(result, "--tokenizer bpe", "pipe")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
