"""spike_sigma: a step whose loss is an outlier (here a batch of garbage tokens, written into a copy of the data at
the windows that step draws) changes no weight, while the same run without the option takes the update; a run
killed (SIGKILL) before the spike and resumed decides exactly as the uninterrupted one, from the history it saved.
On 2 processes the loss that decides is the one averaged across them, and a spike in the gradient norm alone counts."""

import json
import re
import shutil

import numpy as np
from safetensors.numpy import load_file

from accel_train.data.stream import WindowStream
from helpers import TINY_MODEL, run_side_by_side, command, TRAIN, train
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


GRAD_SPIKE_STEP, LOSS_SPIKE_STEP = 9, 14  # on 2 processes, judged from the last 4 steps


def test_on_two_processes_a_spike_in_either_value_is_skipped_from_the_loss_of_both(demo_data_dir, tmp_path):
    """On 2 processes: at GRAD_SPIKE_STEP every window is one repeated common byte (a low loss, a gradient all in one
    direction: a spike in the gradient norm alone); at SPIKE_STEP only rank 1's windows are garbage, so rank 0's own
    loss is ordinary and only the loss averaged across the processes spikes. Both updates are skipped, and the
    history that decides holds the averaged losses the metrics rows show."""
    data = shutil.copytree(demo_data_dir, tmp_path / "data")
    stream = WindowStream.of_folder(data, BLOCK, BATCH, seed=5)  # batch b goes to rank b % 2: two per step
    tokens = np.memmap(data / "train.bin", dtype=np.uint16, mode="r+")
    for batch in (2 * (GRAD_SPIKE_STEP - 1), 2 * (GRAD_SPIKE_STEP - 1) + 1):
        for _, first in stream.batch(batch):
            tokens[first:first + BLOCK + 1] = ord(" ")
    for _, first in stream.batch(2 * (LOSS_SPIKE_STEP - 1) + 1):
        tokens[first:first + BLOCK + 1] = np.random.default_rng(0).integers(0, 256, BLOCK + 1)
    tokens.flush()
    out = tmp_path / "out"
    result = train(args(data, out, "--spike_sigma", "3", "--spike_window", "4", "--max_iters", str(LOSS_SPIKE_STEP)),
                   processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    logged = rows(out)
    grad, loss = logged[GRAD_SPIKE_STEP], logged[LOSS_SPIKE_STEP]
    assert grad["grad_norm_z"] > 3 >= grad["loss_z"] and grad["skipped_steps"] == 1, grad  # the gradient norm alone
    assert loss["loss_z"] > 3 >= loss["grad_norm_z"] and loss["skipped_steps"] == 2, loss  # the loss alone
    for step in (GRAD_SPIKE_STEP, LOSS_SPIKE_STEP):
        assert same(weights(out, step), weights(out, step - 1)), step  # rank 0, whose own loss was ordinary, skipped
    assert not same(weights(out, GRAD_SPIKE_STEP + 1), weights(out, GRAD_SPIKE_STEP))
    saved = json.loads((out / "checkpoints" / f"step_{LOSS_SPIKE_STEP}" / "trainer_state.json").read_text())
    last_four = range(LOSS_SPIKE_STEP - 3, LOSS_SPIKE_STEP + 1)
    assert saved["spike_history"]["loss"] == [logged[step]["loss"] for step in last_four]  # the averaged losses
    reasons = dict(re.findall(r"step (\d+): update skipped: (.*)", result.stdout))
    assert reasons.keys() == {str(GRAD_SPIKE_STEP), str(LOSS_SPIKE_STEP)}, result.stdout[-3000:]
    assert reasons[str(GRAD_SPIKE_STEP)].startswith("gradient norm") and "loss" not in reasons[str(GRAD_SPIKE_STEP)]
    assert reasons[str(LOSS_SPIKE_STEP)].startswith("loss") and "gradient" not in reasons[str(LOSS_SPIKE_STEP)]
