"""Writing a file or a folder so that a reader, or a run killed at any moment, sees the old one or the new one,
never part of one: everything is written under a temporary name beside its target (the same filesystem), then
renamed into place in one step. A file is written whole through `replaced_file` (metrics.jsonl's rewrite on
resume, the caches beside the data, prepare's progress record, plots), a folder through `install_folder`
(checkpoints) or `staged_folder` (prepared data, exports). metrics.jsonl's rows are the one exception: they are
appended, and a torn append is cut back (training/tracking.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from accel_train.errors import UserError
from accel_train.numerals import whole_number


def fsync(path: Path) -> None:
    """Flush a file's bytes, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replaced_file(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write; it replaces `path` when the block succeeds, and is
    removed when the block or the rename fails, leaving `path` as it was."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # never made, e.g. under a file
            tmp.unlink(missing_ok=True)
        raise


def install_folder(tmp: Path, final: Path) -> None:
    """Rename the complete folder `tmp` to `final` (which must not exist), and make the rename durable."""
    os.replace(tmp, final)
    fsync(final.parent)


def remove_folder(folder: Path) -> None:
    """Delete a folder so that it vanishes at once: rename it to a hidden name, then remove that."""
    doomed = folder.with_name(f".deleting_{folder.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed)


def staging_prefix(out_dir: Path) -> str:
    """How the name of a staging folder for out_dir starts: hidden, and named after out_dir."""
    return f".{out_dir.name}.tmp-"


def check_out_dir(out_dir: Path, overwrite: bool, hint: str) -> None:
    """Refuse an out_dir that cannot be written (a file, under a file, read-only), or that (unless overwrite)
    holds anything but staging folders: checked before any slow work, and again before publishing."""
    nearest = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if not nearest.is_dir():
        raise UserError(f"cannot write {out_dir}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.R_OK | os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out_dir}: {nearest} is not writable")
    if not overwrite and nearest == out_dir and any(not p.name.startswith(staging_prefix(out_dir))
                                                    for p in out_dir.iterdir()):
        raise UserError(f"{out_dir} already holds files; {hint}")


def _staging_path(out_dir: Path) -> Path:
    """Where this process stages out_dir's new files, on out_dir's filesystem: inside out_dir where it exists (a
    mount point cannot be renamed, and its other files stay), else beside it."""
    where = out_dir if out_dir.is_dir() else out_dir.parent
    return where / f"{staging_prefix(out_dir)}{socket.gethostname()}-{os.getpid()}"


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine, another user's too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _remove_stale_staging(out_dir: Path) -> None:
    """Remove the staging folders for out_dir (beside it or inside) of processes on this machine that were killed
    before they could; those of live processes or of other machines stay."""
    prefix = f"{staging_prefix(out_dir)}{socket.gethostname()}-"
    for where in (out_dir.parent, out_dir):
        for path in where.iterdir() if where.is_dir() else ():
            pid = whole_number(path.name[len(prefix):])
            if path.name.startswith(prefix) and pid is not None and not alive(pid):
                shutil.rmtree(path, ignore_errors=True)


def _publish(staging: Path, out_dir: Path, last: str | None, obsolete) -> None:
    """Move the staged files into place: the whole folder where out_dir is new, else file by file (the file named
    `last` last), replacing files of the same names, and then removing out_dir's earlier files whose names
    `obsolete(name)` claims and the new ones do not replace."""
    if staging.parent != out_dir:
        os.replace(staging, out_dir)
        return
    new = {path.name for path in staging.iterdir()}
    for path in sorted(staging.iterdir(), key=lambda p: p.name == last):
        os.replace(path, out_dir / path.name)
    staging.rmdir()
    for path in out_dir.iterdir() if obsolete else ():
        if path.name not in new and obsolete(path.name):
            path.unlink()


@contextlib.contextmanager
def staged_folder(out_dir: Path, overwrite: bool, hint: str, last: str | None = None,
                  held=contextlib.nullcontext, adopt=None, obsolete=None) -> Iterator[Path]:
    """A staging folder to write out_dir's files into, published when the block succeeds and removed in any case,
    so that out_dir never holds half of them. `hint` says how to get past an out_dir that already holds files;
    `last` names the file published last (the one that describes the rest); `held()` is a context in which
    publishing and cleaning up happen (a command that handles signals holds them there). `adopt(out_dir,
    staging)`, if given, may move a killed run's staging folder to `staging` to be continued (True if it did);
    `obsolete(name)` names earlier files that the new ones supersede. A failed write (read-only, disk full) is
    one UserError line."""
    check_out_dir(out_dir, overwrite, hint)
    staging = _staging_path(out_dir)
    try:
        if adopt is None or not adopt(out_dir, staging):
            shutil.rmtree(staging, ignore_errors=True)
        _remove_stale_staging(out_dir)
        staging.mkdir(parents=True, exist_ok=True)
        yield staging
        with held():
            check_out_dir(out_dir, overwrite, hint)  # nothing appeared there meanwhile
            _publish(staging, out_dir, last, obsolete)
    except OSError as err:
        raise UserError(f"cannot write {out_dir}: {err.strerror or err}") from None
    finally:
        with held():
            shutil.rmtree(staging, ignore_errors=True)
