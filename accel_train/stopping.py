"""How a command that writes files (prepare) stops on SIGINT or SIGTERM: at once, after its cleanup, with one line.

Python runs signal handlers in the main thread only. The kernel hands a signal sent to the process to any
thread that does not block it, and on Linux a handler that runs in another thread does not wake the main
thread: one that is waiting in a read of a pipe that stays open would never stop. So every thread the
command has (the BLAS pool that importing numpy starts, tqdm's monitor, a process pool's threads, a
tokenizer's pool) is born with the two signals blocked, and the main thread alone takes them.

Only stdlib here: a command imports this module before anything that could start a thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived. Like KeyboardInterrupt, no `except Exception` catches it: it unwinds through the
    cleanup (workers ended, staging folder removed) and nothing else."""


_held = 0  # how many `signals_held` blocks are running
_arrived: int | None = None  # a signal that came during one, raised at the end of the outermost


def _stop(signum, frame):
    global _arrived
    for sig in SIGNALS:  # a second signal must not cut the cleanup short; SIGKILL remains for impatience
        signal.signal(sig, signal.SIG_IGN)
    if not _held:
        raise Stopped(signum)
    _arrived = signum


def _exit_at_once(signum, frame):
    os.write(2, f"error: stopped by {signal.Signals(signum).name}; no partial output is left\n".encode())
    os._exit(128 + signum)


def exit_at_once_on_signals() -> None:
    """Outside `stopping_on_signals`, SIGINT and SIGTERM end the command at once with its one line: before, it is
    importing its modules and has written nothing; after, its output is whole."""
    for sig in SIGNALS:
        signal.signal(sig, _exit_at_once)


def ignore_signals() -> None:
    """For a command whose output is in place: from here it only exits, and Python's exit would otherwise restore
    the default handlers, under which a late signal kills it and turns its status 0 into 130 or 143."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def threads_born_deaf() -> Iterator[None]:
    """Within the block, the main thread blocks SIGINT and SIGTERM, so that the threads started in it (importing
    numpy starts the BLAS pool's) never take them; the main thread's own mask is restored after."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM end the command after its cleanup, with one line on stderr and the status
    128 + the signal's number, as a shell reports a process that a signal ended. They do so whatever the parent
    left: a signal it blocked is unblocked, and one it ignored (a background job's Ctrl-C) is answered too, since
    a command that ignores Ctrl-C while it writes is worse than one that stops."""
    global _arrived
    previous = {sig: signal.signal(sig, _stop) for sig in SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)  # one the parent's mask held arrives now, in the try
        yield
    except Stopped as stop:
        signum = stop.args[0]
        print(f"error: stopped by {signal.Signals(signum).name}; no partial output is left", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _arrived = None  # one held in a block that ended with an error has done its work: the command stopped


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, so that no interruption leaves it half done: the kernel
    holds one that comes meanwhile, and `_stop` one whose handler Python runs only now (it runs them late).
    Threads and processes started in the block are born with them blocked (see the module's docstring)."""
    global _held, _arrived
    _held += 1
    try:
        with threads_born_deaf():
            yield
    finally:
        _held -= 1
    if not _held and _arrived is not None:
        signum, _arrived = _arrived, None
        raise Stopped(signum)
