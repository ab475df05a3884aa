"""`prepare` never costs data: --overwrite replaces only the files prepare writes, an --out that overlaps an input
is refused, and nothing (a file, a worker, a temporary folder) is left behind by an error or a signal."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from helpers import REPO, snapshot, subprocess_env
from test_cli_errors import assert_one_error_line, command, leftovers

from accel_train.data.demo_corpus import stories
from accel_train.atomic import staging_prefix

SEP = "<|endoftext|>"
BYTE = ["--tokenizer", "byte", "--separator", SEP, "--val_fraction", "0.2", "--block_size", "16", "--workers", "1"]


def prepare(*args, cwd=REPO, stdin=None) -> subprocess.CompletedProcess:
    """`python -m accel_train.prepare ARGS` run in `cwd` with this checkout's package."""
    return subprocess.run(command("prepare", *args), cwd=cwd, input=stdin, capture_output=True, text=True,
                          env=subprocess_env({"PYTHONPATH": str(REPO)}), timeout=300)


def corpus_text(n=60, seed=0):
    return SEP.join(stories(n, seed=seed))


def assert_refused(result, *words):
    assert_one_error_line(result.returncode, result.stderr, *words)


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


def poll(condition, timeout: float = 120) -> bool:
    """Wait until condition() holds, checking every 50 ms for at most timeout seconds; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gone(process: psutil.Process) -> bool:
    """Ended: no such process any more, or a zombie that only waits for its new parent to reap it."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def careless_parent(left: str):
    """A preexec_fn leaving the child SIGINT and SIGTERM as a parent may: untouched, blocked or ignored."""
    def setup():
        if left == "blocked":
            signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
        elif left == "ignored":
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
    return setup


@pytest.fixture
def stalled_prepare(tmp_path, request):
    """A `prepare --workers 2` caught in the middle of its work: its input is a pipe that got 5 MB of documents
    and stays open, so prepare has started its workers and its staging folder, and waits for more text. The
    test's `parent` parameter says how its parent left the signals (untouched by default).
    Yields (the process, its workers, its --out, the file that gets its stderr)."""
    pipe, out = tmp_path / "corpus.pipe", tmp_path / "out"
    os.mkfifo(pipe)
    writer = os.open(pipe, os.O_RDWR)  # opens without a reader; while it is open, prepare sees no end of input
    text = (corpus_text(200) + SEP) * (5_000_000 // len(corpus_text(200)) + 1)

    def feed():  # its own descriptor: once prepare and `writer` are gone, it ends with a broken pipe, not a hang
        with contextlib.suppress(BrokenPipeError), open(pipe, "w") as copy:
            copy.write(text)
    threading.Thread(target=feed, daemon=True).start()
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe, which orphaned workers would hold open
    with open(stderr, "w") as err:
        proc = subprocess.Popen(command("prepare", "--input", pipe, "--out", out, "--tokenizer", "byte", "--separator",
                                        SEP, "--workers", "2"), cwd=REPO,
                                env=subprocess_env({"PYTHONPATH": str(REPO)}), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True,
                                preexec_fn=careless_parent(getattr(request, "param", "untouched")))
    parent = psutil.Process(proc.pid)

    def working():
        return len(parent.children()) == 2 and bool(leftovers(tmp_path))
    assert poll(lambda: proc.poll() is not None or working()) and proc.poll() is None, stderr.read_text()
    workers = parent.children()
    yield proc, workers, out, stderr
    os.close(writer)
    for process in [parent, *workers]:  # only if the test failed: leave no process of ours behind
        if not gone(process):
            process.kill()
    proc.wait()


@pytest.mark.parametrize("sig, group, stalled_prepare", [(signal.SIGTERM, False, "untouched"),
                                                       (signal.SIGINT, True, "ignored"),
                                                       (signal.SIGTERM, True, "blocked")],
                         indirect=["stalled_prepare"])
def test_a_signal_ends_prepare_with_its_workers_and_staging(stalled_prepare, tmp_path, sig, group):
    """SIGTERM as a scheduler sends it (to prepare alone), SIGINT as Ctrl-C does and SIGTERM as `kill -- -PGID`
    does (to the whole process group, workers too), whatever the parent left: scripts/soak_prepare_signals.py
    sends hundreds at random moments."""
    proc, workers, out, stderr = stalled_prepare
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig, stderr.read_text()
    lines = stderr.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and sig.name in lines[0], lines
    assert poll(lambda: all(map(gone, workers)))
    assert not leftovers(tmp_path) and not out.exists()


def test_a_killed_prepare_takes_its_workers_along_and_the_next_one_cleans_up(stalled_prepare, tmp_path):
    proc, workers, out, _ = stalled_prepare
    proc.kill()
    proc.wait()
    assert poll(lambda: all(map(gone, workers))), "the kernel ends the workers of a killed prepare"
    assert leftovers(tmp_path), "a killed process cleans up nothing"
    live = tmp_path / f"{staging_prefix(out)}{socket.gethostname()}-{os.getpid()}"  # a running prepare's
    other_host = tmp_path / f"{staging_prefix(out)}elsewhere-{proc.pid}"  # pid means nothing here
    for folder in (live, other_host):
        folder.mkdir()
        (folder / "train.bin").write_bytes(b"in progress")
    (tmp_path / "raw.txt").write_text(corpus_text())
    result = prepare("--input", tmp_path / "raw.txt", "--out", out, *BYTE)
    assert result.returncode == 0, result.stderr
    assert sorted(leftovers(tmp_path)) == sorted([live.name, other_host.name])
