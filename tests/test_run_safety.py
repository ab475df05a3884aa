"""What a second run, a resumed run or a full disk may not do to a run's out_dir, and config values that
must never reach training. Every case runs the real trainer as a user would."""

import json
import shutil
import signal
import socket
import subprocess

import numpy as np
import pytest
from safetensors.torch import load_file

from accel_train.checkpointing.checkpoint import list_checkpoints, verify
from accel_train.config import load_config
from accel_train.errors import UserError
from accel_train.training.schedule import LrSchedule, lr_at
from accel_train.training.tracking import read_metrics
from helpers import (REPO, TINY_MODEL, TRAIN, assert_one_error_line, command, max_difference, run_side_by_side,
                     snapshot, subprocess_env, train)
from interrupt import kill_all, reached_step, start, wait_until

RUN = ["--demo_data", "false", "--warmup_steps", "2", "--batch_size", "4", "--block_size", "32",
       "--gradient_accumulation_steps", "1", "--eval_interval", "4", "--eval_iters", "1", "--log_interval", "1",
       "--plot", "false", "--sample_tokens", "0", *TINY_MODEL]


def args(data_dir, out_dir, *extra):
    return ["--data_dir", str(data_dir), "--out_dir", str(out_dir), *RUN, *extra]


def error_line(result, started: bool = False) -> str:
    """The single `error:` line of a refused run, with status 2; a run that `started` training may have drawn
    its progress bar before it, a refused one prints nothing else."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if started:
        lines = [line for line in lines if not line.startswith("train:")]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def test_a_resume_follows_its_own_configs_schedule_and_optimizer_settings(demo_data_dir, tmp_path):
    """Lowering the rate on resume (the cure for a diverging run) gives exactly the new schedule's rate at
    every later step; a changed weight decay takes effect too, rather than the checkpoint's."""
    first = ["--max_iters", "10", "--checkpoint_interval", "5", "--learning_rate", "2e-3", "--min_lr", "2e-4"]
    out = tmp_path / "lr"
    assert train(args(demo_data_dir, out, *first)).returncode == 0
    copy = tmp_path / "decay"
    shutil.copytree(out, copy)
    later = ["--max_iters", "20", "--checkpoint_interval", "5", "--learning_rate", "1e-4", "--min_lr", "1e-5",
             "--resume", "auto"]
    resumed, decayed = (train(args(demo_data_dir, o, *later, *extra)) for o, extra in
                        ((out, []), (copy, ["--weight_decay", "0.9"])))
    assert resumed.returncode == 0 and decayed.returncode == 0, resumed.stderr[-2000:] + decayed.stderr[-2000:]

    rows = [r for r in read_metrics(out) if r["step"] > 10]
    assert [r["step"] for r in rows] == list(range(11, 21))
    assert [r["lr"] for r in rows] == [lr_at(r["step"], LrSchedule(1e-4, 1e-5, 2, 20)) for r in rows]
    final = "checkpoints/step_20/model.safetensors"
    assert max_difference(load_file(out / final), load_file(copy / final)) > 1e-7


@pytest.mark.parametrize("override", [["--learning_rate", "nan"], ["--learning_rate", "inf"], ["--grad_clip", "nan"],
                                      ["--weight_decay", "nan"], ["--min_lr", "nan"], ["--beta2", "nan"],
                                      ["--model.rope_theta", "inf"], ["--model.rms_norm_eps", "-1e-6"],
                                      ["--weight_decay", "2000"]],
                         ids=lambda o: " ".join(o))
def test_non_finite_or_absurd_values_are_refused_when_the_config_is_loaded(override):
    with pytest.raises(UserError, match=override[0].lstrip("-").split(".")[-1]):
        load_config(override)


def test_non_finite_value_in_a_json_config_is_one_error_line(tmp_path):
    """Python's json reads NaN and Infinity; the trainer must refuse them like any other bad value."""
    config = tmp_path / "nan.json"
    config.write_text('{"max_iters": 10, "warmup_steps": 1, "learning_rate": NaN}')
    line = error_line(train(["--config", str(config), "--out_dir", str(tmp_path / "out")]))
    assert "learning_rate" in line and "finite" in line
    assert not (tmp_path / "out").exists()


