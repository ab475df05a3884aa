"""Start this repository's commands from the warm Python of warm_python.py, or from a fresh interpreter.

`start(cmd, env)` gives a Popen-like process either way. A command goes to the warm server only where a fresh
interpreter could not behave differently: the same interpreter; a command of this repository (a script under
it or `-m accel_train...`; not a launcher, whose trainers read its command line in /proc); and no difference
in the environment variables that the server's imports have read (the interpreter's, the thread libraries',
torch's, CUDA's, accelerate's, the locale). A warm command reads its standard input from /dev/null.
`ACCEL_TRAIN_TESTS_COLD=1` turns it off, to time or debug the suite without it.
"""

from __future__ import annotations

import array
import atexit
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).resolve().parent / "warm_python.py"
READ_AT_IMPORT = ("PYTHON", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_", "TORCH", "PYTORCH_", "CUDA_", "NVIDIA_",
                  "LD_", "ACCELERATE_", "LC_", "LANG")
READ_AT_RUN_TIME = {"TORCHINDUCTOR_CACHE_DIR"}  # inductor sets it in this process on first use, reads it on each


class WarmServer:
    """The warm Python of this test process: started on first use, ended with this process (its pipe closes)."""

    def __init__(self, env: dict):
        self.folder = tempfile.mkdtemp(prefix="warm_python_")
        self.socket_path = os.path.join(self.folder, "socket")
        self.env = env
        watched, self.lifeline = os.pipe()
        self.errors = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, str(SERVER), self.socket_path, str(watched)], cwd=REPO,
                                        env=env, pass_fds=(watched,), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=self.errors)
        os.close(watched)
        started = self.process.stdout.readline() == b"ready\n"
        self.errors.seek(0)
        if not started:
            raise RuntimeError(f"{SERVER.name} did not start: {self.errors.read().decode()[-3000:]}")
        self.ready = not self.errors.read()  # the imports warned: a child would not warn again, so fork none
        atexit.register(self.close)

    def serves(self, cmd: list[str], env: dict) -> bool:
        """Whether cmd would run in the server's child as in a fresh interpreter."""
        if not self.ready or len(cmd) < 2 or cmd[0] != sys.executable:
            return False
        if cmd[1] == "-m":
            ours = len(cmd) > 2 and cmd[2].split(".")[0] == "accel_train"
        else:
            ours = cmd[1].endswith(".py") and Path(cmd[1]).resolve().is_relative_to(REPO)
        changed = {key for key in env.keys() | self.env.keys() if env.get(key) != self.env.get(key)}
        return ours and not any(key.startswith(READ_AT_IMPORT) for key in changed - READ_AT_RUN_TIME)

    def close(self) -> None:
        atexit.unregister(self.close)
        os.close(self.lifeline)
        self.process.wait()
        os.unlink(self.socket_path) if os.path.exists(self.socket_path) else None
        os.rmdir(self.folder)


class WarmProcess:
    """A command forked by the warm server, read as a `subprocess.Popen(..., stdout=PIPE, stderr=PIPE, text=True)`,
    or as one whose stdout and stderr both go to `output`."""

    def __init__(self, server: WarmServer, cmd: list[str], env: dict, cwd: Path, output: BinaryIO | None = None):
        self.args = cmd
        self.returncode = None
        if output is None:
            stdout, child_stdout = os.pipe()
            stderr, child_stderr = os.pipe()
        else:
            child_stdout, child_stderr = os.dup(output.fileno()), os.dup(output.fileno())
        child_stdin = os.open(os.devnull, os.O_RDONLY)
        self.connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.connection.connect(server.socket_path)
        request = json.dumps({"argv": cmd[1:], "cwd": str(cwd), "env": env}).encode() + b"\n"
        self.connection.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             array.array("i", [child_stdin, child_stdout, child_stderr]))])
        for fd in (child_stdin, child_stdout, child_stderr):
            os.close(fd)
        self.stdout, self.stderr = (None, None) if output else (os.fdopen(stdout, "rb"), os.fdopen(stderr, "rb"))
        self.answers = self.connection.makefile("rb")
        self.pid = json.loads(self.answers.readline())["pid"]

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.connection.settimeout(timeout)
            try:
                answer = self.answers.readline()
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self.returncode = json.loads(answer)["status"]
            self.connection.close()
        return self.returncode

    def poll(self) -> int | None:
        """The exit status if the command has ended, else None, without waiting."""
        if self.returncode is None and select.select([self.connection], [], [], 0)[0]:
            self.wait()
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Both streams to their end, as text with universal newlines, then the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        received = {self.stdout: [], self.stderr: []}
        with selectors.DefaultSelector() as selector:
            for stream in received:
                selector.register(stream, selectors.EVENT_READ)
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                for key, _ in selector.select(left):
                    chunk = os.read(key.fileobj.fileno(), 1 << 16)
                    if chunk:
                        received[key.fileobj].append(chunk)
                    else:
                        selector.unregister(key.fileobj)
                        key.fileobj.close()
        self.wait(None if deadline is None else max(deadline - time.monotonic(), 0.001))
        return tuple(as_text(b"".join(chunks)) for chunks in received.values())

    def send_signal(self, signal_number: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal_number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def as_text(data: bytes) -> str:
    """What text=True makes of a stream: the locale's decoding, universal newlines."""
    return data.decode().replace("\r\n", "\n").replace("\r", "\n")


_server: WarmServer | None = None


def subprocess_env(env: dict | None = None) -> dict:
    """The environment of the tests' commands: this one, offline wandb, unbuffered output, and `env`."""
    return {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}


def start(cmd: list[str], env: dict, cwd: Path = REPO, output: BinaryIO | None = None):
    """cmd as a process forked warm where it runs alike, else a fresh one: its .communicate() gives text, or with
    `output` its stdout and stderr go there."""
    global _server
    if os.environ.get("ACCEL_TRAIN_TESTS_COLD") != "1":
        if _server is None:
            _server = WarmServer(subprocess_env())
        if _server.serves(cmd, env):
            return WarmProcess(_server, cmd, env, cwd, output)
    if output:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
