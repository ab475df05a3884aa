"""A stop signal during a long evaluation ends the run in a small part of that evaluation's time, with a checkpoint
and exit 0; the interrupted evaluation is dropped, redone on resume, and the run ends as one never interrupted.

An evaluation can outlast a scheduler's grace period (torchrun allows 30 s), so it must not wait for its end.
The whole evaluation is timed in an uninterrupted run of the same test, so the bound is a ratio, not a constant.
"""

import signal
import time

from accel_train.checkpoint import list_checkpoints, verify
from helpers import TINY_MODEL, snapshot
from interrupt import (SIGNAL_GRACE_S, comparable_rows, finish, kill_all, reached_step, start, stopped_cleanly,
                       trainer_processes, wait_until)

EVAL_INTERVAL, MAX_ITERS = 4, 8
RUN = ["--max_iters", str(MAX_ITERS), "--warmup_steps", "2", "--batch_size", "4", "--block_size", "64",
       "--gradient_accumulation_steps", "2", "--eval_interval", str(EVAL_INTERVAL), "--log_interval", "1",
       "--checkpoint_interval", "0", "--learning_rate", "3e-3", "--min_lr", "3e-4", "--demo_data", "false",
       "--plot", "false", "--sample_tokens", "0", *TINY_MODEL]


def args(data_dir, out_dir, eval_iters: int):
    return ["--data_dir", str(data_dir), "--out_dir", str(out_dir), *RUN, "--eval_iters", str(eval_iters)]


def until_step(proc, out_dir, step: int) -> float:
    """Wait until metrics.jsonl reaches `step`; the time it did."""
    assert wait_until(proc, lambda: reached_step(out_dir) >= step), "the run ended early"
    return time.monotonic()


def first_evaluation_s(proc, out_dir) -> float:
    """How long the first evaluation takes (with its step), waited for."""
    before = until_step(proc, out_dir, EVAL_INTERVAL - 1)
    return until_step(proc, out_dir, EVAL_INTERVAL) - before


def sigterm_in_evaluation(proc, victim, out_dir, evaluation_begins, evaluation_s: float) -> dict:
    """SIGTERM to `victim` a quarter into the evaluation that begins once `evaluation_begins()` (a signal a little
    earlier must stop as soon), then wait for the run to end: what `stopped_cleanly` reads."""
    assert wait_until(proc, evaluation_begins), "the run ended early"
    time.sleep(evaluation_s / 4)
    sent = time.monotonic()
    victim.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=SIGNAL_GRACE_S)
    saved = list_checkpoints(out_dir)
    return {"returncode": returncode, "exit_s": time.monotonic() - sent, "stopped_at": reached_step(out_dir),
            "newest": saved[-1].name if saved else None}


def check_stop(event: dict, step: int, evaluation_s: float, out_dir, log) -> None:
    assert stopped_cleanly(event) and event["stopped_at"] == step, (event, log.read_text()[-3000:])
    assert event["exit_s"] < evaluation_s / 2, (event, evaluation_s)  # the rest of the evaluation was not waited for
    assert verify(out_dir / "checkpoints" / event["newest"]) is None
    assert "val_loss" not in comparable_rows(out_dir)[-1]  # nothing recorded from the partial evaluation


def test_sigterm_in_evaluation_stops_soon_and_the_resumed_run_is_exact(demo_data_dir, tmp_path):
    reference, out, log = tmp_path / "reference", tmp_path / "out", tmp_path / "log.txt"
    proc = start(args(demo_data_dir, reference, 2000), 1, log)
    try:
        evaluation_s = first_evaluation_s(proc, reference)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        kill_all(proc)
    proc = start(args(demo_data_dir, out, 2000), 1, log)
    try:
        event = sigterm_in_evaluation(proc, proc, out, lambda: reached_step(out) >= EVAL_INTERVAL - 1, evaluation_s)
    finally:
        kill_all(proc)
    check_stop(event, EVAL_INTERVAL, evaluation_s, out, log)

    saved = snapshot(out / "checkpoints")
    proc = start([*args(demo_data_dir, out, 2000), "--resume", "auto"], 1, log)  # redoes that evaluation first
    try:
        event = sigterm_in_evaluation(proc, proc, out, lambda: "resuming from" in log.read_text(), evaluation_s)
    finally:
        kill_all(proc)
    check_stop(event, EVAL_INTERVAL, evaluation_s, out, log)
    assert snapshot(out / "checkpoints") == saved  # stopped again in the same evaluation: nothing new to save

    assert finish(args(demo_data_dir, out, 2000), 1, log) == 0, log.read_text()[-3000:]
    final = f"checkpoints/step_{MAX_ITERS}/model.safetensors"
    assert (out / final).read_bytes() == (reference / final).read_bytes()
    assert comparable_rows(out) == comparable_rows(reference)  # the cut evaluation redone, the next one unchanged


def test_sigterm_to_one_of_two_processes_in_evaluation_stops_both_soon(demo_data_dir, tmp_path):
    """Evaluation batches end in collectives: a rank that stopped alone would leave the other waiting forever."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    proc = start(args(demo_data_dir, out, 1000), 2, log)
    try:
        rank_1 = trainer_processes(proc, 2)[1]
        evaluation_s = first_evaluation_s(proc, out)
        event = sigterm_in_evaluation(proc, rank_1, out, lambda: reached_step(out) >= 2 * EVAL_INTERVAL - 1,
                                      evaluation_s)
    finally:
        kill_all(proc)
    check_stop(event, 2 * EVAL_INTERVAL, evaluation_s, out, log)