def test_a_typo_in_data_dir_is_an_error_not_the_demo_corpus(tmp_path):
    """The default config makes demo data, but only in the demo's own folder."""
    typo = tmp_path / "data" / "mytinystories_typo"
    line = error_line(train(["--data_dir", str(typo), "--out_dir", str(tmp_path / "out"), "--max_iters", "40"]))
    assert "mytinystories_typo" in line and "does not exist" in line
    assert not typo.exists() and not (tmp_path / "out").exists()


def test_init_from_a_missing_folder_is_one_error_line(demo_data_dir, tmp_path):
    line = error_line(train(args(demo_data_dir, tmp_path / "out", "--max_iters", "4",
                                 "--init_from", str(tmp_path / "missing"))))
    assert "missing" in line and "folder" in line


def test_a_second_trainer_on_an_out_dir_in_use_is_refused_and_a_dead_ones_lock_does_not_block(demo_data_dir,
                                                                                               tmp_path):
    out = tmp_path / "out"
    running = start(args(demo_data_dir, out, "--max_iters", "100000", "--checkpoint_interval", "2"), 1,
                    tmp_path / "first.log")
    try:
        assert wait_until(running, lambda: len(list_checkpoints(out)) >= 1 and reached_step(out) >= 3)
        for extra in ([], ["--resume", "auto"]):
            line = error_line(train(args(demo_data_dir, out, "--max_iters", "100000", *extra)))
            assert "in use" in line and socket.gethostname() in line and str(running.pid) in line
        assert running.poll() is None  # the first run never noticed
    finally:
        assert kill_all(running) == -signal.SIGKILL
    newest = list_checkpoints(out)[-1]
    steps = int(newest.name.removeprefix("step_"))
    resumed = train(args(demo_data_dir, out, "--max_iters", str(steps + 2), "--checkpoint_interval", "2",
                         "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert verify(out / "checkpoints" / f"step_{steps + 2}") is None
    assert not (out / "train.lock").exists()  # given back at the end


def test_a_fresh_run_keeps_an_earlier_runs_metrics_and_best_checkpoint(demo_data_dir, tmp_path):
    """A run killed before its first checkpoint leaves only metrics.jsonl: a fresh run into the same out_dir
    is refused with it untouched, and --resume auto starts over with the earlier rows kept aside. A best/
    without step folders is refused too, with or without --resume auto."""
    out = tmp_path / "out"
    killed = start(args(demo_data_dir, out, "--max_iters", "100000", "--checkpoint_interval", "0"), 1,
                   tmp_path / "killed.log")
    try:
        assert wait_until(killed, lambda: reached_step(out) >= 15)
    finally:
        kill_all(killed)
    (out / "train.lock").unlink()  # the dead run's: any later start may remove it
    before = snapshot(out)
    line = error_line(train(args(demo_data_dir, out, "--max_iters", "3")))
    assert "metrics.jsonl" in line and "--resume auto" in line
    assert snapshot(out) == before

    restarted = train(args(demo_data_dir, out, "--max_iters", "4", "--resume", "auto"))
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    kept = list(out.glob("metrics.before-*.jsonl"))
    assert len(kept) == 1 and snapshot(out)[kept[0].name] == before["metrics.jsonl"]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]

    shutil.rmtree(out / "checkpoints" / "step_4")  # only best/ is left of that run
    before = snapshot(out)
    for extra in ([], ["--resume", "auto"]):
        assert "best" in error_line(train(args(demo_data_dir, out, "--max_iters", "4", *extra)))
    assert snapshot(out) == before


def test_leftovers_of_a_run_killed_between_a_save_and_its_bookkeeping_are_cleaned_up(demo_data_dir, tmp_path):
    """What a kill right after a save leaves (an unpruned older checkpoint, a temporary best/ and save, best/
    not yet updated) is put right when the next run starts, even one that has nothing left to train."""
    out = tmp_path / "out"
    common = ["--checkpoint_interval", "4", "--keep_last", "2", "--resume", "auto"]
    assert train(args(demo_data_dir, out, "--max_iters", "12", *common)).returncode == 0
    root = out / "checkpoints"
    shutil.copytree(root / "step_8", root / "step_4")  # not yet pruned
    shutil.rmtree(root / "best")  # not yet updated
    for leftover in (".tmp_best", ".tmp_step_16", ".deleting_step_0"):
        (root / leftover).mkdir()
        (root / leftover / "model.safetensors").write_bytes(b"partial")

    result = train(args(demo_data_dir, out, "--max_iters", "12", *common))
    assert result.returncode == 0 and "nothing to do" in result.stdout, result.stderr[-2000:]
    assert sorted(p.name for p in root.iterdir()) == ["best", "step_12", "step_8"]
    best_step = min(read_metrics(out), key=lambda r: r.get("val_loss", float("inf")))["step"]
    if best_step in (8, 12):  # best/ can only come back from a checkpoint that still exists
        assert json.loads((root / "best" / "trainer_state.json").read_text())["step"] == best_step
    assert verify(root / "best") is None


def limited_file_size(kib: int, argv: list[str]) -> subprocess.CompletedProcess:
    """The trainer with every file it writes limited to `kib` KiB: a disk that fills up, for this process only."""
    script = f'ulimit -f {kib} && exec "$@"'
    return subprocess.run(["bash", "-c", script, "bash", *argv], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def test_a_disk_that_fills_between_checkpoints_leaves_whole_metrics_rows(demo_data_dir, tmp_path):
    out = tmp_path / "out"
    result = limited_file_size(2, command(TRAIN, args(demo_data_dir, out, "--max_iters", "200",
                                                      "--checkpoint_interval", "0")))
    line = error_line(result, started=True)
    assert "metrics.jsonl" in line and "disk full" in line
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) > 3 and [json.loads(row)["step"] for row in rows] == list(range(1, len(rows) + 1))
    assert len(read_metrics(out)) == len(rows)


def test_resuming_on_a_full_disk_is_one_error_line_and_changes_nothing(demo_data_dir, tmp_path):
    """Resuming from step 12 of 24 drops the metrics rows past it; over 1 KiB are kept, so their rewrite fails
    when no file may grow past 1 KiB."""
    out = tmp_path / "out"
    run = ["--max_iters", "24", "--checkpoint_interval", "12"]
    assert train(args(demo_data_dir, out, *run)).returncode == 0
    (out / "checkpoints" / "step_24").rename(out / "checkpoints" / "moved_away")
    assert len("".join(line for line in (out / "metrics.jsonl").read_text().splitlines(True)[:12])) > 1024
    before = snapshot(out)
    line = error_line(limited_file_size(1, command(TRAIN, args(demo_data_dir, out, *run, "--resume", "auto"))))
    assert str(out) in line and ("disk full" in line or "File too large" in line)
    assert snapshot(out) == before


def test_resuming_from_best_in_its_own_out_dir_continues_the_run(demo_data_dir, tmp_path):
    """best/ is a verified checkpoint: naming it continues the run (the last save was the best, so nothing is
    newer), and the next save's bookkeeping treats it as any other. A leftover of a save is refused untouched."""
    out = tmp_path / "out"
    assert train(args(demo_data_dir, out, "--max_iters", "4")).returncode == 0
    root = out / "checkpoints"
    shutil.copytree(root / "step_4", root / ".tmp_step_8")  # as a save killed before its rename leaves it
    before = snapshot(out)
    line = error_line(train(args(demo_data_dir, out, "--max_iters", "8", "--resume", str(root / ".tmp_step_8"))))
    assert ".tmp_step_8" in line and "temporary" in line
    assert snapshot(out) == before

    resumed = train(args(demo_data_dir, out, "--max_iters", "6", "--keep_last", "1", "--resume", str(root / "best")))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {root / 'best'} at step 4" in resumed.stdout
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))
    assert sorted(p.name for p in root.iterdir()) == ["best", "step_6"]  # pruned to keep_last, leftover cleaned


