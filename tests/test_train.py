"""The trainer end to end: a short CPU run that learns, its outputs, and the shipped accelerate config.

Two real processes are tested in test_processes.py."""

import json
import math
import sys

import pytest
from safetensors.torch import load_file

from accel_train.training.tracking import read_metrics
from helpers import TINY_MODEL, run

SHORT_RUN = [*TINY_MODEL, "--max_iters", "60", "--warmup_steps", "5", "--batch_size", "8", "--block_size", "64",
             "--gradient_accumulation_steps", "2", "--eval_interval", "20", "--eval_iters", "4",
             "--log_interval", "5", "--checkpoint_interval", "30", "--learning_rate", "3e-3", "--min_lr", "3e-4",
             "--demo_data", "false"]


@pytest.fixture(scope="module")
def short_run(demo_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("short") / "out"
    result = run([sys.executable, "-m", "accel_train.train", "--data_dir", str(demo_data_dir), "--out_dir", str(out),
                  *SHORT_RUN])
    assert result.returncode == 0, result.stderr
    return out, result


def test_a_runs_output_holds_no_library_chatter(short_run):
    """Saving a model with tied embeddings made Accelerate warn at every checkpoint; that warning is known
    to be harmless and must not reach the user."""
    _, result = short_run
    assert "Removed shared tensor" not in result.stdout + result.stderr


def test_short_cpu_run_learns(short_run):
    rows = read_metrics(short_run[0])
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [20, 40, 60]
    assert evals[0]["val_loss"] < math.log(257)  # already below a uniform guess over bytes
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.25
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0


def test_metrics_rows_follow_the_contract(short_run):
    rows = read_metrics(short_run[0])
    assert [r["step"] for r in rows] == list(range(5, 61, 5))
    for row in rows:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= row.keys()
        assert row["tokens_per_s"] > 0 and row["grad_norm"] > 0
    assert rows[-1]["tokens"] == 60 * 8 * 64 * 2
    assert {"val_loss", "train_eval_loss"} <= rows[3].keys()  # step 20


def test_checkpoints_hold_safetensors_weights_and_state(short_run):
    out, _ = short_run
    folders = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert folders == ["step_30", "step_60"]
    final = out / "checkpoints" / "step_60"
    weights = load_file(final / "model.safetensors")
    assert "embed_tokens.weight" in weights and all(t.dtype.is_floating_point for t in weights.values())
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["step"] == 60 and state["config"]["max_iters"] == 60


def test_accelerate_config_file_launches(demo_data_dir, tmp_path):
    result = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_config.yaml",
                  "accel_train/train.py", "--data_dir", str(demo_data_dir), "--out_dir", str(tmp_path / "out"),
                  *SHORT_RUN, "--max_iters", "2", "--warmup_steps", "1", "--eval_interval", "2"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "checkpoints" / "step_2" / "model.safetensors").is_file()
