"""The tests start most commands warm (warm_commands.py): forked from a Python that has imported torch. A warm
command must see and end as it would in a fresh interpreter, or the suite would test something users never run."""

import subprocess
import sys

import pytest

import warm_commands
from helpers import REPO, subprocess_env

REPORT = str(REPO / "tests" / "scripts" / "report_interpreter.py")


@pytest.mark.parametrize("ending", [["exit", "0"], ["exit", "3"], ["raise"], ["interrupt"]])
def test_a_warm_command_sees_and_ends_as_in_a_fresh_interpreter(tmp_path, ending):
    cmd = [sys.executable, REPORT, *ending, "an argument"]
    env = subprocess_env({"REPORT_THIS": "a value"})
    warm = warm_commands.start(cmd, env, tmp_path)
    fresh = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert isinstance(warm, warm_commands.WarmProcess)
    assert warm.communicate(timeout=60) == fresh.communicate(timeout=60)
    assert warm.returncode == fresh.returncode


def test_what_a_fresh_interpreter_would_see_differently_starts_one(tmp_path):
    """Variables read at import (here the thread count) and programs of other folders are not forked."""
    for cmd, env in (([sys.executable, REPORT, "exit", "0"], {"OMP_NUM_THREADS": "7"}),
                     ([sys.executable, "-c", "print(1)"], {}),
                     ([sys.executable, "-m", "json.tool", "--help"], {})):
        process = warm_commands.start(cmd, subprocess_env(env), tmp_path)
        assert isinstance(process, subprocess.Popen), cmd
        process.communicate(timeout=60)
