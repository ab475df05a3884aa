"""Interrupting real training runs the ways they die in practice, then resuming them.

An interruption is one of: SIGKILL to every process at a random moment of a chosen step
("kill-step"), SIGKILL while a checkpoint is being written ("kill-save": checked to have landed mid-save), or
SIGTERM / SIGINT to one process only ("term" / "int"), after which every process must save and exit 0.
Runs need `--log_interval 1`, so that metrics.jsonl shows which step a run has reached.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import psutil

from accel_train.checkpointing.checkpoint import list_checkpoints
from helpers import REPO, TRAIN, command, start_process

KINDS = ("kill-step", "kill-save", "term", "int")
SIGNAL_GRACE_S = 60  # a signalled run must be gone within this (torchrun itself allows 30 s before SIGKILL)
# A tiny model's save takes tens of milliseconds, less than it may take to notice it and kill: a "kill-save" run's
# saves wait this long before their last file (tests/slow_save), so that the SIGKILL lands while the save runs.
# The wait costs nothing: the run is killed in it.
def save_held_open(held_log: Path) -> dict:
    """The environment of a "kill-save" run: its saves wait before their manifest, each one named in `held_log`."""
    return {"PYTHONPATH": str(REPO / "tests" / "slow_save"), "SLOW_SAVE_S": "600", "SLOW_SAVE_HELD": str(held_log)}


def start(args: list[str], processes: int, log: Path, config_file: str | None = None,
          env: dict | None = None) -> subprocess.Popen:
    with open(log, "ab") as output:
        return start_process(command(TRAIN, args, processes, config_file), env, output=output)


def kill_all(proc: subprocess.Popen) -> int:
    """SIGKILL the run and every process under it (torchrun starts its workers in sessions of their own,
    so killing the launcher's group alone would leave them training); the launcher's exit status."""
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for process in [psutil.Process(proc.pid), *workers] if proc.poll() is None else workers:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    returncode = proc.wait()
    psutil.wait_procs(workers, timeout=30)
    return returncode


def reached_step(out_dir: Path) -> int:
    """The last step metrics.jsonl shows (0 before any); a torn last row is ignored."""
    try:
        lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError):
            continue
    return 0


def held_saves(log: Path) -> list[tuple[Path, int]]:
    """(folder, inode) of each save tests/slow_save has held open, from the lines its processes appended to `log`;
    the inode is read now, so a folder renamed or deleted since (its save finished or cleaned up) is left out."""
    try:
        lines = log.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        return []
    held = []
    for line in lines:
        if line.endswith("\n"):  # a line still being appended is read on the next poll
            try:
                held.append((Path(line.strip()), Path(line.strip()).stat().st_ino))
            except FileNotFoundError:
                continue
    return held


def is_saving(held: list[tuple[Path, int]]) -> bool:
    """Whether a held save's folder is still where and what it was: that save never finished."""
    for folder, inode in held:
        try:
            if folder.stat().st_ino == inode:
                return True
        except FileNotFoundError:
            continue
    return False


def wait_until(proc: subprocess.Popen, condition, timeout: float = 300) -> bool:
    """Poll every few milliseconds until `condition()` holds (True) or the run ends first (False)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if condition():
            return True
        if time.monotonic() > deadline:
            raise TimeoutError("the run neither reached the moment nor ended")
        time.sleep(0.003)
    return False


def trainer_processes(proc: subprocess.Popen, processes: int) -> list[psutil.Process]:
    """The training processes, rank 0 first: the process itself, or the launcher's workers."""
    if processes == 1:
        return [psutil.Process(proc.pid)]
    workers = {}
    while len(workers) < processes:
        time.sleep(0.01)
        for child in psutil.Process(proc.pid).children():
            try:
                if "train.py" in " ".join(child.cmdline()) and "RANK" in child.environ():
                    workers[int(child.environ()["RANK"])] = child
            except psutil.Error:  # a helper process that just ended
                continue
    return [workers[rank] for rank in sorted(workers)]


def interrupt(kind: str, args: list[str], processes: int, out_dir: Path, rng: random.Random, max_iters: int,
              log: Path, rank: int | None = None, ahead: int | None = None) -> dict:
    """Run `--resume auto` once and interrupt it as `kind` says; returns what happened.

    The target step is drawn after the step already reached, at most `ahead` steps later (or up to
    the end); a run that ends before the moment comes is reported as not interrupted. A signal goes
    to process `rank` (random if None).
    """
    start_step = reached_step(out_dir)
    last = max_iters - (4 if kind in ("term", "int") else 1)  # a signal must land before training ends
    last = min(last, start_step + ahead) if ahead else last
    target = rng.randint(start_step + 1, last) if start_step + 1 <= last else max_iters
    held_log = log.with_name(f"{log.name}.held_saves")
    held_log.unlink(missing_ok=True)
    proc = start([*args, "--resume", "auto"], processes, log,
                 env=save_held_open(held_log) if kind == "kill-save" else None)
    event = {"kind": kind, "from_step": start_step, "target": target}
    try:
        if kind == "kill-save":
            hit = wait_until(proc, lambda: held_saves(held_log))
            own_save = held_saves(held_log)
            time.sleep(rng.uniform(0, 0.02))
        elif kind.startswith("kill"):
            hit = wait_until(proc, lambda: reached_step(out_dir) >= target)
            time.sleep(rng.uniform(0, 0.2))
        else:
            victim = rng.randrange(processes) if rank is None else rank
            victim_process = trainer_processes(proc, processes)[victim]
            hit = wait_until(proc, lambda: reached_step(out_dir) >= target)
        if not hit or proc.poll() is not None:
            event.update(interrupted=False, returncode=proc.wait())
            return event
        if kind.startswith("kill"):
            event.update(interrupted=True, returncode=kill_all(proc))
            if kind == "kill-save":
                assert is_saving(own_save), f"the save {own_save} had finished before the kill"
            return event
        sent = time.monotonic()
        victim_process.send_signal(signal.SIGTERM if kind == "term" else signal.SIGINT)
        returncode = proc.wait(timeout=SIGNAL_GRACE_S)
        event.update(interrupted=True, rank=victim, returncode=returncode, exit_s=time.monotonic() - sent,
                     stopped_at=reached_step(out_dir), newest=list_checkpoints(out_dir)[-1].name)
        return event
    finally:
        kill_all(proc)  # whatever is left of it


def stopped_cleanly(event: dict) -> bool:
    """A signalled run exited 0 within the grace period, leaving a checkpoint at the step it stopped at."""
    return (event["returncode"] == 0 and event["exit_s"] < SIGNAL_GRACE_S
            and event["newest"] == f"step_{event['stopped_at']}")


def finish(args: list[str], processes: int, log: Path) -> int:
    """Resume to the end without interruption; the exit status."""
    proc = start([*args, "--resume", "auto"], processes, log)
    try:
        return proc.wait(timeout=600)
    finally:
        kill_all(proc)


def comparable_rows(out_dir: Path) -> list[dict]:
    """metrics.jsonl without the fields that measure speed, which no two runs share."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("tokens_per_s", "mfu")} for row in rows]
