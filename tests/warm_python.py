"""A Python that has already imported torch and accel_train, and forks a command instead of starting one.

Most of the suite's time went to starting interpreters: `import torch`, accelerate and torch._dynamo cost a
trainer process about 3.5 CPU-seconds before its first line of work, and the suite starts hundreds. This
server imports them once per test worker; `helpers.run` sends it a command line, its working folder, its
environment and its three standard streams, and it forks a child that runs the command as `python` would
(`runpy`, `sys.argv`, `atexit`, the exit status) in a real process of its own. The client sends only what the
imports cannot have seen: the same interpreter, the same values of every environment variable read at import
time, and commands of this repository. The rest (signals to a process group, resource limits, stdin, other
programs) starts a fresh interpreter as before.

Protocol, one connection per command: the client sends one JSON line {argv, cwd, env} with the file
descriptors of stdin, stdout and stderr; the server answers {"pid": N} once forked and {"status": S} (as
`Popen.returncode`) when the child has ended. The server exits when its parent closes the pipe it watches.
"""

from __future__ import annotations

import array
import atexit
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
import traceback
import warnings


def load_the_commands() -> None:
    """Import what every command imports. Nothing here may run a tensor operation: a fork after OpenMP has
    started its threads is not safe."""
    import torch._dynamo  # noqa: F401  (every torch.optim optimizer imports it on construction)

    import accel_train.bench  # noqa: F401
    import accel_train.export  # noqa: F401
    import accel_train.plan  # noqa: F401  (and the planning the trainer's main process imports when it plans)
    import accel_train.plot  # noqa: F401
    import accel_train.prepare  # noqa: F401
    import accel_train.sample  # noqa: F401
    import accel_train.score  # noqa: F401
    import accel_train.train  # noqa: F401


def receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """One request: its JSON line and the three descriptors that came with it."""
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, ancillary, _, _ = connection.recvmsg(1 << 16, socket.CMSG_SPACE(3 * array.array("i").itemsize))
        if not chunk:
            raise EOFError("the client left before its request was whole")
        data += chunk
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[:len(payload) - len(payload) % array.array("i").itemsize]))
    return json.loads(data), fds


def exit_status(code) -> int:
    """What the interpreter makes of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def print_traceback() -> None:
    """The current exception's traceback as the interpreter prints it: from the command's frames, not this file's."""
    kind, error, frames = sys.exc_info()
    while frames.tb_next and frames.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
        frames = frames.tb_next
    traceback.print_exception(kind, error, frames)


def run_command(request: dict) -> int:
    """Run argv (`script.py ...` or `-m module ...`) in this process as `python argv` would, and its exit status."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    interrupted = False
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            # runpy warns that the module was imported before it ran: here by the server, not by the command
            warnings.filterwarnings("ignore", f"'{argv[1]}' found in sys.modules", RuntimeWarning)
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = exit_status(stop.code)
    except BaseException as error:
        print_traceback()
        interrupted, status = isinstance(error, KeyboardInterrupt), 1
    threading._shutdown()  # what the interpreter does at exit: wait for threads, then the atexit functions
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            status = status or 120
    if interrupted:  # as the interpreter ends on a KeyboardInterrupt: by SIGINT itself
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status


def fork_command(connection: socket.socket, own_fds: list[int]) -> int:
    """Fork a child that runs the connection's command on its streams; the child's pid."""
    request, fds = receive(connection)
    pid = os.fork()
    if pid == 0:
        try:
            for fd in own_fds:
                os.close(fd)
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os._exit(run_command(request))
        finally:
            os._exit(1)
    for fd in fds:
        os.close(fd)
    connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return pid


def serve(listener: socket.socket, parent_pipe: int) -> None:
    """Fork a child per connection; answer each connection with its child's status; stop with the parent."""
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "connect")
    selector.register(parent_pipe, selectors.EVENT_READ, "parent")
    connections = {}  # pidfd -> (pid, connection)
    while True:
        for key, _ in selector.select():
            if key.data == "parent":
                return
            if key.data == "connect":
                connection, _ = listener.accept()
                own = [listener.fileno(), parent_pipe, connection.fileno(), selector.fileno(),
                       *(c.fileno() for _, c in connections.values()), *connections]
                try:
                    pid = fork_command(connection, own)
                except (EOFError, OSError):
                    connection.close()
                    continue
                pidfd = os.pidfd_open(pid)
                connections[pidfd] = (pid, connection)
                selector.register(pidfd, selectors.EVENT_READ, "child")
            else:
                pid, connection = connections.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                _, raw = os.waitpid(pid, 0)
                try:
                    connection.sendall(json.dumps({"status": os.waitstatus_to_exitcode(raw)}).encode() + b"\n")
                except OSError:  # the client gave up on it (a timeout): nobody is waiting
                    pass
                connection.close()


def main() -> None:
    socket_path, parent_pipe = sys.argv[1], int(sys.argv[2])
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository, as `-m` there has it
    load_the_commands()  # whatever this writes to stderr (a warning) the client sees, and then starts no child here
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    print("ready", flush=True)
    serve(listener, parent_pipe)


if __name__ == "__main__":
    main()
