"""The tests start most commands warm (warm_commands.py): forked from a Python that has imported torch. A warm
command must see and end as it would in a fresh interpreter, or the suite would test something users never run."""

import subprocess
import sys

import pytest

import warm_commands
from helpers import REPO, subprocess_env

REPORT = str(REPO / "tests" / "scripts" / "report_interpreter.py")


@pytest.fixture(scope="module")
def server():
    """A warm server of this module's own, serving this process's environment whatever earlier tests changed."""
    warm = warm_commands.WarmServer(subprocess_env())
    assert warm.ready, "the server's imports wrote to stderr: no command would be forked warm"
    yield warm
    warm.close()


@pytest.mark.parametrize("ending", [["exit", "0"], ["exit", "3"], ["raise"], ["interrupt"]])
def test_a_warm_command_sees_and_ends_as_in_a_fresh_interpreter(server, tmp_path, ending):
    cmd = [sys.executable, REPORT, *ending, "an argument"]
    env = subprocess_env({"REPORT_THIS": "a value"})
    assert server.serves(cmd, env)
    warm = warm_commands.WarmProcess(server, cmd, env, tmp_path)
    fresh = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert warm.communicate(timeout=60) == fresh.communicate(timeout=60)
    assert warm.returncode == fresh.returncode


def test_what_a_fresh_interpreter_would_see_differently_is_not_forked(server):
    """Variables read at import (here the thread count) and programs from elsewhere start fresh interpreters."""
    assert server.serves([sys.executable, REPORT, "exit", "0"], subprocess_env())
    assert not server.serves([sys.executable, REPORT, "exit", "0"], subprocess_env({"OMP_NUM_THREADS": "7"}))
    assert not server.serves([sys.executable, "-c", "print(1)"], subprocess_env())
    assert not server.serves([sys.executable, "-m", "json.tool"], subprocess_env())
    assert not server.serves([sys.executable, "-m", "accelerate.commands.launch", REPORT], subprocess_env())
