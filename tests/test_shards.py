"""Sharded data: prepare writes a split as shards that read as one file, a split whose shards are of odd sizes
gives the same windows and the same training as one file, and a prepare killed mid-shard resumes to the
same bytes, keeping the shards it had finished."""

import json
import os
import subprocess
import threading

import numpy as np
import pytest
from helpers import REPO, TINY_MODEL, TINYSTORIES, subprocess_env, train
from test_cli_errors import command, leftovers
from test_prepare_safety import SEP, corpus_text, poll, prepare

from accel_train.data.folder import open_split
from accel_train.data.shards import PROGRESS_FILE
from accel_train.training.tracking import read_metrics

BYTE = ["--tokenizer", "byte", "--separator", SEP, "--val_fraction", "0.1", "--block_size", "16"]


def split_tokens(folder, split):
    """The split's tokens as the files meta.json lists hold them, one after the other."""
    meta = json.loads((folder / "meta.json").read_text())
    return np.concatenate([np.fromfile(folder / shard["file"], dtype=meta["dtype"])
                           for shard in meta["shards"][split]])


def files(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_shards_are_the_one_file_split_cut_to_size(tmp_path):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    for out, extra in ((one, []), (sharded, ["--shard_tokens", "7000"])):
        result = prepare("--input", TINYSTORIES, "--out", out, *BYTE, "--workers", "2", *extra)
        assert result.returncode == 0, result.stderr
    meta = json.loads((sharded / "meta.json").read_text())
    assert sorted(files(one)) == ["meta.json", "train.bin", "val.bin"], "a split of one shard keeps its old name"
    for split in ("train", "val"):
        shards = meta["shards"][split]
        assert len(shards) > 2 and [s["file"] for s in shards] == [f"{split}_{i:05d}.bin" for i in range(len(shards))]
        assert {s["tokens"] for s in shards[:-1]} == {7000} and 0 < shards[-1]["tokens"] <= 7000
        assert np.array_equal(split_tokens(sharded, split), np.fromfile(one / f"{split}.bin", dtype=np.uint16))
        assert open_split(str(sharded), split).num_tokens == meta["tokens"][split] == sum(s["tokens"] for s in shards)


@pytest.fixture(scope="module")
def odd_shards(tmp_path_factory):
    """The same tokens as one file and as train shards of 1,500, 9 (less than a block), 2,000 and 1,491 tokens."""
    root = tmp_path_factory.mktemp("odd_shards")
    tokens = np.random.default_rng(0).integers(0, 257, 5000, dtype=np.uint16)
    val = np.random.default_rng(1).integers(0, 257, 1000, dtype=np.uint16)
    meta = {"dtype": "uint16", "vocab_size": 257, "tokenizer": "byte", "eot_token": 256}
    one, sharded = root / "one", root / "sharded"
    for folder in (one, sharded):
        folder.mkdir()
        val.tofile(folder / "val.bin")
    tokens.tofile(one / "train.bin")
    (one / "meta.json").write_text(json.dumps({**meta, "tokens": {"train": 5000, "val": 1000}}))
    cuts = np.cumsum([0, 1500, 9, 2000, 1491])
    listed = []
    for i, (start, stop) in enumerate(zip(cuts[:-1], cuts[1:])):
        tokens[start:stop].tofile(sharded / f"train_{i:05d}.bin")
        listed.append({"file": f"train_{i:05d}.bin", "tokens": int(stop - start)})
    (sharded / "meta.json").write_text(json.dumps({**meta, "tokens": {"train": 5000, "val": 1000}, "shards": {
        "train": listed, "val": [{"file": "val.bin", "tokens": 1000}]}}))
    return one, sharded


def test_windows_span_shards_of_any_size_as_if_they_were_one_file(odd_shards):
    one, sharded = (open_split(str(folder), "train") for folder in odd_shards)
    assert sharded.num_tokens == one.num_tokens and len(sharded.paths) == 4
    block = 32
    starts = np.arange(one.num_windows(block))  # every window, those across the 9-token shard among them
    for got, want in zip(sharded.windows(starts, block), one.windows(starts, block)):
        assert got.equal(want)
    for start, stop in [(0, 5000), (1490, 1515), (1500, 1509), (1503, 1504), (4990, 6000), (7, 7)]:
        assert np.array_equal(sharded.tokens(start, stop), one.tokens(start, stop))


def test_training_on_odd_shards_is_training_on_one_file(odd_shards, tmp_path):
    args = ["--demo_data", "false", "--max_iters", "3", "--warmup_steps", "1", "--batch_size", "4", "--block_size",
            "32", "--eval_interval", "3", "--eval_iters", "1", "--log_interval", "1", *TINY_MODEL,
            "--model.vocab_size", "320", "--plot", "false", "--sample_tokens", "0"]
    losses = []
    for folder in odd_shards:
        out = tmp_path / folder.name
        result = train([*args, "--data_dir", str(folder), "--out_dir", str(out)])
        assert result.returncode == 0, result.stderr
        losses.append([row.get("loss") for row in read_metrics(out)])
    assert losses[0] == losses[1] and len(losses[0]) >= 3


# ---- a prepare killed mid-shard ----

TEXT = (corpus_text(200) + SEP) * 60  # 7 MB: about 20 shards of 300,000 byte tokens
SHARDED = [*BYTE, "--shard_tokens", "300000"]


def prepare_from_pipe(pipe, out, args, text, end=True):
    """`prepare` reading `text` from the named pipe `pipe`; where `end` is False the pipe stays open after the
    text, so prepare waits for more. Returns (the process, the thread that feeds the pipe, a function that
    closes the pipe, to be called once the thread is done)."""
    if not pipe.exists():
        os.mkfifo(pipe)
    writer = os.open(pipe, os.O_RDWR)  # opens without a reader; while it is open, prepare sees no end of input

    def feed():
        with os.fdopen(os.dup(writer), "w") as copy:
            copy.write(text)
        if end:
            os.close(writer)
    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    proc = subprocess.Popen(command("prepare", "--input", pipe, "--out", out, *args), cwd=REPO, text=True,
                            env=subprocess_env({"PYTHONPATH": str(REPO)}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    return proc, thread, lambda: None if end else os.close(writer)


def killed_mid_shard(tmp_path, out):
    """Prepare `out` from the first 5 MB of TEXT, SIGKILLed once it has read them all and finished a shard (it
    waits for more input); returns the line a resume prints and {shard file: (inode, mtime)} of the shards
    it had finished."""
    # one worker: each chunk is written as soon as it is read, whatever is still to come
    proc, feeder, close = prepare_from_pipe(tmp_path / "corpus.txt", out, [*SHARDED, "--workers", "1"],
                                            TEXT[:5_000_000], end=False)
    staging = []

    def read_all_and_finished_a_shard():
        staging[:] = [tmp_path / name for name in leftovers(tmp_path)]
        done = not feeder.is_alive() and any((folder / PROGRESS_FILE).exists() for folder in staging)
        return proc.poll() is not None or done
    assert poll(read_all_and_finished_a_shard) and proc.poll() is None, proc.stderr.read()
    proc.kill()
    proc.wait()
    close()
    staging = next(folder for folder in staging if (folder / PROGRESS_FILE).exists())
    record = json.loads((staging / PROGRESS_FILE).read_text())
    kept = f"keeping {len(record['shards']['train'])} train and {len(record['shards']['val'])} val shards"
    finished = [name for shards in record["shards"].values() for name, tokens in shards if tokens == 300_000]
    return kept, {name: (os.stat(staging / name).st_ino, os.stat(staging / name).st_mtime_ns) for name in finished}


def run_to_the_end(tmp_path, out, args):
    proc, _, _ = prepare_from_pipe(tmp_path / "corpus.txt", out, [*args, "--workers", "2"], TEXT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return stdout


def test_a_prepare_killed_mid_shard_resumes_to_the_same_bytes_keeping_its_finished_shards(tmp_path):
    out, reference = tmp_path / "out", tmp_path / "reference"
    kept, finished = killed_mid_shard(tmp_path, out)
    run_to_the_end(tmp_path, reference, SHARDED)  # uninterrupted, from the same pipe
    stdout = run_to_the_end(tmp_path, out, SHARDED)
    assert "resuming the unfinished prepare" in stdout and kept in stdout, stdout
    assert files(out) == files(reference) and len(files(out)) > 4
    for name, (inode, mtime) in finished.items():  # moved into place, never written again
        assert (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) == (inode, mtime)
    assert not leftovers(tmp_path)


def test_a_rerun_with_other_arguments_starts_over_and_says_so(tmp_path):
    out, reference = tmp_path / "out", tmp_path / "reference"
    killed_mid_shard(tmp_path, out)
    reseeded = [*SHARDED, "--seed", "1"]
    stdout = run_to_the_end(tmp_path, out, reseeded)
    assert "starting over" in stdout and "other arguments" in stdout, stdout
    run_to_the_end(tmp_path, reference, reseeded)
    assert files(out) == files(reference)
