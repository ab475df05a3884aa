"""Checkpoint folders on disk: verification, retention, best/, and which one `--resume` picks.

These work on small hand-made checkpoint folders (real files, real manifests); the trainer's own
checkpoints are exercised end to end in test_resume.py.
"""

import json
import sys

import pytest

from accel_train.checkpointing.checkpoint import (STATE_FILE, checkpoints_root, latest_checkpoint, list_checkpoints,
                                                  prune, resolve_resume, update_best, verify, write_manifest)
from accel_train.checkpointing.trainer_state import FORMAT_VERSION
from accel_train.errors import UserError
from helpers import assert_one_error_line, run


def trainer_state(step, **more):
    """A trainer_state.json that every reader takes: each field the trainer writes, in this version's format."""
    return {"step": step, "tokens": 0, "next_batch": 0, "skipped_steps": 0, "processes": 1, "run_id": "run",
            "config": {}, "data": {}, "best_val_loss": None, "val_loss": None, "evaluation_owed": None,
            "format_version": FORMAT_VERSION, **more}


def make_checkpoint(out_dir, name, step, val_loss=None, payload=b"weights"):
    folder = checkpoints_root(out_dir) / name
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(payload * 100 + str(step).encode())
    (folder / STATE_FILE).write_text(json.dumps(trainer_state(step, val_loss=val_loss)))
    write_manifest(folder)
    return folder


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def test_verify_catches_flipped_truncated_missing_and_unlisted(tmp_path):
    folders = [make_checkpoint(tmp_path, f"step_{i}", i) for i in range(1, 5)]
    assert verify(folders[0]) is None
    flip_a_byte(folders[1] / "model.safetensors")
    assert "checksum" in verify(folders[1])
    assert verify(folders[1], checksums=False) is None  # the cheap check sees sizes only
    truncate(folders[2] / "model.safetensors")
    assert "bytes" in verify(folders[2], checksums=False)
    (folders[3] / "manifest.json").unlink()
    assert verify(folders[3]) == "no readable manifest"


def test_resume_auto_takes_newest_sound_checkpoint_and_keeps_broken_ones(tmp_path):
    for i in (4, 8, 12):
        make_checkpoint(tmp_path, f"step_{i}", i)
    flip_a_byte(checkpoints_root(tmp_path) / "step_12" / "model.safetensors")
    truncate(checkpoints_root(tmp_path) / "step_8" / "model.safetensors")
    (checkpoints_root(tmp_path) / ".tmp_step_16").mkdir()  # a save that was killed
    for name in ("step_\u00b2", "step_+3", "step_ 5"):  # not step folders (str.isdigit() takes the first)
        (checkpoints_root(tmp_path) / name).mkdir()
    with pytest.warns(UserWarning) as caught:
        assert resolve_resume("auto", tmp_path) == checkpoints_root(tmp_path) / "step_4"
    assert ["step_12" in str(w.message) for w in caught] == [True, False]
    assert "step_8" in str(caught[1].message)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4", "step_8", "step_12"]  # none deleted


def test_resume_auto_refuses_when_every_checkpoint_is_broken(tmp_path):
    truncate(make_checkpoint(tmp_path, "step_4", 4) / "model.safetensors")
    with pytest.raises(UserError, match="no checkpoint .* passed verification .*step_4: model.safetensors has"):
        resolve_resume("auto", tmp_path)  # the error names each broken one: no warnings before it
    assert resolve_resume("auto", tmp_path / "empty") is None  # nothing at all: a fresh start


def test_resuming_an_older_checkpoint_into_a_newer_run_is_refused(tmp_path):
    old = make_checkpoint(tmp_path / "a", "step_4", 4)
    make_checkpoint(tmp_path / "a", "step_8", 8)
    with pytest.raises(UserError, match="newer than"):
        resolve_resume(str(old), tmp_path / "a")
    assert resolve_resume(str(old), tmp_path / "b") == old  # into another out_dir it is fine


