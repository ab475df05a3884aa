"""Soak prepare's signal handling: many prepares, each sent SIGINT or SIGTERM at a random moment, on a loaded CPU.

    python scripts/soak_prepare_signals.py --runs 300 --burners 2

Each run starts `python -m accel_train.prepare` in a session of its own, with 1 to 3 workers, on a real file or
on a pipe that stalls half way (its writer stays open), with a parent that left the signals as they are,
blocked, or ignored; after a random delay it sends SIGINT or SIGTERM to prepare alone or to its whole process
group (as Ctrl-C does). A run passes when, within --deadline seconds, prepare has either finished (status 0,
the output complete) or stopped with status 128 + the signal and one `error:` line naming it, leaving no
staging folder, no process of its session and no output (or, for a signal after it was published, the whole
output) behind. `--burners N` keeps N processes spinning beside it.
A signal that comes while Python itself starts, before prepare's first line runs, ends it as Python does
(counted apart: nothing may be written); where the parent ignored the signal, such a one is lost, so a prepare
still running then is sent a second one, which must stop it (counted apart). Prints one line per failure and a
summary; exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from accel_train.data.demo_corpus import stories  # noqa: E402

SEP = "<|endoftext|>"
PARENTS = ("plain", "blocked", "ignored")  # what the parent left prepare: the signals as they are, blocked, ignored


def burn() -> None:
    while True:
        pass


def parent_setup(parent: str):
    """A preexec_fn that leaves the child the signals as a careless parent would."""
    def setup():
        if parent == "blocked":
            signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM))
        elif parent == "ignored":
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
    return setup


def session_processes(sid: int) -> list[psutil.Process]:
    """The live processes of session `sid` (prepare and its workers), zombies left out."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
    return found


def feed_pipe(pipe: Path, text: str) -> int:
    """Open `pipe` for writing, write `text` into it from a thread and keep it open (prepare sees no end of input);
    returns the descriptor to close afterwards."""
    writer = os.open(pipe, os.O_RDWR)

    def feed():
        with contextlib.suppress(BrokenPipeError), open(pipe, "w") as copy:  # broken once prepare and writer end
            copy.write(text)
    threading.Thread(target=feed, daemon=True).start()
    return writer


def handlers_line() -> int:
    """The line of accel_train/prepare.py that puts its first signal handlers in place."""
    source = (REPO / "accel_train" / "prepare.py").read_text().splitlines()
    return next(i for i, line in enumerate(source, 1) if line.strip() == "exit_at_once_on_signals()")


def before_its_code(status: int, stderr: str, sig: signal.Signals) -> bool:
    """Whether the signal ended Python before prepare's handlers were in place: while the interpreter started, or
    prepare.py's lines before them ran. It was then killed by it (SIGTERM's default), or a KeyboardInterrupt
    traceback shows no line of prepare.py at or past the handlers'."""
    if status == -sig:
        return True
    lines = [int(n) for n in re.findall(r'accel_train/prepare.py", line (\d+)', stderr)]
    return status == 1 and stderr.rstrip().endswith("KeyboardInterrupt") and all(n < handlers_line() for n in lines)


def wait(proc: subprocess.Popen, seconds: float) -> int | None:
    """proc's status, or None where it still runs after `seconds`."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def one_run(root: Path, corpus: Path, rng: random.Random, deadline: float, max_delay: float) -> tuple[str, dict]:
    """(outcome, details) of one prepare sent one signal: outcome is 'finished', 'stopped' or 'FAILED: ...'."""
    work = Path(tempfile.mkdtemp(dir=root))
    out = work / "out"
    case = {"workers": rng.choice([1, 2, 3]), "signal": rng.choice(["SIGINT", "SIGTERM"]),
            "group": rng.random() < 0.5, "input": rng.choice(["file", "stalled pipe"]), "parent": rng.choice(PARENTS),
            "delay": round(rng.uniform(0, max_delay), 3)}
    writer = None
    source = corpus
    if case["input"] == "stalled pipe":
        source = work / "corpus.pipe"
        os.mkfifo(source)
        writer = feed_pipe(source, corpus.read_text()[:3_000_000])
    cmd = [sys.executable, "-m", "accel_train.prepare", "--input", str(source), "--out", str(out), "--tokenizer",
           "byte", "--separator", SEP, "--workers", str(case["workers"])]
    sig = signal.Signals[case["signal"]]
    with open(work / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=parent_setup(case["parent"]), env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(case["delay"])
    if proc.poll() is None:
        os.killpg(proc.pid, sig) if case["group"] else proc.send_signal(sig)
    status = wait(proc, deadline)
    if status is None and case["parent"] == "ignored":  # sent while Python started, before prepare's handler: the
        case["resent"] = True                           # parent's SIG_IGN dropped it; prepare must take the next
        os.killpg(proc.pid, sig) if case["group"] else proc.send_signal(sig)
        status = wait(proc, deadline)
    lingering = session_processes(proc.pid)
    for leftover in lingering:
        leftover.kill()
    proc.wait()
    if writer is not None:
        os.close(writer)
    stderr = (work / "stderr.txt").read_text()
    lines = stderr.splitlines()
    staging = [p.name for p in work.iterdir() if p.name.startswith(".")]
    case.update(status=status, stderr=lines[-3:], staging=staging, lingering=len(lingering))
    if status is None:
        outcome = f"FAILED: still running after {deadline} s"
    elif lingering:
        outcome = "FAILED: processes of its session outlived it"
    elif status in (0, -sig) and (out / "meta.json").is_file() and not staging:
        outcome = "finished"  # -sig: the signal came while Python exited, after the output was in place
    elif status == 0:
        outcome = "FAILED: status 0, output incomplete"
    elif before_its_code(status, stderr, sig):
        outcome = "before its code" if not staging and not out.exists() else "FAILED: left files before its code"
    elif status != 128 + sig:
        outcome = f"FAILED: status {status}"
    elif len(lines) != 1 or not lines[0].startswith("error: ") or sig.name not in lines[0]:
        outcome = "FAILED: not one error line naming the signal"
    elif staging or (out.exists() and not (out / "meta.json").is_file()):
        outcome = "FAILED: staging or part of the output left behind"
    else:
        outcome = "stopped after a resend" if case.get("resent") else "stopped"
    shutil.rmtree(work)
    return outcome, case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--burners", type=int, default=2, help="CPU-spinning processes beside the soak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=20, help="seconds a signalled prepare may take to end")
    parser.add_argument("--max_delay", type=float, default=2.0, help="longest wait before the signal, in seconds")
    args = parser.parse_args()
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
    for burner in burners:
        burner.start()
    rng = random.Random(args.seed)
    outcomes = Counter()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "corpus.txt"
        text = SEP.join(stories(2000, seed=0))
        corpus.write_text((text + SEP) * (6_000_000 // len(text) + 1))
        for i in range(args.runs):
            outcome, case = one_run(root, corpus, rng, args.deadline, args.max_delay)
            outcomes[outcome.split(":")[0]] += 1
            if outcome.startswith("FAILED"):
                print(f"run {i}: {outcome} {case}", flush=True)
    for burner in burners:
        burner.terminate()
    print(f"{args.runs} runs in {time.monotonic() - started:.0f} s with {args.burners} burners: "
          + ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())))
    sys.exit(1 if outcomes["FAILED"] else 0)


if __name__ == "__main__":
    main()