def changed_copy(source, target, split_file, change):
    """A copy of data folder `source` whose `split_file` holds `change(tokens)`, meta.json's count kept true."""
    shutil.copytree(source, target)
    tokens = change(np.fromfile(target / split_file, dtype=np.uint16))
    tokens.tofile(target / split_file)
    meta = json.loads((target / "meta.json").read_text())
    split = split_file.removesuffix(".bin")
    meta["tokens"][split] = len(tokens)
    meta["shards"][split] = [{"file": split_file, "tokens": len(tokens)}]  # the split's one shard
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def test_a_resume_on_other_data_is_refused_unless_accepted_and_a_moved_copy_is_the_same_data(demo_data_dir,
                                                                                              tmp_path):
    """The checkpoint records what identifies its data, not where it lay: the same tokens in a moved folder
    resume, other tokens (same size, or another size) are refused with nothing touched, until
    accept_data_change says so."""
    out = tmp_path / "out"
    assert train(args(demo_data_dir, out, "--max_iters", "4")).returncode == 0
    moved = shutil.copytree(demo_data_dir, tmp_path / "moved")
    shuffled = changed_copy(demo_data_dir, tmp_path / "shuffled", "train.bin", lambda t: t[::-1])
    shorter = changed_copy(demo_data_dir, tmp_path / "shorter", "val.bin", lambda t: t[:-1000])
    outs = {name: shutil.copytree(out, tmp_path / f"out_{name}")
            for name in ("moved", "shuffled", "shorter", "accepted")}
    before = {name: snapshot(folder) for name, folder in outs.items()}
    resume = ["--max_iters", "6", "--resume", "auto"]
    results = run_side_by_side([
        ("moved", command(TRAIN, args(moved, outs["moved"], *resume)), []),
        ("shuffled", command(TRAIN, args(shuffled, outs["shuffled"], *resume)),
         ["train: as many tokens, but other ones", "--accept_data_change true", str(demo_data_dir)]),
        ("shorter", command(TRAIN, args(shorter, outs["shorter"], *resume)), ["val:", "--accept_data_change"]),
        ("accepted", command(TRAIN, args(shuffled, outs["accepted"], *resume, "--accept_data_change", "true")), [])])
    for name in ("shuffled", "shorter"):
        status, stderr, words = results[name]
        assert_one_error_line(status, stderr, *words)
        assert snapshot(outs[name]) == before[name]
    for name in ("moved", "accepted"):
        assert results[name][0] == 0, results[name][1][-2000:]
        assert verify(outs[name] / "checkpoints" / "step_6") is None
    recorded = [json.loads((outs[name] / "checkpoints" / "step_6" / "trainer_state.json").read_text())["data"]
                for name in ("accepted", "moved")]  # the data each run went on with: the next resume checks that
    assert recorded[0]["train"] != recorded[1]["train"] and recorded[0]["val"] == recorded[1]["val"]


