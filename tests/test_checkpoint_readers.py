"""Every reader of a checkpoint (sample, export, resume) verifies it against its manifest first: a damaged one
ends with one `error:` line naming the folder and the damage, never a traceback or a sample of garbage;
and best/ is a copy that damage to its step folder cannot reach. Files damaged before the manifest was written
pass it, and then fail to load: that too is one line, on one process or two.

Readers run as real processes, side by side, each on its own copy of the shared trained run.
"""

import json
import random
import shutil
import sys

import pytest
from safetensors.torch import save_model

from accel_train.checkpointing.checkpoint import (MANIFEST_FILE, checkpoints_root, list_checkpoints, update_best,
                                                  verify, write_manifest)
from accel_train.models.gemma3 import Gemma3, ModelConfig
from helpers import TINY_MODEL, TRAIN, assert_one_error_line, command, run, run_side_by_side, snapshot, train
from test_checkpoint import flip_a_byte, make_checkpoint, truncate

SAMPLE = [sys.executable, "-m", "accel_train.sample", "--max_new_tokens", "20", "--prompt", "Once", "--seed", "3"]
EXPORT = [sys.executable, "-m", "accel_train.export"]


def unlist_weights(folder):
    """A manifest that leaves the weights out, so that damage to them would go unseen."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    del manifest["files"]["model.safetensors"]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    flip_a_byte(folder / "model.safetensors")


DAMAGE = {
    "flipped": lambda folder: flip_a_byte(folder / "model.safetensors"),
    "truncated": lambda folder: truncate(folder / "model.safetensors"),
    "no manifest": lambda folder: (folder / MANIFEST_FILE).unlink(),
    "unlisted": unlist_weights,
}


def setup_cases(root, trained_out, data_dir):
    """(name, command, words the error line must contain) for each reader and damage, on copies of the run."""
    train_args = ["--data_dir", str(data_dir), *TINY_MODEL, "--max_iters", "30", "--warmup_steps", "2",
                  "--batch_size", "8", "--gradient_accumulation_steps", "1", "--learning_rate", "3e-3",
                  "--min_lr", "3e-4", "--eval_interval", "12", "--sample_tokens", "0", "--plot", "false"]
    cases = []

    def damaged(name, damage):
        out = root / name
        shutil.copytree(trained_out, out)
        folder = list_checkpoints(out)[-1]
        DAMAGE[damage](folder)
        return out, folder

    for damage, words in (("flipped", ["checksum"]), ("truncated", ["bytes"]), ("no manifest", ["manifest"]),
                          ("unlisted", ["model.safetensors is not in the manifest"])):
        out, folder = damaged(f"sample_{damage}", damage)
        cases.append((f"sample, {damage}", [*SAMPLE, "--checkpoint", str(folder)], [str(folder), *words]))
    out, folder = damaged("export", "flipped")
    cases.append(("export, flipped", [*EXPORT, "--checkpoint", str(folder), "--out", str(root / "hf")],
                  [str(folder), "checksum"]))
    out, folder = damaged("resume_path", "flipped")
    cases.append(("resume a path, flipped", command(TRAIN, [*train_args, "--out_dir", str(root / "elsewhere"),
                                                           "--resume", str(folder)]), [str(folder), "checksum"]))
    out, folder = damaged("sample_out_dir", "flipped")
    cases.append(("sample an out_dir, all broken", [*SAMPLE, "--checkpoint", str(out)],
                  ["passed verification", folder.name, "checksum"]))
    out, folder = damaged("resume_auto", "flipped")
    cases.append(("resume auto, all broken", command(TRAIN, [*train_args, "--out_dir", str(out), "--resume", "auto"]),
                  ["passed verification", folder.name, "checksum"]))
    return cases


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, trained_run, demo_data_dir):
    root = tmp_path_factory.mktemp("readers")
    accumulated = root / "accumulated"  # 1 process x 2 micro-batches: resumable on 2 processes x 1
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(accumulated), *TINY_MODEL, "--max_iters", "2",
                    "--warmup_steps", "1", "--batch_size", "4", "--gradient_accumulation_steps", "2",
                    "--eval_iters", "1", "--sample_tokens", "0", "--plot", "false"])
    assert result.returncode == 0, result.stderr[-3000:]
    cases = [*setup_cases(root, trained_run[0], demo_data_dir),
             *setup_listed_cases(root, trained_run[0], accumulated, demo_data_dir)]
    before = snapshot(root)
    return run_side_by_side(cases), root, before


CASES = ["sample, flipped", "sample, truncated", "sample, no manifest", "sample, unlisted", "export, flipped",
         "resume a path, flipped", "sample an out_dir, all broken", "resume auto, all broken",
         # damaged before the manifest was written, so that it passes
         "sample, random_bytes model.safetensors", "sample, other_shape_weights model.safetensors",
         "sample, halve trainer_state.json", "sample, not_an_object trainer_state.json",
         "export, halve model.safetensors", "resume, random_bytes model.safetensors",
         "resume, other_shape_weights model.safetensors", "resume, halve optimizer.bin",
         "resume, random_bytes optimizer.bin", "resume, halve random_states_0.pkl",
         "resume, random_bytes trainer_state.json"]


@pytest.mark.parametrize("name", CASES)
def test_a_damaged_checkpoint_is_refused_with_one_error_line(outcomes, name):
    status, stderr, words = outcomes[0][name]
    assert_one_error_line(status, stderr, *words)


def test_refusing_writes_nothing(outcomes):
    _, root, before = outcomes
    assert snapshot(root) == before
    assert not [p for p in root.iterdir() if p.name.startswith(("hf", "elsewhere"))]  # nor a folder a resume made


def test_best_is_a_copy_that_damage_to_its_step_cannot_reach(demo_data_dir, tmp_path):
    out = tmp_path / "run"
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(out), *TINY_MODEL, "--max_iters", "4",
                    "--warmup_steps", "1", "--batch_size", "4", "--eval_interval", "4", "--eval_iters", "1",
                    "--sample_tokens", "0", "--plot", "false"])
    assert result.returncode == 0, result.stderr[-3000:]
    step, best = checkpoints_root(out) / "step_4", checkpoints_root(out) / "best"
    assert json.loads((best / "trainer_state.json").read_text())["step"] == 4
    sampled = run([*SAMPLE, "--checkpoint", str(step)])
    assert sampled.returncode == 0, sampled.stderr
    with open(step / "model.safetensors", "r+b") as f:  # damage in place, as a disk or a stray write would
        f.seek(f.seek(0, 2) // 2)
        f.write(b"\xff" * 64)
    assert "checksum" in verify(step)
    assert verify(best) is None
    from_best = run([*SAMPLE, "--checkpoint", str(best)])
    assert from_best.returncode == 0 and from_best.stdout == sampled.stdout, from_best.stderr


def test_a_copy_that_fails_verification_leaves_best_as_it_was(tmp_path):
    update_best(tmp_path, make_checkpoint(tmp_path, "step_1", 1, val_loss=2.0), 2.0)
    damaged = make_checkpoint(tmp_path, "step_2", 2, val_loss=1.0)
    flip_a_byte(damaged / "model.safetensors")  # damaged between its save and the copy
    with pytest.warns(UserWarning, match="best/ not updated"):
        assert not update_best(tmp_path, damaged, 1.0)
    best = checkpoints_root(tmp_path) / "best"
    assert json.loads((best / "trainer_state.json").read_text())["step"] == 1 and verify(best) is None
    assert not list(checkpoints_root(tmp_path).glob(".tmp_*"))


# ---- damage the manifest cannot see: the files were damaged first, then listed ----

def random_bytes(path):
    """Noise of the file's size, the same in every run: what a loader makes of noise depends on its first bytes."""
    path.write_bytes(random.Random(0).randbytes(max(path.stat().st_size if path.exists() else 0, 64)))


