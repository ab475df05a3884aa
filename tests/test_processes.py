"""Two processes (`accelerate launch --multi_gpu`, gloo on the CPU) train exactly as one does.

One process with accumulation 4 and two with accumulation 2 consume the same global batches per
optimizer step (batch b goes to process b % 2), so every step must match up to fp32 rounding.
Clipping bites at every step (grad_clip is far below the gradient norm), so a norm taken or a
clip applied before the processes' gradients are averaged would show.

Both optimizers run. Muon matches one process less closely: its Newton-Schulz iteration runs in bf16
and multiplies the smallest singular directions of the update by hundreds, so the fp32 rounding of the
two ways of summing a gradient grows to about 2e-4 in the weights and 1e-5 in the loss over 6 steps
(a wrong data stream or an unaveraged gradient is off by 1e-2 and more). The processes stay identical.
"""

import pytest
import torch
from safetensors.torch import load_file

from accel_train.training.schedule import lr_at
from accel_train.training.tracking import read_metrics
from helpers import REPO, TINY_MODEL, launch, max_difference

SCRIPT = str(REPO / "tests" / "scripts" / "train_and_record.py")
STEPS, WARMUP, LR, MIN_LR, GRAD_CLIP = 6, 2, 2e-3, 2e-4, 0.05
TOLERANCE = {"adamw": {"weights": 1e-6, "loss": 1e-6, "grad_norm": 1e-5},  # one process against two
             "muon": {"weights": 1e-3, "loss": 5e-5, "grad_norm": 5e-3}}
ARGS = [*TINY_MODEL, "--batch_size", "4", "--block_size", "64", "--max_iters", str(STEPS), "--warmup_steps",
        str(WARMUP), "--learning_rate", str(LR), "--min_lr", str(MIN_LR), "--grad_clip", str(GRAD_CLIP),
        "--eval_interval", "3", "--eval_iters", "2", "--log_interval", "1", "--checkpoint_interval", "1",
        "--keep_last", "0", "--dtype", "float32", "--device", "cpu", "--plot", "false", "--sample_tokens", "0"]


@pytest.fixture(scope="module", params=["adamw", "muon"])
def runs(request, demo_data_dir, tmp_path_factory):
    """out_dir of one process with accumulation 4 and of two processes with accumulation 2, for each optimizer,
    and how closely they must agree."""
    out = {"tolerance": TOLERANCE[request.param]}
    for processes, accumulation in ((1, 4), (2, 2)):
        out_dir = tmp_path_factory.mktemp(f"processes_{processes}")
        result = launch(SCRIPT, [*ARGS, "--data_dir", str(demo_data_dir), "--out_dir", str(out_dir),
                                 "--gradient_accumulation_steps", str(accumulation), "--optimizer", request.param],
                        processes=processes,
                        env={"OMP_NUM_THREADS": "1"})  # as accelerate launch sets it for each of several processes
        assert result.returncode == 0, result.stderr[-3000:]
        out[processes] = out_dir
    return out


def test_both_processes_end_with_identical_weights(runs):
    ranks = [torch.load(runs[2] / f"process_{r}.pt") for r in (0, 1)]
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])


def test_two_processes_take_the_same_steps_as_one(runs):
    """Each process on half of every batch gives one process's update, step after step."""
    for step in range(1, STEPS + 1):
        one, two = (load_file(runs[p] / "checkpoints" / f"step_{step}" / "model.safetensors") for p in (1, 2))
        assert max_difference(one, two) < runs["tolerance"]["weights"], f"step {step}"
    initial_change = max_difference(load_file(runs[1] / "checkpoints" / "step_1" / "model.safetensors"),
                                    load_file(runs[1] / "checkpoints" / f"step_{STEPS}" / "model.safetensors"))
    assert initial_change > 5 * runs["tolerance"]["weights"]  # the steps were real, so agreeing means something


def test_loss_norm_and_rate_logged_per_optimizer_step_match(runs):
    one, two = read_metrics(runs[1]), read_metrics(runs[2])
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two):
        assert a["lr"] == b["lr"] == pytest.approx(lr_at(a["step"], LR, MIN_LR, WARMUP, STEPS), rel=1e-12)
        assert a["loss"] == pytest.approx(b["loss"], rel=runs["tolerance"]["loss"])
        # the norm of the averaged gradient
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=runs["tolerance"]["grad_norm"])
        assert a["grad_norm"] > 10 * GRAD_CLIP  # logged before clipping, and clipping was active
        assert a["tokens"] == b["tokens"]


def test_estimate_loss_gives_every_process_the_same_value(runs):
    ranks = [torch.load(runs[2] / f"process_{r}.pt")["evaluations"] for r in (0, 1)]
    assert len(ranks[0]) == 2 and ranks[0] == ranks[1]
    logged = [{"train": r["train_eval_loss"], "val": r["val_loss"]} for r in read_metrics(runs[2]) if "val_loss" in r]
    assert logged == ranks[0]
