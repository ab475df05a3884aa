"""FSDP2 on two CPU processes (gloo), launched through configs/accelerate/fsdp.yaml as users launch it.

Accelerate enables FSDP only on GPU-like devices, so these runs put tests/fsdp_on_cpu/ on PYTHONPATH: its
sitecustomize.py hands Accelerate's state the FSDP plugin it dropped, after checking that Accelerate still drops
it. Everything else is the real trainer, torch's fully_shard and distributed checkpointing.

FSDP and DDP take the same steps: with two processes both average gradients by one exact fp32 addition and a
halving, and AdamW updates each element alone, so what differs is only the order in which the gradient norm for
clipping is summed (per shard, then across processes). That moves the clipped update in its last bits; over six
steps the loss agrees to about 1e-7 relative (LOSS_TOLERANCE leaves a margin), while a wrong data split or an
unaveraged gradient is off by 1e-2 and more.
"""

import json
import shutil
import sys

import pytest
import torch

from accel_train.checkpointing.checkpoint import (FSDP_FULL_WEIGHTS, FSDP_SHARDED_WEIGHTS, MANIFEST_FILE,
                                                  list_checkpoints, verify)
from accel_train.models.hf import hf_state_dict
from accel_train.checkpointing.trained_model import load_model
from accel_train.training.tracking import read_metrics
from helpers import REPO, TINY_MODEL, TRAIN, assert_one_error_line, command, max_difference, run, snapshot, train
from interrupt import comparable_rows, kill_all, reached_step, start, wait_until

HOOK = REPO / "tests" / "fsdp_on_cpu"
FSDP_CONFIG = str(REPO / "configs" / "accelerate" / "fsdp.yaml")
TIES = str(REPO / "tests" / "scripts" / "train_and_check_ties.py")
LOSS_TOLERANCE = 1e-5
RUN = ["--max_iters", "6", "--warmup_steps", "2", "--batch_size", "4", "--block_size", "64",
       "--gradient_accumulation_steps", "1", "--eval_interval", "2", "--eval_iters", "1", "--log_interval", "1",
       "--checkpoint_interval", "2", "--keep_last", "2", "--learning_rate", "3e-3", "--min_lr", "3e-4",
       "--dtype", "float32", "--device", "cpu", "--demo_data", "false", "--plot", "false", "--sample_tokens", "0",
       *TINY_MODEL]


