"""User-facing failures: one `error:` line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from typing import Callable

RANK_0_HEADSTART_S = 10  # well within torchrun's 30 s between its SIGTERM and SIGKILL


class UserError(Exception):
    """Something the user can fix (a config, a path, a data file); its message says what."""


def first_line(err: Exception) -> str:
    """A library's exception as one line of an error message (some span pages)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are UserErrors: one `error:` line instead of the usage text and an error line."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def number(kind: type, low: float, high: float = math.inf, open_ends: bool = False) -> Callable[[str], float]:
    """An argparse `type`: an int or float in [low, high], or (low, high) with open_ends. float() also reads
    nan and inf, which no option means, so they are refused too (nan fails every comparison)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        inside = low < value < high if open_ends else low <= value <= high
        if not inside or abs(value) == math.inf:
            span = (f"above {low} and below {high}" if open_ends else f"at least {low}" if high == math.inf
                    else f"between {low} and {high}")
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a finite number'} "
                                             f"{span}, got {text}")
        return value
    return parse


def run_cli(main: Callable[[], object]) -> None:
    """Run `main`, turning a UserError into `error: ...` on stderr and exit status 2, and output cut off by a
    closed pipe into status 141, as for a program that SIGPIPE ended.

    Under `accelerate launch` every process hits the same error; only rank 0 prints it so the
    message appears once. The launcher stops every process as soon as one has ended, so the others
    give rank 0 a few seconds to get there first.
    """
    try:
        main()
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a program that SIGPIPE ends
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error flushing stdout at exit
        sys.exit(128 + signal.SIGPIPE)
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr, flush=True)
        else:
            time.sleep(RANK_0_HEADSTART_S)
        sys.exit(2)
