"""A signal to the launcher, which is what SLURM and Kubernetes signal, never leaves a trainer running: every
trainer finishes its step, saves a checkpoint at that step and exits 0.

`accelerate launch` with one process (configs/accelerate/cpu.yaml, single_gpu.yaml) dies at once on SIGTERM and
any launcher dies at once on SIGKILL; their trainers then get SIGTERM from the kernel (PR_SET_PDEATHSIG).
`accelerate launch --multi_gpu` (torchrun) forwards SIGTERM to its workers, waits for them, and then exits 1:
torch's SignalException, which no setting changes.
"""

import contextlib
import ctypes
import signal
import time

import psutil
import pytest

from accel_train.checkpoint import list_checkpoints, verify
from helpers import REPO, TINY_MODEL
from interrupt import SIGNAL_GRACE_S, kill_all, reached_step, start, stopped_cleanly, wait_until

CPU_CONFIG = str(REPO / "configs" / "accelerate" / "cpu.yaml")
PR_SET_CHILD_SUBREAPER = 36
RUN = ["--max_iters", "100000", "--warmup_steps", "2", "--batch_size", "4", "--block_size", "64",  # an orphan would
       "--gradient_accumulation_steps", "1", "--eval_interval", "100000", "--eval_iters", "1",  # train on for hours
       "--log_interval", "1", "--checkpoint_interval", "0", "--demo_data", "false", "--plot", "false",
       "--sample_tokens", "0", *TINY_MODEL]


@pytest.fixture
def subreaper():
    """This process as a child subreaper, as slurmstepd or a container's init is: trainers whose launcher died
    become its children, so their exit status can be read."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    assert prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def trainers_of(proc) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]


def kill_orphans(trainers: list[psutil.Process]) -> None:
    """SIGKILL what is left of the trainers: an orphan is no longer under its launcher, where kill_all looks."""
    for trainer in trainers:
        with contextlib.suppress(psutil.NoSuchProcess):
            trainer.kill()
    psutil.wait_procs(trainers, timeout=30)


def signal_launcher(data_dir, out, processes: int, sig: signal.Signals) -> dict:
    """Start a run, signal its launcher at step 3; what happened once no trainer is left (or the grace period is
    over): the launcher's exit status and each trainer's (None where the launcher reaped it)."""
    log = out.parent / "log.txt"
    proc = start(["--data_dir", str(data_dir), "--out_dir", str(out), *RUN], processes, log,
                 config_file=CPU_CONFIG if processes == 1 else None)
    trainers = []
    try:
        assert wait_until(proc, lambda: reached_step(out) >= 3), log.read_text()[-3000:]
        trainers = trainers_of(proc)
        assert len(trainers) == processes, trainers
        sent = time.monotonic()
        proc.send_signal(sig)
        launcher = proc.wait(timeout=SIGNAL_GRACE_S)
        gone, alive = psutil.wait_procs(trainers, timeout=SIGNAL_GRACE_S - (time.monotonic() - sent))
        saved = list_checkpoints(out)
        return {"launcher": launcher, "trainers": [p.returncode for p in gone], "alive": len(alive),
                "exit_s": time.monotonic() - sent, "stopped_at": reached_step(out),
                "newest": saved[-1].name if saved else None, "log": log.read_text()[-3000:]}
    finally:
        kill_all(proc)
        kill_orphans(trainers)


@pytest.mark.parametrize("processes, sig", [(1, signal.SIGTERM), (2, signal.SIGKILL)])
def test_trainers_stop_cleanly_when_their_launcher_dies(demo_data_dir, tmp_path, subreaper, processes, sig):
    out = tmp_path / "out"
    event = signal_launcher(demo_data_dir, out, processes, sig)
    assert event["launcher"] == -sig and event["alive"] == 0, event
    assert event["trainers"] == [0] * processes, event  # adopted by this process: their own exit status
    assert stopped_cleanly({**event, "returncode": max(event["trainers"])}), event
    assert verify(out / "checkpoints" / event["newest"]) is None


def test_torchrun_forwards_sigterm_to_both_ranks_then_fails_itself(demo_data_dir, tmp_path):
    out = tmp_path / "out"
    event = signal_launcher(demo_data_dir, out, 2, signal.SIGTERM)
    assert event["alive"] == 0 and event["exit_s"] < SIGNAL_GRACE_S, event
    assert event["launcher"] == 1 and "SignalException" in event["log"], event  # torch's own, after the save
    assert event["newest"] == f"step_{event['stopped_at']}", event
    assert verify(out / "checkpoints" / event["newest"]) is None


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
