"""User-facing failures: one `error:` line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """Something the user can fix (a config, a path, a data file); its message says what."""


def run_cli(main: Callable[[], object]) -> None:
    """Run `main`, turning a UserError into `error: ...` on stderr and exit status 2.

    Under `accelerate launch` every process hits the same error; only rank 0 prints it so the
    message appears once.
    """
    try:
        main()
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
