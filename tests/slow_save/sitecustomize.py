"""Test support: checkpoint saves that take SLOW_SAVE_S seconds longer, as a large model's do on a slow disk.

A test puts this folder first on PYTHONPATH, so every trainer process imports it at start-up. An audit hook
(nothing in accel_train is patched) sleeps when a manifest is about to be written into a checkpoint being
saved (`.tmp_step_<N>/manifest.json`): the last part of every save, after the weights and optimizer state.
If SLOW_SAVE_HELD names a file, the folder of the save being held is appended to it first, as a line: the event a
test waits for before it kills a run mid-save.
"""

import os
import sys
import time

DELAY_S = float(os.environ.get("SLOW_SAVE_S", "0"))
HELD_LOG = os.environ.get("SLOW_SAVE_HELD")


def _slow_manifest_write(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[1], str) and "w" in args[1]:
        path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
        if path.endswith("manifest.json") and ".tmp_step_" in path:
            if HELD_LOG:
                with open(HELD_LOG, "a") as log:
                    log.write(os.path.dirname(os.path.abspath(path)) + "\n")
            time.sleep(DELAY_S)


if DELAY_S > 0:
    sys.addaudithook(_slow_manifest_write)
