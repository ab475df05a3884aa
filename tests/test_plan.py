"""The memory plan (accel_train/planning/, `python -m accel_train.plan`) against what torch's MemTracker measures
over real training steps on this CPU: the trainer's own step (loop.train_step) on its own Accelerator, one process
and two (DDP, and FSDP2 through tests/fsdp_on_cpu), several shapes no shipped config has, the fused loss on and off,
layer checkpointing on and off, document masks, accumulation, AdamW and Muon, float32 and bf16 autocast.

The plan runs the same model and optimizers on fake tensors, FSDP2 as rank 0 of a fake process group: its peak
must come within 10% of the measured one. Then the planner's own promises: FSDP's sharded parts fall as 1/N, the
command's JSON and refusals, and the trainer's start line and refusal of a run that cannot fit.
"""

import json
import re
import sys

import pytest

from accel_train.config import load_config
from accel_train.models.build import training_model
from accel_train.models.flops import flops_per_token
from accel_train.planning.machines import Machine
from accel_train.planning.memory_plan import RunLayout, plan_memory
from helpers import REPO, TINY_MODEL, assert_one_error_line, command, run_side_by_side, start_process, train

MEASURE = str(REPO / "tests" / "scripts" / "measure_step_memory.py")
FSDP_CONFIG = str(REPO / "configs" / "accelerate" / "fsdp.yaml")
HOOK = REPO / "tests" / "fsdp_on_cpu"
TOLERANCE = 0.10
WIDE_MODEL = ["--model.hidden_size", "96", "--model.intermediate_size", "320", "--model.num_hidden_layers", "3",
              "--model.num_attention_heads", "3", "--model.num_key_value_heads", "1", "--model.head_dim", "32",
              "--model.query_pre_attn_scalar", "32", "--model.sliding_window", "48", "--model.vocab_size", "3000"]
STEP = ["--batch_size", "4", "--block_size", "64", "--gradient_accumulation_steps", "1", "--device", "cpu"]
ACCUMULATING = ["--batch_size", "4", "--block_size", "96", "--gradient_accumulation_steps", "2", "--micro_batch", "2",
                "--device", "cpu"]
LAUNCHES = {  # launch: (processes, sharding, dtype, {case: arguments})
    "one": (1, "ddp", "float32", {
        "tiny": [*TINY_MODEL, *STEP],
        "tiny_checkpointed": [*TINY_MODEL, *STEP, "--checkpoint_layers", "true"],
        "wide_muon_accumulating": [*WIDE_MODEL, *ACCUMULATING, "--optimizer", "muon"],
        "wide_masked_plain_loss_checkpointed": [*WIDE_MODEL, *ACCUMULATING, "--document_mask", "on",
                                                "--fused_loss", "false", "--checkpoint_layers", "true"],
    }),
    "ddp": (2, "ddp", "bfloat16", {
        "tiny": [*TINY_MODEL, *STEP],
        "wide_muon_checkpointed": [*WIDE_MODEL, *ACCUMULATING, "--optimizer", "muon", "--checkpoint_layers", "true"],
    }),
    "fsdp": (2, "fsdp", "float32", {
        "tiny": [*TINY_MODEL, *STEP],
        "wide_accumulating_plain_loss": [*WIDE_MODEL, *ACCUMULATING, "--fused_loss", "false"],
    }),
}
CASES = [(launch, case) for launch, (_, _, _, cases) in LAUNCHES.items() for case in cases]


def plan_of(arguments: list[str], processes: int, sharding: str, mixed_precision: str, micro_batch: int = 0):
    """The plan of these trainer arguments for `processes` CPU processes, at their micro-batch (or `micro_batch`)."""
    cfg = load_config(arguments)
    layout = RunLayout(processes, sharding, mixed_precision, fused_adamw=False, compiled=False)
    machine = Machine("a test machine", 2**40, gpu=False, peak_tflops=None)
    model = lambda: training_model(cfg, 0 if cfg.document_mask == "on" else None)  # noqa: E731
    return plan_memory(cfg, machine, layout, model, micro_batch or cfg.micro_batch or cfg.batch_size, search=False)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """{launch: {case: MemTracker's peak and its parts}} of the three launches, run side by side."""
    root = tmp_path_factory.mktemp("measured")
    launches = []
    for launch, (processes, sharding, dtype, cases) in LAUNCHES.items():
        cases_file, out = root / f"{launch}.json", root / f"{launch}.out.json"
        cases_file.write_text(json.dumps({name: [*args, "--dtype", dtype] for name, args in cases.items()}))
        config = FSDP_CONFIG if sharding == "fsdp" else None
        launches.append((launch, command(MEASURE, [str(cases_file), str(out)], processes, config), []))
    results = run_side_by_side(launches, env={"PYTHONPATH": f"{HOOK}:{REPO}"})
    for launch, (status, stderr, _) in results.items():
        assert status == 0, (launch, stderr[-3000:])
    return {launch: json.loads((root / f"{launch}.out.json").read_text()) for launch in LAUNCHES}