def test_the_lock_holds_when_train_lock_is_deleted_or_replaced_and_a_replaced_out_dir_stops_the_run(demo_data_dir,
                                                                                                    tmp_path):
    """A SIGKILLed run leaves train.lock behind, so users delete it: the lock is on out_dir itself too, and the
    refusal still names the live run. A folder moved away and recreated under its name (rm -rf and a new run)
    stops the live run at its next write, with one error line and nothing written into the new folder."""
    out = tmp_path / "out"
    running = start(args(demo_data_dir, out, "--max_iters", "100000", "--checkpoint_interval", "2"), 1,
                    tmp_path / "first.log")
    try:
        assert wait_until(running, lambda: len(list_checkpoints(out)) >= 1)
        for replace in (lambda lock: lock.unlink(), lambda lock: lock.write_text('{"host": "elsewhere"}\n')):
            replace(out / "train.lock")
            line = error_line(train(args(demo_data_dir, out, "--max_iters", "100000", "--resume", "auto")))
            assert "in use" in line and socket.gethostname() in line and f"process {running.pid}," in line
            assert "since" in line and running.poll() is None
        # just after an odd step's row: its save (at even steps) is done and the next write is a row
        assert wait_until(running, lambda: reached_step(out) % 2 == 1)
        out.rename(tmp_path / "moved")
        out.mkdir()
        assert running.wait(timeout=300) == 2
    finally:
        kill_all(running)
    errors = [line for line in (tmp_path / "first.log").read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(out) in errors[0] and "removed, moved or replaced" in errors[0]
    assert list(out.iterdir()) == []
    assert verify(list_checkpoints(tmp_path / "moved")[-1]) is None
