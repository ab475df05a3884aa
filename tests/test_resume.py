"""Exact resume: runs killed (SIGKILL) at random moments, mid-step and mid-save, or stopped by SIGTERM/SIGINT
to a single process, end with weights bit-identical to an uninterrupted run; and the ways a resume or a save
can go wrong (broken checkpoints, a NaN, a full disk, another model shape) leave the last good checkpoint intact.
"""

import json
import random
import resource
import shutil
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file, save_file

from accel_train.checkpointing.checkpoint import list_checkpoints, verify, write_manifest
from helpers import REPO, TINY_MODEL, TRAIN, command, subprocess_env, train
from interrupt import comparable_rows, finish, interrupt, stopped_cleanly

MAX_ITERS = 12
RUN = ["--max_iters", str(MAX_ITERS), "--warmup_steps", "2", "--batch_size", "4", "--block_size", "64",
       "--gradient_accumulation_steps", "2", "--eval_interval", "4", "--eval_iters", "1", "--log_interval", "1",
       "--checkpoint_interval", "4", "--learning_rate", "3e-3", "--min_lr", "3e-4", "--demo_data", "false",
       "--plot", "false", "--sample_tokens", "0", *TINY_MODEL]


def args(data_dir, out_dir, *extra):
    return ["--data_dir", str(data_dir), "--out_dir", str(out_dir), *RUN, *extra]


def weights(out_dir, step=MAX_ITERS):
    return (out_dir / "checkpoints" / f"step_{step}" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def reference(demo_data_dir, tmp_path_factory):
    """One uninterrupted single-process run, keeping every checkpoint."""
    out = tmp_path_factory.mktemp("reference") / "out"
    result = train(args(demo_data_dir, out, "--keep_last", "0"))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def reference_2p(demo_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference_2p") / "out"
    result = train(args(demo_data_dir, out), processes=2)
    assert result.returncode == 0, result.stderr
    return out


def interrupted_run(data_dir, out, kinds, processes, seed, **kw):
    """Interrupt a run once per kind (each time resuming it), then let it finish; the events."""
    rng, log = random.Random(seed), out.parent / "log.txt"
    events = [interrupt(kind, args(data_dir, out, "--keep_last", "2"), processes, out, rng, MAX_ITERS, log, **kw)
              for kind in kinds]
    assert finish(args(data_dir, out, "--keep_last", "2"), processes, log) == 0, log.read_text()[-3000:]
    return events


def test_single_process_killed_and_interrupted_resumes_bit_exactly(demo_data_dir, reference, tmp_path):
    out = tmp_path / "out"
    events = interrupted_run(demo_data_dir, out, ["kill-save", "int", "kill-step"], processes=1, seed=1)
    assert all(e["interrupted"] for e in events), events
    assert stopped_cleanly(events[1]), events[1]
    assert weights(out) == weights(reference), events
    assert comparable_rows(out) == comparable_rows(reference)  # losses, rates, norms, evaluations: same RNG
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "step_12", "step_8"]  # keep_last 2


def test_two_processes_killed_and_one_signalled_resume_bit_exactly(demo_data_dir, reference_2p, tmp_path):
    out = tmp_path / "out"
    events = interrupted_run(demo_data_dir, out, ["kill-save", "term", "kill-step"], processes=2, seed=2, rank=1)
    assert all(e["interrupted"] for e in events), events
    assert stopped_cleanly(events[1]), events[1]  # only rank 1 got SIGTERM: rank 0 learned it at the step boundary
    assert weights(out) == weights(reference_2p), events
    assert comparable_rows(out) == comparable_rows(reference_2p)


def test_broken_newest_checkpoints_are_skipped_kept_and_the_run_still_ends_exactly(demo_data_dir, reference,
                                                                                   tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    flipped = out / "checkpoints" / "step_12" / "model.safetensors"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 1
    flipped.write_bytes(bytes(data))
    truncated = out / "checkpoints" / "step_8" / "optimizer.bin"
    truncated.write_bytes(truncated.read_bytes()[:100])
    result = train(args(demo_data_dir, out, "--keep_last", "0", "--resume", "auto"))
    assert result.returncode == 0, result.stderr
    assert "skipping checkpoint" in result.stderr and "step_12" in result.stderr and "step_8" in result.stderr
    assert "resuming from" in result.stdout and "step_4" in result.stdout
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if ".broken-" in p.name)
    assert [name.split(".")[0] for name in kept] == ["step_12", "step_8"]  # renamed aside, never deleted
    assert weights(out) == weights(reference)


def test_injected_nan_stops_with_a_message_and_the_checkpoint_intact(demo_data_dir, reference, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    folder = out / "checkpoints" / "step_8"
    shutil.copytree(reference / "checkpoints" / "step_8", folder)
    tensors = load_file(folder / "model.safetensors")
    name = next(k for k in tensors if "norm" in k)
    tensors[name][0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    write_manifest(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result = train(args(demo_data_dir, out, "--resume", "auto"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training diverged" in lines[0] and "step 9" in lines[0] and "step_8" in lines[0]
    assert "Traceback" not in result.stderr
    assert [p.name for p in list_checkpoints(out)] == ["step_8"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_skip_mode_skips_non_finite_steps_and_counts_them(demo_data_dir, tmp_path):
    """Each skipped step says why, spike_sigma or not: a non-finite gradient norm is not a spike's z-scores."""
    out = tmp_path / "out"  # a rate of 1e30 sends the weights to inf: every step after the first is non-finite
    result = train(args(demo_data_dir, out, "--max_iters", "5", "--learning_rate", "1e30", "--min_lr", "0",
                        "--weight_decay", "0", "--nonfinite", "skip", "--checkpoint_interval", "0",
                        "--spike_sigma", "3", "--spike_window", "4"))
    assert result.returncode == 0, result.stderr
    skips = [line for line in result.stdout.splitlines() if "update skipped" in line]
    assert len(skips) == 4 and all("is not finite (nonfinite skip)" in line for line in skips), result.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 2, 3, 4]
    state = json.loads((out / "checkpoints" / "step_5" / "trainer_state.json").read_text())
    assert state["skipped_steps"] == 4
    final = load_file(out / "checkpoints" / "step_5" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in final.values())  # no skipped update reached the weights


def limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_save_keeps_the_previous_checkpoint(demo_data_dir, reference, tmp_path):
    out = tmp_path / "out"
    for name in ("step_8", "best"):  # as a run that stopped at step 8 leaves it (its best/ is its newest)
        shutil.copytree(reference / "checkpoints" / "step_8", out / "checkpoints" / name)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints" / "step_8").iterdir()}
    limit = min(len(v) for k, v in before.items() if k in ("model.safetensors", "optimizer.bin")) - 1
    result = subprocess.run(command(TRAIN, args(demo_data_dir, out, "--resume", "auto")), cwd=REPO,
                            env=subprocess_env(), capture_output=True, text=True, timeout=300,
                            preexec_fn=limit_file_size(limit))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "could not write checkpoint" in lines[0] and "step_12" in lines[0], result.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "step_8"]  # the partial save is gone
    assert {p.name: p.read_bytes() for p in (out / "checkpoints" / "step_8").iterdir()} == before
    assert verify(out / "checkpoints" / "step_8") is None


def test_resuming_into_another_model_shape_is_refused_untouched(demo_data_dir, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = train(args(demo_data_dir, out, "--resume", "auto", "--model.num_hidden_layers", "3"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "model.num_hidden_layers is 2 there, 3 here" in result.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
