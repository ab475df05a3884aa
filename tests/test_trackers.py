"""Trackers through Accelerate: offline wandb and tensorboard files hold what metrics.jsonl holds.

wandb: the run's name and tags, the same run continued on resume, and gradient and parameter
histograms at the watch interval. Nothing here needs a network (WANDB_MODE=offline). A tracker asked
for whose package is not installed, or that cannot start, is refused with one error line.
"""

import importlib.metadata
import json
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from accel_train.checkpointing.checkpoint import list_checkpoints, read_trainer_state
from accel_train.training.tracking import TRACKERS, read_metrics
from helpers import TINY_MODEL, TRAIN, assert_one_error_line, run, run_side_by_side, snapshot, train

RUN = [*TINY_MODEL, "--warmup_steps", "1", "--batch_size", "2", "--gradient_accumulation_steps", "2",
       "--eval_interval", "4", "--eval_iters", "1", "--log_interval", "1", "--sample_tokens", "0", "--plot", "false"]


def wandb_records(path):
    """The protobuf records of an offline `.wandb` file. wandb ships no reader for it, so this reads
    its LevelDB-style log: 32 KiB blocks of chunks (crc32c, length, type) after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks, records = path.read_bytes(), 1 << 15, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or kind == 0:  # block trailer or padding
            pos += left
            continue
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def wandb_history(records) -> list[dict]:
    """Each logged row as a dict; a histogram is a nested dict (its items have nested keys)."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            *parents, leaf = list(item.nested_key) or [item.key]
            node = row
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = json.loads(item.value_json)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, demo_data_dir):
    """A wandb run of 4 steps, then resumed to 6: out_dir and the offline run folders, oldest first."""
    out = tmp_path_factory.mktemp("wandb") / "run"
    common = ["--data_dir", str(demo_data_dir), "--out_dir", str(out), *RUN, "--tracker", "wandb",
              "--wandb_project", "tests", "--run_name", "tiny-run", "--wandb_tags", "smoke, tiny",
              "--watch_interval", "2"]
    for args in (["--max_iters", "4"], ["--max_iters", "6", "--resume", "auto"]):
        result = train(common + args)
        assert result.returncode == 0, result.stderr[-3000:]
    return out, sorted((out / "wandb").glob("offline-run-*"))


def test_wandb_resume_continues_the_same_run(wandb_run):
    out, folders = wandb_run
    run_id = read_trainer_state(list_checkpoints(out)[-1]).run_id
    assert len(folders) == 2
    for folder in folders:
        assert folder.name.endswith(f"-{run_id}")
        (run,) = [r.run for r in wandb_records(folder / f"run-{run_id}.wandb") if r.WhichOneof("record_type") == "run"]
        assert (run.run_id, run.display_name, list(run.tags), run.project) == (run_id, "tiny-run", ["smoke", "tiny"],
                                                                               "tests")


def test_wandb_holds_the_logged_values(wandb_run):
    out, folders = wandb_run
    logged = [row for folder in folders for row in wandb_history(wandb_records(next(folder.glob("run-*.wandb"))))]
    by_step = {row["step"]: row for row in logged if "loss" in row}
    expected = read_metrics(out)
    assert [r["step"] for r in expected] == list(range(1, 7)) and "val_bpb" in expected[3]
    for row in expected:
        assert {k: by_step[row["step"]][k] for k in row} == pytest.approx(row, rel=1e-9)


def test_wandb_watches_gradients_and_parameters(wandb_run):
    _, folders = wandb_run
    logged = [row for folder in folders for row in wandb_history(wandb_records(next(folder.glob("run-*.wandb"))))]
    gradient_steps = [row["step"] for row in logged if "gradients/layers.0.self_attn.q_proj.weight" in row]
    # wandb logs at the first backward pass and then every watch_interval optimizer steps; the histograms
    # ride on that step's logged row
    assert gradient_steps == [1, 3, 5]
    histogram = next(row for row in logged if "gradients/embed_tokens.weight" in row)["gradients/embed_tokens.weight"]
    assert histogram["_type"] == "histogram" and sum(histogram["values"]) > 0
    assert any("parameters/norm.weight" in row for row in logged)


def test_tensorboard_holds_the_logged_values(tmp_path, demo_data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(out), *RUN, "--max_iters", "4",
                    "--tracker", "tensorboard", "--run_name", "tb"])
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    expected = read_metrics(out)
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_bpb"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in expected if key in r]


# The distributions that give Accelerate each tracker (it takes tensorboardX for tensorboard too).
TRACKER_DISTRIBUTIONS = {"wandb": ["wandb"], "tensorboard": ["tensorboard", "tensorboardX"]}


def venv_without(venv: Path, tracker: str) -> str:
    """The python of a new venv holding every package of this one but the tracker's, as if it had been
    `pip uninstall`ed: each site-packages entry is linked in, except the files the tracker's distributions
    installed. A second or so, where installing a venv takes minutes. Returns the venv's python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    dropped = set()
    for name in TRACKER_DISTRIBUTIONS[tracker]:
        try:
            dropped |= {Path(str(f)).parts[0] for f in importlib.metadata.distribution(name).files}
        except importlib.metadata.PackageNotFoundError:
            pass
    target = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    for site in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        for entry in Path(site).iterdir():
            if entry.name not in dropped and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return str(venv / "bin" / "python")


@pytest.mark.parametrize("tracker", [t for t in TRACKERS if t != "none"])
def test_a_tracker_not_installed_is_refused_before_any_work(tmp_path, demo_data_dir, trained_run, tracker):
    """Accelerate alone warns, drops the tracker and trains on, logging nothing where the user asked."""
    python = venv_without(tmp_path / "venv", tracker)
    seen = run([python, "-c", f"import importlib.util, accelerate.utils as u; print(importlib.util.find_spec("
                f"{tracker!r}) is None, not u.is_{tracker}_available())"])
    assert seen.stdout.split() == ["True", "True"], seen.stderr  # as unimportable as if never installed
    earlier, _ = trained_run  # a run already there, to be resumed: left exactly as it was
    before = snapshot(earlier)
    fresh = tmp_path / "new" / "run"
    common = ["--data_dir", str(demo_data_dir), *RUN, "--max_iters", "30", "--tracker", tracker]
    words = ["tracker", f"pip install {tracker}"]
    results = run_side_by_side([
        ("fresh", [python, TRAIN, *common, "--out_dir", str(fresh)], words),
        ("no watch", [python, TRAIN, *common, "--out_dir", str(fresh.with_name("other")), "--watch_interval", "0"],
         words),
        ("resume", [python, TRAIN, *common, "--out_dir", str(earlier), "--resume", "auto"], words)])
    for status, stderr, words in results.values():
        assert_one_error_line(status, stderr, *words)
    assert not (tmp_path / "new").exists()
    assert snapshot(earlier) == before


def test_wandb_that_cannot_log_in_is_one_error_line(tmp_path, demo_data_dir):
    """Online without `wandb login`: wandb's own reason, not its traceback."""
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(tmp_path / "run"), *RUN, "--max_iters", "2",
                    "--tracker", "wandb"],
                   env={"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(tmp_path),
                        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")})
    assert_one_error_line(result.returncode, result.stderr, "cannot start the wandb tracker", "wandb login")
    assert not list((tmp_path / "run").glob("step_*")) and not (tmp_path / "run" / "metrics.jsonl").exists()
