"""Test support: the process of rank HIDE_RANK runs as on a machine whose disk lacks the files whose names end with
HIDE_NAME (a task file copied to one node of two): opening one there fails with FileNotFoundError.

A test puts this folder first on PYTHONPATH, so every trainer process imports it at start-up; an audit hook
(nothing in accel_train is patched) refuses the open on that rank alone, as the missing file's own would.
"""

import errno
import os
import sys

NAME, RANK = os.environ.get("HIDE_NAME"), os.environ.get("HIDE_RANK")


def _missing_here(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and os.fsdecode(args[0]).endswith(NAME):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(args[0]))


if NAME and RANK is not None and os.environ.get("RANK") == RANK:
    sys.addaudithook(_missing_here)
