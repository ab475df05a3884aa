"""A stop signal during the multiple-choice scoring ends the run with a checkpoint without waiting for the scoring's
end; the cut scoring is redone on resume (with the step's validation, one unit) and the run ends bit-exact.

As in test_eval_interrupt, the interrupted run scores a task too long to finish (a file of the same name with
thousands of examples), so stopping at all is the proof; the runs that finish score a few examples."""

import json

import psutil

from interrupt import comparable_rows, finish, kill_all, reached_step, start
from test_eval_interrupt import EVAL_INTERVAL, MAX_ITERS, args, check_stop, sigterm_in_evaluation

ENDLESS, FEW = 20_000, 6  # examples of the task


def task_file(folder, examples: int):
    """`story.jsonl` in `folder`: the same task name, so its metrics keys are the same, whatever its length."""
    folder.mkdir()
    rows = [{"ctx": f"Tom had {i} red balls and", "endings": ["he played.", "a cat ran.", "it rained.", "we sang."],
             "label": i % 4} for i in range(examples)]
    (folder / "story.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(folder / "story.jsonl")


def test_sigterm_in_the_task_scoring_stops_it_and_the_resumed_run_is_exact(demo_data_dir, tmp_path):
    few, endless = task_file(tmp_path / "few", FEW), task_file(tmp_path / "endless", ENDLESS)
    reference, out, log = tmp_path / "reference", tmp_path / "out", tmp_path / "log.txt"
    assert finish([*args(demo_data_dir, reference, 2), "--tasks", few], 1, log) == 0, log.read_text()[-3000:]

    proc = start([*args(demo_data_dir, out, 2), "--tasks", endless], 1, log)
    try:  # the validation of 2 batches is long over when the signal comes: it lands in the scoring
        event = sigterm_in_evaluation(proc, psutil.Process(proc.pid), out,
                                      lambda: reached_step(out) >= EVAL_INTERVAL - 1)
    finally:
        kill_all(proc)
    check_stop(event, EVAL_INTERVAL, out, log)
    assert "story/acc" not in comparable_rows(out)[-1]

    assert finish([*args(demo_data_dir, out, 2), "--tasks", few], 1, log) == 0, log.read_text()[-3000:]
    final = f"checkpoints/step_{MAX_ITERS}/model.safetensors"
    assert (out / final).read_bytes() == (reference / final).read_bytes()
    assert comparable_rows(out) == comparable_rows(reference)  # the cut evaluation redone, scores and losses
