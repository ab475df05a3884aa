"""Stop cleanly when told to: SIGTERM or SIGINT ends the run after the current optimizer step, with a checkpoint.

Schedulers (SLURM, Kubernetes) and `torchrun` send SIGTERM and wait a grace period before SIGKILL;
Ctrl-C sends SIGINT. Only some processes may get the signal, so at every step boundary the
processes agree with one tiny all-reduce on the CPU (a gloo group), which never waits on a GPU.
"""

from __future__ import annotations

import functools
import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Within `with StopSignals() as stop:`, the first SIGTERM or SIGINT is recorded in `stop.received`
    instead of ending the process. Later ones are ignored too: `torchrun` forwards its own signal to
    workers that may already have one from the terminal, and SIGKILL remains for impatience."""

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _record(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def reached_any_process(self) -> bool:
        """Whether a stop signal reached any process: the same answer on all of them, which must all ask."""
        return any_process(self.received is not None)


@functools.cache
def _cpu_group():
    """The default group when it already runs on the CPU (gloo), else a gloo group beside NCCL."""
    return dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any of them; every process must call it."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_cpu_group())
    return bool(value.item())
