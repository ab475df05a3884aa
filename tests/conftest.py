import fcntl
import os
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from accel_train.data.demo_corpus import write_demo_data
from helpers import GPT2_FILES

# One thread per process: the test files run side by side, many tests start trainers of their own, and the tiny
# models gain nothing from threads; with each process taking every core, the threads only fight (set before any
# subprocess starts, so every trainer, prepare and launcher the tests start inherits it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# For the same reason inductor compiles in the process that compiles: its pool of compile workers, each a Python
# that imports torch, cost a compiled tiny run three times its compiling here (65 s against 21 s on 2 cores).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

# tiktoken's cache names for GPT-2's files: the sha1 of each one's download address
TIKTOKEN_CACHE_NAMES = {"encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
                        "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee"}


@pytest.fixture(scope="session", autouse=True)
def gpt2_offline(tmp_path_factory):
    """GPT-2's two files, carried as fixtures, laid out as tiktoken's cache for this process and every
    subprocess: `tiktoken.get_encoding("gpt2")` is the real encoding, with no network."""
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    for name, cache_name in TIKTOKEN_CACHE_NAMES.items():
        shutil.copyfile(GPT2_FILES / name, cache / cache_name)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return cache


def made_once(tmp_path_factory, name: str, make) -> Path:
    """tmp/`name`, made by `make(path)` once per test run however many pytest-xdist workers ask: the first makes it
    while the others wait on a lock, then all read the same files."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a worker that failed to make it left part of it
            make(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """The built-in demo corpus, written once per test run."""
    return made_once(tmp_path_factory, "demo_data", write_demo_data)


def train_tiny_run(out: Path, data_dir: Path) -> None:
    """A tiny model trained for 24 steps on data_dir through the real CLI; its stdout is kept as out/stdout.txt."""
    from helpers import TINY_MODEL, train

    result = train(["--data_dir", str(data_dir), "--out_dir", str(out), *TINY_MODEL, "--max_iters", "24",
                    "--warmup_steps", "2", "--batch_size", "8", "--gradient_accumulation_steps", "1",
                    "--learning_rate", "3e-3", "--min_lr", "3e-4", "--eval_interval", "12", "--eval_iters", "2",
                    "--log_interval", "3", "--sample_tokens", "40"])
    assert result.returncode == 0, result.stderr[-3000:]
    (out / "stdout.txt").write_text(result.stdout)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, demo_data_dir):
    """(out_dir, stdout) of a tiny model trained for 24 steps on the demo corpus, once per test run; shared by
    the sampling, export and plot tests, which only read it."""
    out = made_once(tmp_path_factory, "trained_run", lambda path: train_tiny_run(path, demo_data_dir))
    return out, (out / "stdout.txt").read_text()


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide state; tests that build their own Accelerator in this process
    start and end with none, as Accelerate's own tests do."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