def halve(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def other_shape_weights(path):
    save_model(Gemma3(ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16)), str(path))


def listed_after(damage, name):
    """Damage the checkpoint file `name`, then rewrite the manifest to match, as a save of damaged files would."""
    def apply(folder):
        damage(folder / name)
        write_manifest(folder)
    return apply


def not_an_object(path):
    path.write_text("[1, 2]")


def setup_listed_cases(root, trained_out, accumulated_out, data_dir):
    """(name, command, words) of each reader on a checkpoint damaged before its manifest was written."""
    train_args = ["--data_dir", str(data_dir), *TINY_MODEL, "--max_iters", "30", "--warmup_steps", "2",
                  "--batch_size", "8", "--gradient_accumulation_steps", "1", "--eval_interval", "12",
                  "--sample_tokens", "0", "--plot", "false"]
    cases = []

    def damaged(name, source, damage):
        out = root / name
        shutil.copytree(source, out)
        folder = list_checkpoints(out)[-1]
        damage(folder)
        return folder

    for reader, file, damage, words in (
            ("sample", "model.safetensors", random_bytes, ["SafetensorError"]),
            ("sample", "model.safetensors", other_shape_weights, ["model.safetensors", "size"]),
            ("sample", "trainer_state.json", halve, ["trainer_state.json", "JSONDecodeError"]),
            ("sample", "trainer_state.json", not_an_object, ["trainer_state.json", "a step"]),
            ("export", "model.safetensors", halve, ["SafetensorError"]),
            ("resume", "model.safetensors", random_bytes, ["SafetensorError"]),
            ("resume", "model.safetensors", other_shape_weights, ["RuntimeError", "size"]),
            ("resume", "optimizer.bin", halve, ["RuntimeError"]),
            ("resume", "optimizer.bin", random_bytes, ["UnpicklingError"]),
            ("resume", "random_states_0.pkl", halve, ["random_states_0.pkl"]),
            ("resume", "trainer_state.json", random_bytes, ["trainer_state.json"])):
        name = f"{reader}, {damage.__name__} {file}"
        folder = damaged(name.replace(", ", "_").replace(" ", "_"), trained_out, listed_after(damage, file))
        command_line = {"sample": [*SAMPLE, "--checkpoint", str(folder)],
                        "export": [*EXPORT, "--checkpoint", str(folder), "--out", str(root / "hf_listed")],
                        "resume": command(TRAIN, [*train_args, "--out_dir", str(root / f"elsewhere_{len(cases)}"),
                                                  "--resume", str(folder)])}[reader]
        cases.append((name, command_line, ["cannot load checkpoint", str(folder), *words]))
    # rank 1 alone fails to read its own file; both processes stop, and the error is printed once
    folder = damaged("two_processes", accumulated_out, listed_after(random_bytes, "random_states_1.pkl"))
    cases.append(("resume on 2 processes, rank 1's random states",
                  command(TRAIN, [*train_args, "--gradient_accumulation_steps", "1", "--batch_size", "4",
                                  "--max_iters", "4", "--out_dir", str(root / "elsewhere_two"), "--resume",
                                  str(folder)], processes=2), ["cannot load checkpoint", "random_states_1.pkl"]))
    return cases


def test_a_file_only_rank_1_reads_stops_both_processes_with_one_error_line(outcomes):
    """Rank 1 alone cannot read its random states: every process raises the error, rank 0 prints it (the
    launcher adds its own report of the exit, but no trainer traceback)."""
    status, stderr, words = outcomes[0]["resume on 2 processes, rank 1's random states"]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status != 0 and len(errors) == 1 and all(word in errors[0] for word in words), stderr[-3000:]
    assert "train.py\", line" not in stderr