@pytest.fixture(scope="module", autouse=True)
def fsdp_on_cpu():
    """Every process these tests start finds the hook (and this worktree's accel_train) first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", f"{HOOK}:{REPO}")
        yield


def args(data_dir, out_dir, *extra):
    return ["--data_dir", str(data_dir), "--out_dir", str(out_dir), *RUN, *extra]


def fsdp_run(script, arguments, config_file=FSDP_CONFIG):
    return run(command(script, arguments, processes=2, config_file=config_file))


@pytest.fixture(scope="module")
def ddp(demo_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "out"
    result = train(args(demo_data_dir, out), processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def sharded(demo_data_dir, tmp_path_factory):
    """An uninterrupted FSDP run with sharded checkpoints: the reference of every other FSDP run here."""
    out = tmp_path_factory.mktemp("sharded") / "out"
    result = fsdp_run(TIES, args(demo_data_dir, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def exported(sharded, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    result = run([sys.executable, "-m", "accel_train.export", "--checkpoint", str(sharded), "--out", str(out)])
    assert result.returncode == 0 and result.stderr == "", result.stderr[-3000:]
    return out


def final_weights(out_dir) -> dict:
    model, _ = load_model(out_dir / "checkpoints" / "step_6")
    assert model.lm_head.weight is model.embed_tokens.weight  # loaded back tied: one parameter
    return model.state_dict()


def assert_tied_while_training(out_dir) -> None:
    for rank in (0, 1):
        assert json.loads((out_dir / f"tied_{rank}.json").read_text()) == {"one_parameter": True, "kind": "DTensor"}


def test_fsdp_shards_and_takes_the_steps_ddp_takes(ddp, sharded):
    shards = sorted(p.name for p in (sharded / "checkpoints" / "step_6" / FSDP_SHARDED_WEIGHTS).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # FSDP ran: each process wrote its shard
    assert (ddp / "checkpoints" / "step_6" / "model.safetensors").is_file()
    fsdp_rows, ddp_rows = read_metrics(sharded), read_metrics(ddp)
    assert [r["step"] for r in fsdp_rows] == [r["step"] for r in ddp_rows] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(fsdp_rows, ddp_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_TOLERANCE), a["step"]
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=LOSS_TOLERANCE), a["step"]
    assert fsdp_rows[0]["loss"] - fsdp_rows[-1]["loss"] > 100 * LOSS_TOLERANCE  # it learned: agreeing means something
    assert max_difference(final_weights(sharded), final_weights(ddp)) < 1e-4
    assert_tied_while_training(sharded)


@pytest.mark.parametrize("state_dict_type", ["SHARDED_STATE_DICT", "FULL_STATE_DICT"])
def test_fsdp_checkpoints_verify_prune_and_resume_bit_exactly_after_sigkill(demo_data_dir, sharded, tmp_path,
                                                                           state_dict_type):
    """Killed after its first checkpoint, resumed by a second launch, the run ends as the uninterrupted one."""
    config = tmp_path / "fsdp.yaml"
    config.write_text((REPO / FSDP_CONFIG).read_text().replace("SHARDED_STATE_DICT", state_dict_type))
    out, log = tmp_path / "out", tmp_path / "log.txt"
    proc = start(args(demo_data_dir, out), 2, log, config_file=str(config))
    try:
        assert wait_until(proc, lambda: reached_step(out) >= 3), log.read_text()[-3000:]  # step_2 is saved
    finally:
        kill_all(proc)
    result = fsdp_run(TIES, args(demo_data_dir, out, "--resume", "auto"), config_file=str(config))
    assert result.returncode == 0 and "resuming from" in result.stdout, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "step_4", "step_6"]  # keep_last 2
    weights = FSDP_SHARDED_WEIGHTS if state_dict_type == "SHARDED_STATE_DICT" else FSDP_FULL_WEIGHTS
    for folder in (out / "checkpoints").iterdir():
        assert verify(folder) is None and (folder / weights).exists()
        listed = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - set(listed) == {MANIFEST_FILE}
    assert_tied_while_training(out)  # the resumed run: tied after loading the checkpoint
    assert comparable_rows(out) == comparable_rows(sharded)
    reference = final_weights(sharded)
    assert all(torch.equal(reference[k], v) for k, v in final_weights(out).items())


def test_a_damaged_shard_fails_verification(sharded, tmp_path):
    folder = shutil.copytree(sharded / "checkpoints" / "step_6", tmp_path / "step_6")
    shard = folder / FSDP_SHARDED_WEIGHTS / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert verify(folder) == f"{FSDP_SHARDED_WEIGHTS}/__1_0.distcp does not match its checksum"


def test_export_and_sample_read_the_sharded_checkpoint(sharded, exported):
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    ours = final_weights(sharded)
    assert all(torch.equal(ours[k], v) for k, v in hf_state_dict(exported).items())
    result = run([sys.executable, "-m", "accel_train.sample", "--checkpoint", str(sharded), "--prompt", "Once",
                  "--max_new_tokens", "8", "--temperature", "0"])
    assert result.returncode == 0 and result.stderr == "" and result.stdout.startswith("Once"), result.stderr[-3000:]


def test_init_from_starts_an_fsdp_run_with_the_folders_weights(demo_data_dir, exported, tmp_path):
    """A rate of 1e-30 changes no trained weight in fp32: step 1's checkpoint must hold the exported weights."""
    out = tmp_path / "out"
    result = fsdp_run(TRAIN, args(demo_data_dir, out, "--init_from", str(exported), "--max_iters", "1",
                                  "--warmup_steps", "0", "--learning_rate", "1e-30", "--min_lr", "0"))
    assert result.returncode == 0 and "starting from the weights of" in result.stdout, result.stderr[-3000:]
    model, _ = load_model(out)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert max_difference(model.state_dict(), hf_state_dict(exported)) < 1e-20


def test_muon_under_fsdp_is_refused(demo_data_dir, tmp_path):
    out = tmp_path / "out"
    result = fsdp_run(TRAIN, args(demo_data_dir, out, "--optimizer", "muon"))
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'muon' does not run under FSDP" in lines[0], result.stderr[-3000:]
    assert "train.py\", line" not in result.stderr and result.returncode != 0 and not out.exists()


def test_resuming_an_fsdp_checkpoint_without_fsdp_is_refused_untouched(demo_data_dir, sharded, tmp_path):
    out = shutil.copytree(sharded, tmp_path / "out")
    before = snapshot(out)
    result = run(command(TRAIN, args(demo_data_dir, out, "--resume", "auto", "--gradient_accumulation_steps", "2")))
    assert_one_error_line(result.returncode, result.stderr, "SHARDED_STATE_DICT", "one process or DDP",
                          str(list_checkpoints(out)[-1]))
    assert snapshot(out) == before


def test_the_hook_refuses_an_accelerate_that_does_not_drop_fsdp_as_it_expects():
    """The hook's own precondition: handed the plugin in a state other than the CPU's MULTI_CPU (here one plain
    process, NO), it stops rather than patch a state it does not know."""
    build = ("from accelerate import Accelerator; from accelerate.utils import FullyShardedDataParallelPlugin; "
             "Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))")
    result = run([sys.executable, "-c", build])
    assert result.returncode != 0 and "revisit the hook" in result.stderr, result.stderr[-3000:]
