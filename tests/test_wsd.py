"""`lr_schedule: wsd`: linear warmup, a constant rate, a linear decay to min_lr over the last decay_fraction
of max_iters; and the way users extend a run: resumed in the constant phase with a larger max_iters, it
goes on at the same rate, exactly as a run planned that long from the start."""

import shutil

import pytest

from accel_train.config import TrainConfig
from accel_train.errors import UserError
from accel_train.training.schedule import lr_at
from accel_train.training.tracking import read_metrics
from helpers import train
from test_resume import args, weights

LR, MIN_LR, WARMUP = 3e-3, 3e-4, 2


def test_wsd_warms_up_holds_then_decays_linearly_to_min_lr():
    max_iters, fraction = 100, 0.2

    def at(step):
        return lr_at(step, LR, MIN_LR, 10, max_iters, "wsd", fraction)

    assert at(0) == 0.0 and at(5) == pytest.approx(LR / 2) and at(10) == LR
    assert {at(s) for s in range(10, 81)} == {LR}  # constant up to the start of the decay
    assert at(90) == pytest.approx((LR + MIN_LR) / 2)  # halfway down the straight line
    assert at(100) == pytest.approx(MIN_LR) and at(101) == at(1000) == MIN_LR
    decay = [at(s) for s in range(80, 101)]
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert min(steps) == pytest.approx(max(steps)) and min(steps) > 0  # linear and falling


def test_in_the_constant_phase_the_rate_does_not_depend_on_max_iters():
    """Why a wsd run can be extended and a cosine run cannot: before the decay, max_iters is not in the rate."""
    assert all(lr_at(s, LR, MIN_LR, WARMUP, 10, "wsd") == lr_at(s, LR, MIN_LR, WARMUP, 20, "wsd") for s in range(9))
    assert lr_at(5, LR, MIN_LR, WARMUP, 10) != lr_at(5, LR, MIN_LR, WARMUP, 20)  # cosine would jump on resume


@pytest.mark.parametrize("keys, message", [({"lr_schedule": "linear"}, "lr_schedule"),
                                           ({"decay_fraction": 0.0}, "decay_fraction"),
                                           ({"decay_fraction": 1.5}, "decay_fraction"),
                                           ({"lr_schedule": "wsd", "warmup_steps": 9, "max_iters": 10},
                                            "run into the decay")])
def test_bad_schedule_keys_are_refused(keys, message):
    with pytest.raises(UserError, match=message):
        TrainConfig(**{"warmup_steps": 2, "max_iters": 10, **keys}).validate()


WSD = ["--lr_schedule", "wsd", "--decay_fraction", "0.2"]


def test_wsd_run_extended_in_its_constant_phase_continues_as_if_planned_that_long(demo_data_dir, tmp_path):
    """A 10-step wsd run (decay from step 8), checkpointed at step 4 and resumed with max_iters 20, takes the
    same rate at every step and ends with the same weights, bit for bit, as a 20-step run. With Muon, whose
    group follows the schedule at its own peak, and AdamW for the rest."""
    extra = [*WSD, "--optimizer", "muon", "--muon_lr", "1e-2"]
    short, planned = tmp_path / "short", tmp_path / "planned"
    assert train(args(demo_data_dir, short, "--max_iters", "10", "--keep_last", "0", *extra)).returncode == 0
    assert train(args(demo_data_dir, planned, "--max_iters", "20", *extra)).returncode == 0
    extended = tmp_path / "extended"
    shutil.copytree(short / "checkpoints" / "step_4", extended / "checkpoints" / "step_4")
    result = train(args(demo_data_dir, extended, "--max_iters", "20", "--resume", "auto", *extra))
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout and "step_4" in result.stdout
    rates = [r["lr"] for r in read_metrics(extended)]
    assert rates == [r["lr"] for r in read_metrics(planned)][4:]  # steps 5 to 20
    assert rates[:12] == [LR] * 12  # no jump: the constant rate through step 16, where the new decay starts
    assert weights(extended, 20) == weights(planned, 20)