@pytest.mark.parametrize("launch, case", CASES)
def test_plan_matches_memtracker_over_real_steps(measured, launch, case):
    processes, sharding, dtype, cases = LAUNCHES[launch]
    plan = plan_of(cases[case], processes, sharding, {"float32": "no", "bfloat16": "bf16"}[dtype])
    peak = measured[launch][case]["peak"]
    assert abs(plan.memory.peak - peak) <= TOLERANCE * peak, (plan.memory, measured[launch][case])


def test_fsdp_shards_fall_as_one_over_n_and_activations_stay():
    plans = {n: plan_of([*WIDE_MODEL, *ACCUMULATING], n, "fsdp", "no").memory.held for n in (1, 2, 4, 8)}
    for n, held in plans.items():
        for part in ("parameters", "gradients", "optimizer"):
            assert held[part] * n == pytest.approx(plans[1][part], rel=0.02), (n, part, plans)
        assert held["activations"] == plans[1]["activations"], (n, plans)


BAD_INPUT = {  # case: (arguments, words its one error line holds)
    "unknown_gpu": (["--gpu", "h1000"], ["h1000", "h100"]),
    "no_processes": (["--num_processes", "0"], ["num_processes"]),
    "negative_memory": (["--memory_gib", "-1"], ["memory_gib"]),
    "muon_under_fsdp": (["--optimizer", "muon", "--num_processes", "2", "--sharding", "fsdp"], ["muon", "FSDP"]),
}


@pytest.fixture(scope="module")
def plan_outputs():
    """(config, {case: (status, stderr, words)}) of the plan command on a tiny shape, good and bad, side by side."""
    shape = [*TINY_MODEL, "--batch_size", "4", "--block_size", "64", "--gradient_accumulation_steps", "8"]
    plan = [sys.executable, "-m", "accel_train.plan", *shape, "--gpu", "h100"]
    cases = [("json", [*plan, "--num_processes", "8", "--sharding", "fsdp", "--json"], []), ("table", plan, []),
             *((name, [*plan, *args], words) for name, (args, words) in BAD_INPUT.items())]
    started = {name: start_process(cmd) for name, cmd, _ in cases}
    outputs = {name: process.communicate(timeout=300) for name, process in started.items()}
    return load_config(shape), {name: (started[name].returncode, *outputs[name]) for name in started}


def test_plan_command_json(plan_outputs):
    cfg, results = plan_outputs
    status, stdout, stderr = results["json"]
    assert status == 0, stderr[-3000:]
    plan = json.loads(stdout)
    for key in ("peak_bytes", "parameters_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes"):
        assert plan[key] > 0, (key, plan)
    assert plan["fits"] is True and plan["layout"] == {"processes": 8, "sharding": "fsdp", "mixed_precision": "bf16",
                                                       "fused_adamw": True, "compiled": True}
    assert cfg.sequences_per_step % plan["largest_micro_batch"] == 0 and plan["largest_micro_batch"] >= 4
    assert plan["flops_per_token"] == flops_per_token(cfg.model, cfg.block_size)
    assert plan["flops_per_step"] == plan["flops_per_token"] * cfg.tokens_per_step * 8
    assert plan["need_bytes"] == plan["peak_bytes"] + sum(plan["assumed_bytes"].values())
    assert set(plan["assumed_bytes"]) >= {"CUDA context", "caching allocator reserve", "torch.compile's own buffers"}


def test_plan_command_table(plan_outputs):
    _, results = plan_outputs
    status, stdout, stderr = results["table"]
    assert status == 0, stderr[-3000:]
    assert "1 x H100" in stdout and "fits" in stdout and "(assumed)" in stdout, stdout
    assert re.search(r"largest micro-batch that fits: \d+", stdout) and "tokens/s" in stdout, stdout


@pytest.mark.parametrize("case", BAD_INPUT)
def test_plan_command_refuses_bad_input_in_one_line(plan_outputs, case):
    _, results = plan_outputs
    status, _, stderr = results[case]
    assert_one_error_line(status, stderr, *BAD_INPUT[case][1])


def test_trainer_starts_with_the_plan(trained_run):
    _, stdout = trained_run
    assert re.search(r"^plan: \d+\.\d\d GiB per process at micro-batch 8, of [\d.]+ GiB \(this machine's CPU\)$",
                     stdout, re.MULTILINE), stdout[:2000]


def test_trainer_refuses_a_run_that_cannot_fit_before_allocating(demo_data_dir, tmp_path):
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(tmp_path / "out"), "--model.hidden_size",
                    "10000000", "--model.intermediate_size", "10000000"])
    line = assert_one_error_line(result.returncode, result.stderr, "even at micro-batch 1", "available",
                                 "--checkpoint_layers true", "FSDP over more processes", "a shorter --block_size")
    assert re.search(r"needs [\d,]+\.\d GiB per process", line), line
