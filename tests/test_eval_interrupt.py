"""A stop signal during an evaluation ends the run with a checkpoint and exit 0 without waiting for the evaluation's
end; the interrupted evaluation is dropped, redone on resume, and the run ends as one never interrupted.

An evaluation can outlast a scheduler's grace period (torchrun allows 30 s), so it must not wait for its end. The
interrupted runs here evaluate 10 million batches per split, hours of work: that they stop at all is the proof,
with no clock that a loaded machine could upset. The signal is sent once the trainer has spent a few seconds of
CPU time past the step before the evaluation, which that step alone costs a small part of: the moment is a point
in the trainer's own work, not in wall time. `eval_iters` may change on resume, so the runs that finish evaluate
a few batches, the same as the uninterrupted reference.
"""

import signal
import time

import psutil

from accel_train.checkpointing.checkpoint import list_checkpoints, verify
from helpers import TINY_MODEL, snapshot
from interrupt import (SIGNAL_GRACE_S, comparable_rows, finish, kill_all, reached_step, start, stopped_cleanly,
                       trainer_processes, wait_until)

EVAL_INTERVAL, MAX_ITERS = 4, 8
ENDLESS, FEW = 10_000_000, 20  # evaluation batches per split
CPU_INTO_EVALUATION_S = 2.0  # far more than a step of this tiny model costs, far less than an endless evaluation
RUN = ["--max_iters", str(MAX_ITERS), "--warmup_steps", "2", "--batch_size", "4", "--block_size", "64",
       "--gradient_accumulation_steps", "2", "--eval_interval", str(EVAL_INTERVAL), "--log_interval", "1",
       "--checkpoint_interval", "0", "--learning_rate", "3e-3", "--min_lr", "3e-4", "--demo_data", "false",
       "--plot", "false", "--sample_tokens", "0", *TINY_MODEL]


def args(data_dir, out_dir, eval_iters: int):
    return ["--data_dir", str(data_dir), "--out_dir", str(out_dir), *RUN, "--eval_iters", str(eval_iters)]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def sigterm_in_evaluation(proc, victim: psutil.Process, out_dir, before_evaluation) -> dict:
    """Once `before_evaluation()` holds, wait until `victim` has worked CPU_INTO_EVALUATION_S more (it is then deep
    in the evaluation), SIGTERM it and wait for the run to end: what `stopped_cleanly` reads."""
    assert wait_until(proc, before_evaluation), "the run ended early"
    start_cpu = cpu_seconds(victim)
    assert wait_until(proc, lambda: cpu_seconds(victim) >= start_cpu + CPU_INTO_EVALUATION_S), "the run ended early"
    sent = time.monotonic()
    victim.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=SIGNAL_GRACE_S)
    saved = list_checkpoints(out_dir)
    return {"returncode": returncode, "exit_s": time.monotonic() - sent, "stopped_at": reached_step(out_dir),
            "newest": saved[-1].name if saved else None}


def check_stop(event: dict, step: int, out_dir, log) -> None:
    assert stopped_cleanly(event) and event["stopped_at"] == step, (event, log.read_text()[-3000:])
    assert verify(out_dir / "checkpoints" / event["newest"]) is None
    assert "val_loss" not in comparable_rows(out_dir)[-1]  # nothing recorded from the partial evaluation


def test_sigterm_in_evaluation_stops_it_and_the_resumed_run_is_exact(demo_data_dir, tmp_path):
    reference, out, log = tmp_path / "reference", tmp_path / "out", tmp_path / "log.txt"
    assert finish(args(demo_data_dir, reference, FEW), 1, log) == 0, log.read_text()[-3000:]

    proc = start(args(demo_data_dir, out, ENDLESS), 1, log)
    try:
        event = sigterm_in_evaluation(proc, psutil.Process(proc.pid), out,
                                      lambda: reached_step(out) >= EVAL_INTERVAL - 1)
    finally:
        kill_all(proc)
    check_stop(event, EVAL_INTERVAL, out, log)

    saved = snapshot(out / "checkpoints")
    proc = start([*args(demo_data_dir, out, ENDLESS), "--resume", "auto"], 1, log)  # redoes that evaluation first
    try:
        event = sigterm_in_evaluation(proc, psutil.Process(proc.pid), out, lambda: "resuming from" in log.read_text())
    finally:
        kill_all(proc)
    check_stop(event, EVAL_INTERVAL, out, log)
    assert snapshot(out / "checkpoints") == saved  # stopped again in the same evaluation: nothing new to save

    assert finish(args(demo_data_dir, out, FEW), 1, log) == 0, log.read_text()[-3000:]
    final = f"checkpoints/step_{MAX_ITERS}/model.safetensors"
    assert (out / final).read_bytes() == (reference / final).read_bytes()
    assert comparable_rows(out) == comparable_rows(reference)  # the cut evaluation redone, the next one unchanged


def test_sigterm_to_one_of_two_processes_in_evaluation_stops_both(demo_data_dir, tmp_path):
    """Evaluation batches end in collectives: a rank that stopped alone would leave the other waiting forever."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    proc = start(args(demo_data_dir, out, ENDLESS), 2, log)
    try:
        rank_1 = trainer_processes(proc, 2)[1]
        event = sigterm_in_evaluation(proc, rank_1, out, lambda: reached_step(out) >= EVAL_INTERVAL - 1)
    finally:
        kill_all(proc)
    check_stop(event, EVAL_INTERVAL, out, log)
