"""One trainer per out_dir: kernel locks held by the main process for the whole run.

The lock is an `flock` on the out_dir folder itself, which a user does not delete by hand, and on
`out_dir/train.lock`, which names the holder (host, process, start time) for people and for a refused
run. The kernel drops both when the holder dies however it dies (SIGKILL included), so the file a
dead run leaves behind blocks nothing, and deleting or replacing it lets no second run in: the
folder's lock still holds, and the holder's name is kept on the folder too (an extended attribute),
for filesystems that have them. On NFS, where a folder cannot be flocked, Linux maps the file's lock
to a POSIX lock that the server drops when the holder's lease ends; there the file is the lock.

Before each write (`confirm()`) the run checks that out_dir is still the folder it locked: one removed,
moved or replaced (`rm -rf` and a new run into a new folder of that name) stops the run rather than
letting it write into another run's folder. A lock file deleted meanwhile is put back. The lock file is
removed when the run ends, and so is an out_dir that the run created and left empty (a run refused at
start-up writes nothing).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from accel_train.errors import UserError

LOCK_FILE = "train.lock"
HOLDER_ATTRIBUTE = "user.accel_train.holder"
NO_FOLDER_LOCKS = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # NFS: a folder cannot be flocked


class RunLock:
    """`acquire()` takes the lock or raises a UserError naming the run that holds it; `confirm()` raises one
    when out_dir is no longer the folder it locked; `release()` gives it back."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_FILE
        self._fd: int | None = None  # train.lock, locked
        self._folder_fd: int | None = None  # out_dir itself, locked where the filesystem allows
        self._folder_locked = False
        self._record = b""
        self._made: list[Path] = []  # the folders acquire() created, innermost first

    def acquire(self) -> None:
        self._made = [p for p in (self.out_dir, *self.out_dir.parents) if not p.exists()]
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._folder_fd = os.open(self.out_dir, os.O_RDONLY | os.O_DIRECTORY)
            self._folder_locked = self._lock_folder()
            self._record = _holder_record()
            self._take_lock_file()
        except OSError as err:
            self.release()
            raise UserError(f"cannot write to out_dir {self.out_dir}: {err.strerror}") from None

    def _lock_folder(self) -> bool:
        """Lock out_dir itself; False where its filesystem cannot (then the lock file alone is the lock)."""
        try:
            fcntl.flock(self._folder_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use() from None
        except OSError as err:
            if err.errno in NO_FOLDER_LOCKS:
                return False
            raise
        return True

    def _in_use(self) -> UserError:
        return UserError(f"{self.out_dir} is in use by another training run ({self._holder()}); wait for it to end "
                         "or choose another --out_dir")

    def _take_lock_file(self) -> None:
        """Lock the file at `path` (created if need be) and write this run's record into it and onto the folder."""
        while self._fd is None:
            self._fd = self._lock_current_file()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, self._record, 0)
        try:
            os.setxattr(self._folder_fd, HOLDER_ATTRIBUTE, self._record)
        except OSError:  # a filesystem without extended attributes: the file alone names the holder
            pass

    def _lock_current_file(self) -> int | None:
        """A locked descriptor of the file now at `path`, or None if the file was replaced while we waited
        (its holder removed it on release): then the lock is on a file nobody else will look at."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._in_use() from None
        if not self._is_lock_file(fd):
            os.close(fd)
            return None
        return fd

    def _is_lock_file(self, fd: int) -> bool:
        """Whether `fd` is the file now at `path` (not one removed or replaced since)."""
        try:
            return os.path.samestat(os.stat(self.path), os.fstat(fd))
        except FileNotFoundError:
            return False

    def _holder(self) -> str:
        """Who holds the lock, from the folder's record, else the lock file's."""
        for read in (lambda: os.getxattr(self._folder_fd, HOLDER_ATTRIBUTE), lambda: self.path.read_bytes()):
            try:
                record = json.loads(read())
                return f"host {record['host']}, process {record['pid']}, since {record['since']}"
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return "its host and process not yet written"

    def confirm(self) -> None:
        """Before a write: raise a UserError if out_dir is no longer the folder this run locked, or (where
        only the lock file locks) that file was removed; put back a lock file removed under a locked folder."""
        if not self._folder_is_out_dir():
            raise UserError(f"{self.out_dir} was removed, moved or replaced while this run was writing to it; the run "
                            "stops here and writes nothing into whatever folder now has that name")
        if self._is_lock_file(self._fd):
            return
        if not self._folder_locked:
            raise UserError(f"{self.path} was removed or replaced while this run held it, so another run may be "
                            f"writing to {self.out_dir}; the run stops here")
        os.close(self._fd)
        self._fd = None
        self._take_lock_file()

    def release(self) -> None:
        """Remove this run's lock file and record, then drop the locks; remove the folders acquire() made if they
        are still empty. Only the folder this run locked is touched, wherever it is now."""
        if self._fd is not None:
            try:
                if os.pread(self._fd, len(self._record) + 1, 0) == self._record and self._is_lock_file(self._fd):
                    self.path.unlink()
                os.removexattr(self._folder_fd, HOLDER_ATTRIBUTE)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
        if self._folder_fd is not None:
            still_ours = self._folder_is_out_dir()
            os.close(self._folder_fd)
            self._folder_fd = None
            for folder in self._made if still_ours else []:
                try:
                    folder.rmdir()
                except OSError:  # not empty: the run wrote into it
                    break
        self._made = []

    def _folder_is_out_dir(self) -> bool:
        """Whether out_dir still names the folder this run locked (not removed, moved or replaced since)."""
        try:
            return os.path.samestat(os.stat(self.out_dir), os.fstat(self._folder_fd))
        except FileNotFoundError:
            return False


class StartLock(RunLock):
    """out_dir's lock, which also notes the folders out_dir held when it was taken: a start that fails (a refused
    resume, a model too large for memory) removes the folders it made (checkpoints/, a tracker's), so that out_dir
    is left as it was. Files stay: the only ones a start writes are the lock and the earlier rows it keeps aside."""

    _before: set[Path] | None = None  # None where this process did not take the lock

    def acquire(self) -> None:
        super().acquire()
        self._before = self._folders()

    def _folders(self) -> set[Path]:
        return {path for path in self.out_dir.iterdir() if path.is_dir() and not path.is_symlink()}

    @contextlib.contextmanager
    def undone_on_failure(self):
        try:
            yield
        except BaseException:
            for folder in self._folders() - self._before if self._before is not None else ():
                shutil.rmtree(folder, ignore_errors=True)
            raise


def _holder_record() -> bytes:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    return json.dumps(record).encode() + b"\n"
