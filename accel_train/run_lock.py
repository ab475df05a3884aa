"""One trainer per out_dir: a kernel lock on `out_dir/train.lock`, held by the main process for the whole run.

The lock is an `flock` on an open file, so the kernel drops it when the holder dies however it dies
(SIGKILL included): a lock left by a dead run never blocks. On NFS, Linux maps it to a POSIX lock that
the server drops when the holder's lease ends. The file names the holder (host and process), which a
refused run quotes; it is removed when the run ends, and so is an out_dir that the run created and
left empty (a run refused at start-up writes nothing).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from accel_train.errors import UserError

LOCK_FILE = "train.lock"


class RunLock:
    """`acquire()` takes the lock or raises a UserError naming the run that holds it; `release()` gives it back."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE
        self._fd: int | None = None
        self._made: list[Path] = []  # the folders acquire() created, innermost first

    def acquire(self) -> None:
        self._made = [p for p in (self.out_dir, *self.out_dir.parents) if not p.exists()]
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            while self._fd is None:
                self._fd = self._lock_current_file()
            _write_holder(self._fd)
        except OSError as err:
            self.release()
            raise UserError(f"cannot write to out_dir {self.out_dir}: {err.strerror}") from None

    def _lock_current_file(self) -> int | None:
        """A locked descriptor of the file now at `path`, or None if the file was replaced while we waited
        (its holder removed it on release): then the lock is on a file nobody else will look at."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(f"{self.out_dir} is in use by another training run ({holder}); wait for it to end "
                            "or choose another --out_dir") from None
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:
            os.close(fd)
            return None
        return fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock; remove the folders acquire() made if they are still empty."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote into it
                break
        self._made = []


def _write_holder(fd: int) -> None:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        return f"host {record['host']}, process {record['pid']}, since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its host and process not yet written"