def test_prune_keeps_newest_sound_ones_and_never_the_broken_or_newer(tmp_path):
    for i in range(1, 7):
        make_checkpoint(tmp_path, f"step_{i}", i)
    make_checkpoint(tmp_path, "step_9", 9)  # newer than the run: skipped as broken at resume
    truncate(checkpoints_root(tmp_path) / "step_5" / "model.safetensors")
    (checkpoints_root(tmp_path) / ".tmp_step_7").mkdir()
    deleted = prune(tmp_path, keep_last=2, newest=checkpoints_root(tmp_path) / "step_6")
    assert sorted(p.name for p in deleted) == ["step_1", "step_2", "step_3"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4", "step_5", "step_6", "step_9"]
    assert not list(checkpoints_root(tmp_path).glob(".*"))  # stale temporary folders are gone
    assert prune(tmp_path, keep_last=0, newest=checkpoints_root(tmp_path) / "step_6") == []


def test_prune_never_deletes_the_only_good_checkpoint(tmp_path):
    good = make_checkpoint(tmp_path, "step_1", 1)
    for i in (2, 3):
        truncate(make_checkpoint(tmp_path, f"step_{i}", i) / "model.safetensors")
    prune(tmp_path, keep_last=1, newest=checkpoints_root(tmp_path) / "step_3")
    assert good.is_dir() and verify(good) is None


def test_best_follows_the_lowest_validation_loss_and_survives_pruning(tmp_path):
    best = checkpoints_root(tmp_path) / "best"
    steps = {1: 3.0, 2: None, 3: 2.5, 4: 2.7}
    for step, loss in steps.items():
        folder = make_checkpoint(tmp_path, f"step_{step}", step, val_loss=loss)
        assert update_best(tmp_path, folder, loss) == (step in (1, 3))
        prune(tmp_path, keep_last=1, newest=folder)
    assert json.loads((best / STATE_FILE).read_text())["step"] == 3
    assert verify(best) is None
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4"]
    assert latest_checkpoint(tmp_path).name == "step_4"  # best/ is not a step to resume by default


def test_resume_path_refuses_what_is_not_a_checkpoint_to_continue(tmp_path):
    """A file, the temporary folder of a save cut short (complete or not), a run's out_dir instead of one of
    its checkpoints: each is one error naming the path; none is touched."""
    run = tmp_path / "run"
    step = make_checkpoint(run, "step_4", 4)
    leftover = make_checkpoint(run, ".tmp_step_8", 8)  # complete, killed before the rename
    cases = {step / "model.safetensors": "is a file", leftover: "temporary folder",
             checkpoints_root(run) / ".deleting_step_2": "temporary folder", run: "--resume auto"}
    for path, words in cases.items():
        with pytest.raises(UserError, match=f"cannot resume from {path}.*{words}"):
            resolve_resume(str(path), run)
    assert verify(leftover) is None and verify(step) is None


def test_resume_path_into_an_out_dir_of_another_run_is_refused(tmp_path):
    """Continuing a checkpoint into an out_dir with another run's checkpoints would mix their steps and best/;
    its own run's out_dir (or a copy) and an empty one are fine."""
    mine = make_checkpoint(tmp_path / "a", "step_8", 8)
    (mine / STATE_FILE).write_text(json.dumps(trainer_state(8, run_id="mine")))
    write_manifest(mine)
    theirs = make_checkpoint(tmp_path / "b", "best", 4)
    (theirs / STATE_FILE).write_text(json.dumps(trainer_state(4, run_id="theirs")))
    write_manifest(theirs)
    with pytest.raises(UserError, match="another run .*best is of run theirs"):
        resolve_resume(str(mine), tmp_path / "b")
    assert resolve_resume(str(mine), tmp_path / "a") == mine
    assert resolve_resume(str(mine), tmp_path / "empty") == mine



WRONG_FIELDS = [  # (fields of trainer_state.json as edited by hand, words its one error line must hold)
    ({"format_version": "1"}, ['has format_version "1", not a whole number', "reads format_version 1 only"]),
    ({"step": "8"}, ["'step' must be a whole number, not \"8\""]),
    ({"processes": 0, "best_val_loss": "low"}, ["'processes' must be a positive whole number, not 0",
                                                "'best_val_loss' must be a number or null, not \"low\""]),
    ({"config": {"batch_size": "8"}}, ["config is not a valid one", "config key 'batch_size' must be int"]),
    ({"run_id": None, "data": None}, ["'run_id' must be a string", "'data' must be an object"]),
    ({"spike_history": {"loss": ["x"], "grad_norm": []}}, ["'spike_history' must be {\"loss\": [numbers]"]),
]


def test_every_trainer_state_field_is_read_with_its_type_checked(tmp_path):
    """A hand-edited trainer_state.json (its manifest rewritten to match) is refused naming each wrong field as
    the file holds it, by every reader (resume here, sample's command line in one error line, as each reader reads
    it through read_trainer_state); never a traceback deep in a resume, nor "1" shown as if it were 1."""
    for i, (fields, words) in enumerate(WRONG_FIELDS):
        folder = make_checkpoint(tmp_path / str(i), "step_8", 8)
        (folder / STATE_FILE).write_text(json.dumps({**trainer_state(8), **fields}))
        write_manifest(folder)
        with pytest.raises(UserError) as refused:
            resolve_resume(str(folder), tmp_path / "elsewhere")
        assert all(word in str(refused.value) for word in words), refused.value
    sampled = run([sys.executable, "-m", "accel_train.sample", "--checkpoint", str(tmp_path / "0")])
    assert_one_error_line(sampled.returncode, sampled.stderr, "cannot read checkpoint", *WRONG_FIELDS[0][1])
