"""val_bpb: validation loss in bits per UTF-8 byte of text, from the byte counts prepare records in meta.json."""

import json
import math
import shutil

import pytest

from accel_train.training.tracking import read_metrics
from helpers import TINY_MODEL, train


def test_val_bpb_of_a_byte_run_is_val_loss_over_ln2_times_tokens_per_byte(trained_run, demo_data_dir):
    out_dir, _ = trained_run
    meta = json.loads((demo_data_dir / "meta.json").read_text())
    tokens_per_byte = meta["tokens"]["val"] / meta["bytes"]["val"]
    assert 1 < tokens_per_byte < 1.01  # a byte tokenizer: one token a byte, and one end-of-text a story
    evaluated = [r for r in read_metrics(out_dir) if "val_loss" in r]
    assert len(evaluated) == 2 and all("val_bpb" not in r for r in read_metrics(out_dir) if "val_loss" not in r)
    for record in evaluated:
        assert record["val_bpb"] == pytest.approx(record["val_loss"] / math.log(2) * tokens_per_byte, rel=1e-12)


def test_data_prepared_before_byte_counts_logs_no_val_bpb(demo_data_dir, tmp_path):
    data = tmp_path / "old_data"
    shutil.copytree(demo_data_dir, data)
    meta = json.loads((data / "meta.json").read_text())
    del meta["bytes"]
    (data / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "run"
    result = train(["--data_dir", str(data), "--out_dir", str(out), *TINY_MODEL, "--max_iters", "2",
                    "--warmup_steps", "1", "--batch_size", "2", "--gradient_accumulation_steps", "1",
                    "--eval_interval", "2", "--eval_iters", "1", "--sample_tokens", "0", "--plot", "false"])
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = [r for r in read_metrics(out) if "val_loss" in r]
    assert "val_bpb" not in record
