"""The trainer and its launcher (`accelerate launch`, `torchrun`): it never outlives it, and it refuses a launch
that did not give it the processes the launcher started.

`accelerate launch` with one process runs the trainer as a plain child and dies at once on SIGTERM; a SIGKILL
to `torchrun` orphans its workers the same way. An orphaned trainer would train on to max_iters, so a launched
trainer asks the kernel for SIGTERM when its launcher dies, which takes the clean stop of
`preemption.StopSignals` (finish the step, save a checkpoint, exit 0). Under plain `python` the parent is a
shell, which may end while the run should go on (`nohup`), so nothing is asked there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

from accel_train.errors import UserError

LAUNCHER_ENV = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_DYNAMO_BACKEND")  # what the launchers set, users don't
PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    """Have the kernel send this process SIGTERM when its launcher dies (Linux only); if it already has, stop now.

    A launcher that died before the request leaves us adopted by init or a subreaper, which is no
    launcher: it does not pass our arguments on. Only then is the parent's death taken for granted.
    """
    if not sys.platform.startswith("linux") or not any(name in os.environ for name in LAUNCHER_ENV):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if not _passes_our_arguments(os.getppid()):
        os.kill(os.getpid(), signal.SIGTERM)


class OutputThatMayLoseItsReader:
    """stdout or stderr whose reader may go away: a launcher that reads the trainer's output through a pipe
    (`accelerate launch` with one process, since 1.16) and is killed, or `| head`. A write that finds the pipe
    closed would raise BrokenPipeError mid-save; instead the stream is pointed at /dev/null and the run goes on
    to its checkpoint as it would have."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard_from_now_on()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard_from_now_on()

    def _discard_from_now_on(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def outlive_lost_output() -> None:
    """Let the trainer's prints, progress bar and warnings survive a reader that went away (see above)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, OutputThatMayLoseItsReader):
            setattr(sys, name, OutputThatMayLoseItsReader(stream))


def _passes_our_arguments(pid: int) -> bool:
    """Whether process `pid`'s command line ends with our arguments, as a launcher's does (True if unreadable).

    Comparing the parent's pid with 1 would not do: in a container the launcher itself is often PID 1."""
    try:
        theirs = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return True
    ours = [os.fsencode(arg) for arg in sys.argv[1:]]
    return theirs[len(theirs) - len(ours):] == ours


def check_launch(cpu: bool) -> None:
    """Refuse, before the Accelerator is built, FSDP version 1 asked for on the CPU: Accelerate's plugin raises
    there (`sync_module_states` is not supported on cpu). FSDP2 is checked once it is built (`check_fsdp`)."""
    if cpu and fsdp_requested() and os.environ.get("FSDP_VERSION", "1") == "1":
        raise UserError(_fsdp_off_reason())


def check_fsdp(distributed_type) -> None:
    """Once the Accelerator is built, refuse an FSDP launch it cannot run: Accelerate's AcceleratorState enables
    FSDP only for GPU-like distributed types; on the CPU it drops the plugin and quietly runs plain DDP."""
    if fsdp_requested() and distributed_type != "FSDP":
        raise UserError(_fsdp_off_reason())


def fsdp_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"


def _fsdp_off_reason() -> str:
    return (f"the launcher asked for FSDP with {os.environ.get('WORLD_SIZE', '1')} process(es), but this run is on "
            "the CPU (no GPU visible, or --device cpu), and Accelerate enables FSDP only on GPU-like devices (CUDA, "
            "XPU, NPU, ...): here it would quietly run plain DDP; on the CPU launch DDP with gloo instead: "
            "--multi_gpu --num_processes N")


def check_process_count(seen: int) -> None:
    """Refuse to run when the launcher started more processes (WORLD_SIZE) than the Accelerator sees: each
    process would train alone, as independent runs writing one out_dir."""
    started = int(os.environ.get("WORLD_SIZE", "1"))
    if started > seen:
        raise UserError(f"the launcher started {started} processes (WORLD_SIZE) but Accelerate sees {seen}: each "
                        "would train alone, all writing one out_dir. The launch asked for a distributed mode this "
                        "machine cannot run (GPUs that are not there, or a launcher that sets WORLD_SIZE but not "
                        "LOCAL_RANK); on the CPU launch with --multi_gpu --num_processes N")


def check_lone_process() -> None:
    """Refuse a trainer that `accelerate launch` started alone although it was asked for several machines or
    processes (`--num_machines 2` or `--num_processes 2` without `--multi_gpu`): its one-process launcher sets
    MASTER_ADDR for the job but starts no process group (no WORLD_SIZE), so every machine would train an
    independent run, and on separate disks nothing else would notice."""
    lone = "ACCELERATE_USE_CPU" in os.environ and "WORLD_SIZE" not in os.environ  # accelerate's one-process launcher
    if lone and "MASTER_ADDR" in os.environ:
        raise UserError(f"accelerate launch was asked for several machines or processes (it set MASTER_ADDR="
                        f"{os.environ['MASTER_ADDR']}) but started this trainer alone, without a process group: each "
                        "machine would train its own run. Add --multi_gpu (it runs gloo on CPUs too), or leave out "
                        "--num_machines/--num_processes (and unset MASTER_ADDR) for one process")
