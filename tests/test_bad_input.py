"""Every mistake a user can make before training starts: one `error:` line, exit status 2, nothing on disk harmed.

All cases run as real trainer processes, side by side to save time.
"""

import json

import numpy as np
import pytest

from helpers import TINY_MODEL, TRAIN, assert_one_error_line, command, run_side_by_side, snapshot


def write_data(folder, train_tokens=5000, val_tokens=1000, meta=None):
    """A small valid data folder (uint16 byte tokens) unless the arguments say otherwise."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        if n is not None:
            rng.integers(0, 257, n, dtype=np.uint16).tofile(folder / f"{split}.bin")
    meta = meta or {"dtype": "uint16", "vocab_size": 257, "tokens": {"train": train_tokens, "val": val_tokens}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def setup_cases(root):
    """(name, trainer arguments, words the message must contain) for each mistake, with its files made."""
    base = ["--demo_data", "false", "--max_iters", "4", "--warmup_steps", "1", "--batch_size", "2",
            "--block_size", "32", *TINY_MODEL, "--model.vocab_size", "320", "--plot", "false", "--sample_tokens", "0"]
    good = write_data(root / "good")

    def run_with(data, out=None, *extra):
        """Each case its own out_dir (the cases run side by side, and an out_dir takes one run at a time)."""
        return [*base, "--data_dir", str(data), "--out_dir", str(root / (out or f"out_{data.name}")), *extra]

    no_val = write_data(root / "no_val", val_tokens=None)
    empty = write_data(root / "empty")
    (empty / "train.bin").write_bytes(b"")
    odd = write_data(root / "odd")
    (odd / "train.bin").write_bytes((odd / "train.bin").read_bytes()[:-1])
    short_meta = write_data(root / "short_meta", meta={"dtype": "uint16", "vocab_size": 257,
                                                        "tokens": {"train": 9000, "val": 1000}})
    wrong_dtype = write_data(root / "wrong_dtype", meta={"dtype": "uint32", "vocab_size": 257,
                                                          "tokens": {"train": 5000, "val": 1000}})
    big_vocab = write_data(root / "big_vocab", meta={"dtype": "uint16", "vocab_size": 50257,
                                                      "tokens": {"train": 5000, "val": 1000}})
    bad_json = root / "bad.json"
    bad_json.write_text('{\n  "max_iters": 10,\n  "batch_size": 4,,\n}\n')
    string_int = root / "string_int.json"
    string_int.write_text('{"max_iters": "10"}')
    a_file = root / "a_file"
    a_file.write_text("not a folder")
    latin1 = root / "latin1.json"
    latin1.write_bytes('{"run_name": "café"}'.encode("latin-1"))
    (root / "out_huge").mkdir()
    (root / "out_huge" / "notes.txt").write_text("an earlier file in out_dir stays as it is")
    return [
        ("missing data folder", run_with(root / "nowhere"), ["nowhere", "does not exist"]),
        ("missing split", run_with(no_val), ["no val split"]),
        ("empty .bin", run_with(empty), ["train.bin", "empty"]),
        ("odd-sized .bin", run_with(odd), ["train.bin", "not a whole number"]),
        ("meta.json token count", run_with(short_meta), ["train.bin", "meta.json", "9,000"]),
        ("meta.json dtype", run_with(wrong_dtype), ["uint32", "meta.json"]),
        ("meta.json vocabulary", run_with(big_vocab), ["50257", "model.vocab_size"]),
        ("malformed JSON", ["--config", str(bad_json)], ["bad.json", "line 3"]),
        ("unknown key", run_with(good, "out_unknown", "--max_iter", "5"), ["max_iter", "did you mean 'max_iters'"]),
        ("ill-typed key", run_with(good, "out_ill_typed", "--max_iters", "ten"), ["max_iters", "int", "ten"]),
        ("ill-typed JSON key", ["--config", str(string_int)], ["max_iters", "int"]),
        ("unwritable out_dir", run_with(good, "a_file/out"), ["out_dir", "a_file"]),
        ("resume from nothing", run_with(good, "out_resume", "--resume", str(root / "no_checkpoint")),
         ["no_checkpoint", "no such folder"]),
        ("seed beyond numpy's", run_with(good, "out_seed", "--seed", str(2**32)), ["seed", str(2**32)]),
        ("negative seed", run_with(good, "out_negative_seed", "--seed", "-1"), ["seed", "-1"]),
        ("vocabulary beyond 32-bit ids", run_with(good, "out_vocab", "--model.vocab_size", "100000000000"),
         ["model.vocab_size", "100000000000"]),
        ("config not UTF-8", ["--config", str(latin1)], ["latin1.json", "not UTF-8"]),
        # 2^52 parameters: beyond any machine's memory, so the plan refuses it before anything is allocated
        ("model too large for memory", run_with(good, "out_huge", "--model.vocab_size", str(2**32),
                                                "--model.hidden_size", str(2**20)),
         ["even at micro-batch 1", "smaller model"]),
    ]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    cases = setup_cases(root)
    before = snapshot(root), folders(root)
    results = run_side_by_side([(name, command(TRAIN, args), words) for name, args, words in cases])
    return results, before, (snapshot(root), folders(root))


def folders(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())


CASES = ["missing data folder", "missing split", "empty .bin", "odd-sized .bin", "meta.json token count",
         "meta.json dtype", "meta.json vocabulary", "malformed JSON", "unknown key", "ill-typed key",
         "ill-typed JSON key", "unwritable out_dir", "resume from nothing", "seed beyond numpy's", "negative seed",
         "vocabulary beyond 32-bit ids", "config not UTF-8", "model too large for memory"]


@pytest.mark.parametrize("name", CASES)
def test_mistake_ends_with_one_error_line_and_status_2(outcomes, name):
    status, stderr, words = outcomes[0][name]
    assert_one_error_line(status, stderr, *words)


def test_no_mistake_touches_existing_files(outcomes):
    _, (before, folders_before), (after, folders_after) = outcomes
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [name for name in after if name not in before]  # nor writes any
    assert folders_after == folders_before  # nor leaves a folder it made (an out_dir, its checkpoints/)
