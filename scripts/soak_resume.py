"""Soak test for exact resume: interrupt one training run many times at random moments, then compare.

    python scripts/soak_resume.py [--interruptions 30] [--processes 1|2] [--seed 0] [--work /tmp/soak_resume]

Trains a tiny model once without interruption, then trains the same config again, interrupting it
over and over: SIGKILL to every process at a random moment of a step, SIGKILL while a checkpoint is
being written, or SIGTERM / SIGINT to one process (which must save and exit 0), each time continuing
with `--resume auto`. Reports how many interruptions the run survived and whether its final weights
and metrics match the uninterrupted run bit for bit; exits 1 if anything did not hold.
Not part of the test suite: 30 interruptions take several minutes on a laptop.
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from accel_train.data.demo_corpus import write_demo_data  # noqa: E402
from helpers import TINY_MODEL, train  # noqa: E402
from interrupt import KINDS, comparable_rows, finish, interrupt, stopped_cleanly  # noqa: E402

STEPS_PER_INTERRUPTION = 5  # the run is this many times longer than the number of interruptions


def run_args(data_dir: Path, out_dir: Path, max_iters: int) -> list[str]:
    return ["--data_dir", str(data_dir), "--out_dir", str(out_dir), "--demo_data", "false",
            "--max_iters", str(max_iters), "--warmup_steps", "2", "--batch_size", "4", "--block_size", "64",
            "--gradient_accumulation_steps", "2", "--eval_interval", "5", "--eval_iters", "1", "--log_interval", "1",
            "--checkpoint_interval", "4", "--keep_last", "2", "--plot", "false", "--sample_tokens", "0", *TINY_MODEL]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interruptions", type=int, default=30)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/soak_resume"))
    opts = parser.parse_args()

    max_iters = max(12, STEPS_PER_INTERRUPTION * opts.interruptions)
    data_dir, reference, soaked = opts.work / "data", opts.work / "reference", opts.work / "soaked"
    shutil.rmtree(reference, ignore_errors=True)
    shutil.rmtree(soaked, ignore_errors=True)
    if not (data_dir / "train.bin").exists():
        write_demo_data(data_dir)
    print(f"reference: {max_iters} steps, {opts.processes} process(es), uninterrupted", flush=True)
    result = train(run_args(data_dir, reference, max_iters), processes=opts.processes, timeout=3600)
    if result.returncode:
        print(result.stderr[-3000:])
        return 1

    rng, log, args = random.Random(opts.seed), opts.work / "soak.log", run_args(data_dir, soaked, max_iters)
    survived, problems = collections.Counter(), []
    while sum(survived.values()) < opts.interruptions:
        kind = rng.choice(KINDS)
        event = interrupt(kind, args, opts.processes, soaked, rng, max_iters, log, ahead=4)
        print(event, flush=True)
        if not event["interrupted"]:
            if event["returncode"] == 0:
                break  # the run finished before the moment came
            problems.append(f"a run failed on its own: {event}")
            break
        survived[kind] += 1
        if kind in ("term", "int") and not stopped_cleanly(event):
            problems.append(f"a signalled run did not stop cleanly: {event}")
    if finish(args, opts.processes, log) != 0:
        problems.append(f"the final resume failed; see {log}")

    final = Path("checkpoints") / f"step_{max_iters}" / "model.safetensors"
    same_weights = not problems and (soaked / final).read_bytes() == (reference / final).read_bytes()
    same_metrics = not problems and comparable_rows(soaked) == comparable_rows(reference)
    print(f"survived {sum(survived.values())} interruptions ({', '.join(f'{n} {k}' for k, n in survived.items())}); "
          f"final weights bit-identical: {same_weights}; metrics identical: {same_metrics}")
    for problem in problems:
        print("problem:", problem)
    return 0 if same_weights and same_metrics else 1


if __name__ == "__main__":
    sys.exit(main())
