"""An error that one process of a launched run meets alone (here rank 1 runs as on a node whose disk lacks the
task file) reaches the user as one `error:` line naming that process: the other processes, cut off in a
collective by its exit, leave without a traceback."""

import re

from helpers import REPO, TINY_MODEL, TRAIN, command, run

HIDDEN_ON_RANK_1 = {"PYTHONPATH": str(REPO / "tests" / "node_without"), "HIDE_NAME": "only_on_rank_0.jsonl",
                    "HIDE_RANK": "1"}


def test_an_error_on_rank_1_alone_is_one_line_naming_the_process(demo_data_dir, tmp_path):
    task = tmp_path / "only_on_rank_0.jsonl"
    task.write_text('{"ctx": "A cat", "endings": ["sat.", "flew."], "label": 0}\n')
    out = tmp_path / "out"
    result = run(command(TRAIN, ["--data_dir", str(demo_data_dir), "--out_dir", str(out), *TINY_MODEL,
                                 "--max_iters", "2", "--warmup_steps", "1", "--batch_size", "4", "--block_size", "64",
                                 "--eval_iters", "1", "--demo_data", "false", "--plot", "false", "--sample_tokens",
                                 "0", "--tasks", str(task)], processes=2), env=HIDDEN_ON_RANK_1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: process 1 of 2: cannot read task file") and str(task) in errors[0], errors
    assert not re.search(r"accel_train/\S+\", line \d+", result.stderr), result.stderr[-3000:]  # no trainer traceback
    assert result.returncode != 0 and "exitcode  : 2" in result.stderr, result.stderr[-3000:]
