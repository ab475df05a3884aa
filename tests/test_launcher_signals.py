"""A signal to the launcher, which is what SLURM and Kubernetes signal, never leaves a trainer running, and on the
launch lines docs/checkpoints.md gives for preemptible jobs it ends in a verified checkpoint at the step reached,
even when saving takes longer than a launcher's grace period.

What is asserted is this project's promise (the trainers stop, save, leave no process behind), never a launcher's
own exit status or timing, which change with Accelerate and torch releases. Saves here are made slower than the
one-process `accelerate launch`'s grace (5 s in accelerate 1.16) by tests/slow_save, as a large model's are.
"""

import contextlib
import ctypes
import signal
import subprocess
import sys
import time

import psutil
import pytest

from accel_train.checkpointing.checkpoint import list_checkpoints, verify
from helpers import REPO, TINY_MODEL, run, train
from interrupt import SIGNAL_GRACE_S, kill_all, reached_step, start, wait_until

CPU_CONFIG = str(REPO / "configs" / "accelerate" / "cpu.yaml")
SLOW_SAVE = {"PYTHONPATH": str(REPO / "tests" / "slow_save"), "SLOW_SAVE_S": "7"}
PR_SET_CHILD_SUBREAPER = 36
RUN = ["--max_iters", "100000", "--warmup_steps", "2", "--batch_size", "4", "--block_size", "64",  # an orphan would
       "--gradient_accumulation_steps", "1", "--eval_interval", "100000", "--eval_iters", "1",  # train on for hours
       "--log_interval", "1", "--checkpoint_interval", "0", "--demo_data", "false", "--plot", "false",
       "--sample_tokens", "0", *TINY_MODEL]
LAUNCHERS = {  # (processes, accelerate config file or None)
    "python": (1, None),
    "accelerate launch, one process": (1, CPU_CONFIG),
    "accelerate launch --multi_gpu": (2, None),
}


@pytest.fixture
def subreaper():
    """This process as a child subreaper, as slurmstepd or a container's init is: trainers whose launcher died
    become its children, so their exit status can be read."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    assert prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def trainers_of(proc) -> list[psutil.Process]:
    """The trainer processes: the process itself under plain python, else the launcher's children running train.py."""
    if "accelerate" not in " ".join(proc.args):
        return [psutil.Process(proc.pid)]
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]


def kill_orphans(trainers: list[psutil.Process]) -> None:
    """SIGKILL what is left of the trainers: an orphan is no longer under its launcher, where kill_all looks."""
    for trainer in trainers:
        with contextlib.suppress(psutil.NoSuchProcess):
            trainer.kill()
    psutil.wait_procs(trainers, timeout=30)


def signal_launcher(data_dir, out, launcher: str, sig: signal.Signals, at_step: int = 3, args=()) -> dict:
    """Start a run with slow saves, signal its launcher once it reached `at_step`; what happened once no trainer is
    left (or the grace period is over): the launcher's exit status and each trainer's (None where the launcher reaped
    it)."""
    processes, config_file = LAUNCHERS[launcher]
    log = out.parent / "log.txt"
    proc = start(["--data_dir", str(data_dir), "--out_dir", str(out), *RUN, *args], processes, log,
                 config_file=config_file, env=SLOW_SAVE)
    trainers = []
    try:
        assert wait_until(proc, lambda: reached_step(out) >= at_step), log.read_text()[-3000:]
        trainers = trainers_of(proc)
        assert len(trainers) == processes, trainers
        sent = time.monotonic()
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):  # a launcher left running fails the checks below
            proc.wait(timeout=SIGNAL_GRACE_S)
        gone, alive = psutil.wait_procs(trainers, timeout=max(1.0, SIGNAL_GRACE_S - (time.monotonic() - sent)))
        saved = list_checkpoints(out)
        return {"launcher": proc.poll(), "trainers": [p.returncode for p in gone], "alive": len(alive),
                "stopped_at": reached_step(out), "newest": saved[-1] if saved else None,
                "log": log.read_text()[-3000:]}
    finally:
        kill_all(proc)
        kill_orphans(trainers)


def assert_saved_at_the_step_reached(event: dict) -> None:
    assert event["alive"] == 0, event
    assert event["newest"] is not None and event["newest"].name == f"step_{event['stopped_at']}", event
    assert verify(event["newest"]) is None, event


