"""A UserError on any process of a launched run reaches the user as one line, whichever processes raised it.

Every process of a run under torchrun (`accelerate launch --multi_gpu`) can reach its launcher's store (a TCPStore
at MASTER_ADDR:MASTER_PORT). A failing process marks it there, then:
- rank 0 prints its error and says so in the store; the launcher then stops the other processes;
- any other rank gives rank 0 HEADSTART_S to report (when every process meets the same mistake, rank 0 meets it
  too) and leaves quietly if it does; if no process has reported by then, this one failed alone, or first: it
  prints its error naming itself (`error: process 1 of 2: ...`), so that exactly one line appears;
- a process whose collective broke because another ended with its error (gloo's "Connection closed by peer")
  exits quietly with status 2 instead of showing that traceback.
Other launchers have no such store: ranks other than 0 wait HEADSTART_S, then print theirs naming themselves.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

HEADSTART_S = 10  # well within torchrun's 30 s between its SIGTERM and SIGKILL
FAILED, REPORTED = "accel_train/failed", "accel_train/reported"


def report_error(message: str) -> None:
    """Print `error: message` on stderr once for the whole run (see above)."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    store = _launcher_store() if world > 1 else None
    if store is not None:
        _set(store, FAILED, message)
    if rank != 0 and _reported_within(store, HEADSTART_S):
        return
    print(f"error: {message}" if rank == 0 else f"error: process {rank} of {world}: {message}", file=sys.stderr,
          flush=True)
    if store is not None:
        _set(store, REPORTED, str(rank))


def another_process_failed() -> bool:
    """Whether another process of this run ended with a reported error (whose line explains this one's failure)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    store = _launcher_store()
    try:
        return store is not None and store.check([_key(FAILED)])
    except (RuntimeError, OSError):
        return False


def _launcher_store():
    """A client of torchrun's store, or None (not under torchrun, or the launcher is gone)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from torch.distributed import TCPStore

    try:
        return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                        timeout=datetime.timedelta(seconds=HEADSTART_S), wait_for_workers=False)
    except (KeyError, ValueError, RuntimeError, OSError):
        return None


def _key(name: str) -> str:
    """A key of this launch: a launcher that restarts its workers keeps its store."""
    return f"{name}/{os.environ.get('TORCHELASTIC_RUN_ID')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _set(store, name: str, value: str) -> None:
    try:
        store.set(_key(name), value)
    except (RuntimeError, OSError):  # the launcher went away: nobody is left to tell
        pass


def _reported_within(store, seconds: float) -> bool:
    """Whether some process reports its error within `seconds` (without a store: wait them out and say no)."""
    if store is None:
        time.sleep(seconds)
        return False
    try:
        store.wait([_key(REPORTED)], datetime.timedelta(seconds=seconds))
        return True
    except (RuntimeError, OSError):  # timed out (DistStoreError is a RuntimeError), or the launcher is gone
        return False
