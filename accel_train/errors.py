"""User-facing failures: one `error:` line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

RANK_0_HEADSTART_S = 10  # well within torchrun's 30 s between its SIGTERM and SIGKILL


class UserError(Exception):
    """Something the user can fix (a config, a path, a data file); its message says what."""


def run_cli(main: Callable[[], object]) -> None:
    """Run `main`, turning a UserError into `error: ...` on stderr and exit status 2.

    Under `accelerate launch` every process hits the same error; only rank 0 prints it so the
    message appears once. The launcher stops every process as soon as one has ended, so the others
    give rank 0 a few seconds to get there first.
    """
    try:
        main()
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr, flush=True)
        else:
            time.sleep(RANK_0_HEADSTART_S)
        sys.exit(2)