@pytest.mark.parametrize("launcher", ["python", "accelerate launch --multi_gpu"])
def test_sigterm_to_a_preemptible_launch_line_saves_the_step_reached(demo_data_dir, tmp_path, launcher):
    """The launch lines for preemptible jobs: plain python (one process) waits for nobody; torchrun passes the
    signal on and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT (30 s by default) before SIGKILL."""
    event = signal_launcher(demo_data_dir, tmp_path / "out", launcher, signal.SIGTERM)
    assert_saved_at_the_step_reached(event)
    if launcher == "python":  # the launcher is the trainer
        assert event["launcher"] == 0, event


@pytest.mark.parametrize("launcher", ["accelerate launch, one process", "accelerate launch --multi_gpu"])
def test_trainers_stop_cleanly_when_their_launcher_is_killed(demo_data_dir, tmp_path, subreaper, launcher):
    """SIGKILL to any launcher: the kernel sends each trainer SIGTERM (PR_SET_PDEATHSIG); nobody is left to cut
    their save short, so each saves and exits 0 (read here, as their adopting subreaper)."""
    event = signal_launcher(demo_data_dir, tmp_path / "out", launcher, signal.SIGKILL)
    assert_saved_at_the_step_reached(event)
    assert event["trainers"] == [0] * LAUNCHERS[launcher][0], event


def test_sigterm_to_the_one_process_accelerate_launcher_loses_no_checkpoint(demo_data_dir, tmp_path):
    """That launcher kills its trainer a few seconds after passing SIGTERM on (accelerate 1.16), which a slow save
    may not survive: why the docs keep it out of preemptible jobs. What it must never cost is a checkpoint
    already written: every checkpoint left verifies, and `--resume auto` continues from the newest."""
    out = tmp_path / "out"
    event = signal_launcher(demo_data_dir, out, "accelerate launch, one process", signal.SIGTERM,
                            args=["--checkpoint_interval", "2"])
    assert event["alive"] == 0 and event["newest"] is not None, event
    assert all(verify(folder) is None for folder in list_checkpoints(out)), event
    newest = int(event["newest"].name.removeprefix("step_"))
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(out), *RUN, "--resume", "auto",
                    "--max_iters", str(newest + 1)])
    assert result.returncode == 0 and f"resuming from {event['newest']}" in result.stdout, result.stderr[-3000:]


def test_a_launcher_killed_while_its_trainer_starts_leaves_no_trainer(demo_data_dir, tmp_path, subreaper):
    """The launcher dies before its trainer could ask for the signal (Python is still importing): the trainer
    finds that its parent is no launcher and stops before writing anything. Had it got further, the kernel's
    SIGTERM would stop it the same way."""
    out = tmp_path / "out"
    proc = start(["--data_dir", str(demo_data_dir), "--out_dir", str(out), *RUN], 1, tmp_path / "log.txt",
                 config_file=CPU_CONFIG)
    trainers = []
    try:
        assert wait_until(proc, lambda: trainers_of(proc)), "the launcher ended before starting a trainer"
        trainers = trainers_of(proc)
        proc.kill()
        proc.wait()
        assert trainers[0].wait(timeout=SIGNAL_GRACE_S) == -signal.SIGTERM
        assert not out.exists()
    finally:
        kill_all(proc)
        kill_orphans(trainers)


def test_the_slow_save_support_delays_writing_a_checkpoint_manifest(tmp_path):
    """tests/slow_save is loaded at start-up by the interpreters it is given to and delays the write of a manifest
    into a checkpoint being saved, the end of every save, naming the save it holds: else the tests above would
    prove nothing about saves slower than a grace period. A lower bound on one write's time, which no machine's
    load can break."""
    manifest = tmp_path / "checkpoints" / ".tmp_step_1" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    probe = ("import pathlib, sys, time; began = time.monotonic(); pathlib.Path(sys.argv[1]).write_text('{}'); "
             "print(time.monotonic() - began)")
    held_log = tmp_path / "held_saves"
    result = run([sys.executable, "-c", probe, str(manifest)],
                 env={**SLOW_SAVE, "SLOW_SAVE_S": "2", "SLOW_SAVE_HELD": str(held_log)})
    assert result.returncode == 0 and float(result.stdout) >= 2, result.stderr
    assert held_log.read_text() == f"{manifest.parent}\n"  # the event a kill-save waits for
