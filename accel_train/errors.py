"""User-facing failures: one `error:` line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from typing import Callable



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

    Under `accelerate launch` the error is printed once for the whole run, by rank 0 when it meets it too, else by
    the process that met it, naming it; a process that another's exit cut off in a collective leaves quietly
    (distributed/failures.py).
    """
    try:
        main()
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a program that SIGPIPE ends
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error flushing stdout at exit
        sys.exit(128 + signal.SIGPIPE)
    except UserError as err:
        from accel_train.distributed.failures import report_error

        report_error(str(err))
        sys.exit(2)
    except Exception:
        from accel_train.distributed.failures import another_process_failed

        if another_process_failed():  # that process's error line tells the user why: no traceback of this one
            sys.exit(2)
        raise
