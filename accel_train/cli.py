"""The console commands of `pip install`: each runs a module's `main` on sys.argv as `python -m` does.

`run_cli` turns a UserError into one `error:` line and exit status 2, which a bare `main` would show as a
traceback. The modules load on call, so `accel-prepare` and `accel-plot` start without importing torch.
"""

from __future__ import annotations

import importlib

from accel_train.errors import run_cli
from accel_train.stopping import exit_at_once_on_signals


def _command(module: str):
    def command() -> None:
        run_cli(importlib.import_module(f"accel_train.{module}").main)
    command.__doc__ = f"`python -m accel_train.{module}`, as a console command."
    return command


def prepare() -> None:
    """`python -m accel_train.prepare`, as a console command: a signal while it imports ends it with one line."""
    exit_at_once_on_signals()
    importlib.import_module("accel_train.prepare").command()


train = _command("train")
sample = _command("sample")
export = _command("export")
plot = _command("plot")
bench = _command("bench")
plan = _command("plan")
score = _command("score")
