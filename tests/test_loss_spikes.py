"""spike_sigma: a step whose loss is an outlier (here a batch of garbage tokens, written into a copy of the data at
the windows that step draws) changes no weight, while the same run without the option takes the update; a run
killed (SIGKILL) before the spike and resumed decides exactly as the uninterrupted one, from the history it saved."""

import json
import re
import shutil

import numpy as np
from safetensors.numpy import load_file

from accel_train.data.stream import WindowStream
from helpers import TINY_MODEL, run_side_by_side, command, TRAIN
from interrupt import finish, kill_all, reached_step, start, wait_until

SPIKE_STEP, MAX_ITERS, BATCH, BLOCK = 12, 14, 8, 64
RUN = ["--max_iters", str(MAX_ITERS), "--warmup_steps", "2", "--batch_size", str(BATCH), "--block_size", str(BLOCK),
       "--gradient_accumulation_steps", "1", "--eval_interval", "100", "--eval_iters", "1", "--log_interval", "1",
       "--checkpoint_interval", "1", "--keep_last", "0", "--learning_rate", "3e-3", "--min_lr", "3e-4",
       "--demo_data", "false", "--plot", "false", "--sample_tokens", "0", "--seed", "5", *TINY_MODEL]
SKIP = ["--spike_sigma", "3", "--spike_window", "8"]


def corrupted_copy(data_dir, out):
    """A copy of the data whose windows drawn at SPIKE_STEP hold random bytes: a finite loss spike."""
    shutil.copytree(data_dir, out)
    stream = WindowStream.of_folder(out, BLOCK, BATCH, seed=5)  # the stream the run draws
    starts = [first for _, first in stream.batch(SPIKE_STEP - 1)]  # one stream batch per step here
    tokens = np.memmap(out / "train.bin", dtype=np.uint16, mode="r+")
    rng = np.random.default_rng(0)
    for first in starts:
        tokens[first:first + BLOCK + 1] = rng.integers(0, 256, BLOCK + 1)
    tokens.flush()
    return out


def weights(out, step):
    return load_file(str(out / "checkpoints" / f"step_{step}" / "model.safetensors"))


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def rows(out):
    return {row["step"]: row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def args(data, out, *extra):
    return ["--data_dir", str(data), "--out_dir", str(out), *RUN, *extra]


def test_a_spike_is_skipped_and_a_resumed_run_skips_it_alike(demo_data_dir, tmp_path):
    data = corrupted_copy(demo_data_dir, tmp_path / "data")
    guarded, unguarded, resumed, log = tmp_path / "guarded", tmp_path / "unguarded", tmp_path / "resumed", \
        tmp_path / "log.txt"
    results = run_side_by_side([("guarded", command(TRAIN, args(data, guarded, *SKIP)), []),
                                ("unguarded", command(TRAIN, args(data, unguarded)), [])])
    for name, (status, stderr, _) in results.items():
        assert status == 0, (name, stderr[-3000:])

    before, at = SPIKE_STEP - 1, SPIKE_STEP
    assert same(weights(guarded, before), weights(unguarded, before))  # nothing skipped before the spike
    assert same(weights(guarded, at), weights(guarded, before))  # the spike's update was skipped
    assert not same(weights(unguarded, at), weights(unguarded, before))  # without the option it was applied
    guarded_rows = rows(guarded)
    assert guarded_rows[at]["skipped_steps"] == 1 and guarded_rows[before]["skipped_steps"] == 0
    assert guarded_rows[at]["loss_z"] > 3 or guarded_rows[at]["grad_norm_z"] > 3
    assert guarded_rows[MAX_ITERS]["skipped_steps"] == 1

    # Killed a few steps before the spike (fewer than the half window it needs to judge from a history of its own)
    proc = start(args(data, resumed, *SKIP), 1, log)
    try:
        assert wait_until(proc, lambda: reached_step(resumed) >= SPIKE_STEP - 3), log.read_text()[-3000:]
    finally:
        kill_all(proc)
    assert finish(args(data, resumed, *SKIP), 1, log) == 0, log.read_text()[-3000:]
    resumed_from = int(re.search(r"resuming from .* at step (\d+)", log.read_text()).group(1))
    assert resumed_from < SPIKE_STEP, "the run was killed too late to test a resume before the spike"
    final = f"checkpoints/step_{MAX_ITERS}/model.safetensors"
    assert (resumed / final).read_bytes() == (guarded / final).read_bytes()
    assert rows(resumed)[MAX_ITERS]["skipped_steps"] == 1
