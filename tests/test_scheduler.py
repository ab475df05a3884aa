"""The learning-rate schedulers: one per optimizer, prepared by the Accelerator and saved with each checkpoint,
whose rate at optimizer step s is lr_at(s) of the running config whatever the processes, the accumulation or
the checkpoint being resumed (its saved rates never come back). Runs the real trainer in subprocesses."""

import shutil
import warnings

import torch

from accel_train.checkpointing.checkpoint import list_checkpoints, write_manifest
from accel_train.config import load_config
from accel_train.training.schedule import LrSchedule, Schedule, lr_at
from accel_train.training.tracking import read_metrics
from helpers import REPO, TINY_MODEL, assert_one_error_line, launch, snapshot, train

SCRIPT = str(REPO / "tests" / "scripts" / "train_and_record.py")
ARGS = [*TINY_MODEL, "--batch_size", "4", "--block_size", "32", "--gradient_accumulation_steps", "2",
        "--eval_interval", "100", "--eval_iters", "1", "--log_interval", "1", "--checkpoint_interval", "0",
        "--optimizer", "muon", "--dtype", "float32", "--device", "cpu", "--plot", "false", "--sample_tokens", "0",
        "--resume", "auto"]
# Every key of the schedule changes on resume: the new warmup still runs at steps 5-6, then wsd decays from 6 to 10
FIRST = dict(learning_rate=2e-3, min_lr=2e-4, warmup_steps=2, max_iters=4, lr_schedule="cosine",
             decay_fraction=0.2, muon_lr=0.0)
LATER = dict(learning_rate=1e-3, min_lr=1e-4, warmup_steps=6, max_iters=10, lr_schedule="wsd",
             decay_fraction=0.4, muon_lr=5e-3)


def flags(keys: dict) -> list[str]:
    return [text for key, value in keys.items() for text in (f"--{key}", str(value))]


def rate(step: int, keys: dict) -> float:
    return lr_at(step, LrSchedule(keys["learning_rate"], keys["min_lr"], keys["warmup_steps"], keys["max_iters"],
                                  keys["lr_schedule"], keys["decay_fraction"]))


def expected_steps(steps: range, keys: dict) -> list:
    """What the optimizers hold at each step: AdamW's two groups at lr_at, Muon's at lr_at x muon_lr / learning_rate."""
    scale = (keys["muon_lr"] or keys["learning_rate"]) / keys["learning_rate"]
    return [entry for s in steps for entry in (("AdamW", [rate(s, keys)] * 2), ("Muon", [rate(s, keys) * scale]))]


def test_every_step_of_a_resumed_two_process_accumulating_run_takes_its_own_configs_rate(demo_data_dir, tmp_path):
    """2 processes x 2 micro-batches, resumed with every schedule key changed: each optimizer step, on both
    processes, runs at lr_at of the config of the run that takes it (Accelerate would step a scheduler once per
    process), the metrics row logs that rate, and each checkpoint holds both schedulers' step counts."""
    out = tmp_path / "run"
    for keys, steps in ((FIRST, range(1, 5)), (LATER, range(5, 11))):
        result = launch(SCRIPT, ["--data_dir", str(demo_data_dir), "--out_dir", str(out), *ARGS, *flags(keys)],
                        processes=2)
        assert result.returncode == 0, result.stderr[-3000:]
        for rank in (0, 1):
            assert torch.load(out / f"process_{rank}.pt")["rates"] == expected_steps(steps, keys), rank
        final = out / "checkpoints" / f"step_{steps[-1]}"
        for name in ("scheduler.bin", "scheduler_1.bin"):
            assert torch.load(final / name) == {"last_epoch": steps[-1]}

    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["lr"] for r in rows] == [rate(s, FIRST) for s in range(1, 5)] + [rate(s, LATER) for s in range(5, 11)]


def test_a_checkpoint_without_its_scheduler_state_is_one_error_line(trained_run, demo_data_dir, tmp_path):
    """A checkpoint without its scheduler state (no scheduler.bin, and a manifest written without it: every
    checkpoint of this format has one, so it was damaged or written by other code) cannot be loaded:
    --resume auto, and --resume PATH into a new out_dir, both stop in one line that names the file and says
    what to do, and leave every file as it was (no new out_dir)."""
    out = tmp_path / "out"
    shutil.copytree(trained_run[0], out)
    newest = list_checkpoints(out)[-1]
    (newest / "scheduler.bin").unlink()
    (newest / "manifest.json").unlink()
    write_manifest(newest)
    before = snapshot(tmp_path)
    common = ["--data_dir", str(demo_data_dir), "--max_iters", "30", "--warmup_steps", "2", "--batch_size", "8",
              "--gradient_accumulation_steps", "1", *TINY_MODEL]
    for extra in (["--out_dir", str(out), "--resume", "auto"],
                  ["--out_dir", str(tmp_path / "new"), "--resume", str(newest)]):
        result = train([*common, *extra])
        assert_one_error_line(result.returncode, result.stderr, str(newest), "scheduler.bin",
                              "use another checkpoint")
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def test_a_skipped_first_step_moves_the_rate_on_quietly():
    """A first optimizer step skipped (a non-finite gradient, an fp16 overflow) still counts: the scheduler
    moves to step 2's rate, without torch's warning that the schedule's first rate is lost (it is not)."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    scheduler = Schedule(optimizer, LrSchedule.of(load_config(flags(FIRST))))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scheduler.step()
    assert caught == [] and optimizer.param_groups[0]["lr"] == rate(2, FIRST)
