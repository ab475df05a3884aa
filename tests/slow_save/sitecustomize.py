"""Test support: checkpoint saves that take SLOW_SAVE_S seconds longer, as a large model's do on a slow disk.

A test puts this folder first on PYTHONPATH, so every trainer process imports it at start-up. An audit hook
(nothing in accel_train is patched) sleeps when a manifest is about to be written into a checkpoint being
saved (`.tmp_step_<N>/manifest.json`): the last part of every save, after the weights and optimizer state.
"""

import os
import sys
import time

DELAY_S = float(os.environ.get("SLOW_SAVE_S", "0"))


def _slow_manifest_write(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[1], str) and "w" in args[1]:
        path = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
        if path.endswith("manifest.json") and ".tmp_step_" in path:
            time.sleep(DELAY_S)


if DELAY_S > 0:
    sys.addaudithook(_slow_manifest_write)
