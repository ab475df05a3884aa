"""The configuration a GPU run uses (compile on, bf16 autocast, fused AdamW, the fused loss, layer checkpointing)
rehearsed on the CPU, as the real trainer on one process, on two with DDP and on two with FSDP2 (tests/fsdp_on_cpu):
20 steps with validation and `--tasks story_endings` at steps 10 and 20. One run of each proves three things: its
losses follow the eager fp32 run of the plain configuration, no graph breaks in the model's code, and torch.compile
compiled exactly the graphs chosen (docs/speed.md, "Compile"); evaluation and scoring run eagerly, so they add none.

What only a GPU can check (scripts/gpu_check.py): inductor's Triton kernels, FlexAttention's, CUDA graphs, and bf16
on the GPU's matrix units; here inductor generates C++ and autocast runs bf16 on the CPU.
"""

import pytest

from dynamo_log import DYNAMO_LOGS, compiles_by_process
from helpers import REPO, TINY_MODEL, TRAIN, command, start_process
from accel_train.training.tracking import read_metrics

TASKS = REPO / "accel_train" / "evaluation" / "tasks"
FSDP_ON_CPU = {"PYTHONPATH": f"{REPO / 'tests' / 'fsdp_on_cpu'}:{REPO}"}
GPU_CONFIG = ["--compile", "on", "--dtype", "bfloat16", "--fused_adamw", "on", "--fused_loss", "true",
              "--checkpoint_layers", "true"]
PLAIN_CONFIG = ["--compile", "off", "--dtype", "float32", "--fused_adamw", "off", "--fused_loss", "false",
                "--checkpoint_layers", "false"]
RUN = ["--max_iters", "20", "--warmup_steps", "2", "--batch_size", "4", "--block_size", "64",
       "--gradient_accumulation_steps", "2", "--eval_interval", "10", "--eval_iters", "2", "--log_interval", "1",
       "--learning_rate", "3e-3", "--min_lr", "3e-4", "--checkpoint_interval", "0",
       "--device", "cpu", "--demo_data", "false", "--plot", "false", "--sample_tokens", "0", *TINY_MODEL,
       "--model.sliding_window_pattern", "2"]  # layer 0 sliding, layer 1 global: both kinds of layer
# bf16 keeps 8 bits of mantissa, so each product rounds by up to 0.4%; the losses average thousands of them and
# differ by at most 2e-4 relative over the 20 steps (5e-4 with two processes). 5e-3 leaves room for other CPUs and
# kernels, and is ten times below what one step changes the loss by here (2-5%): a lost or doubled micro-batch,
# a gradient left unaveraged or a step at the wrong rate moves it by more.
LOSS_TOLERANCE = 5e-3
MODEL_FILES = ("gemma3.py", "losses.py", "operations.py")  # ours, and Accelerate's autocast wrapper of forward
# What torch.compile compiles in each process of each launch (whatever the evaluations and scoring):
# - one process, DDP: the whole model and loss as one graph, traced from Accelerate's autocast wrapper of forward.
# - FSDP: each decoder layer alone (regional compilation): one graph per kind of layer, the recompile guarded on
#   `self_attn.sliding` (the Python bool that picks the kind), and the final norm.
COMPILES = {"one": {"forward operations.py": 1}, "ddp": {"forward operations.py": 1}, "fsdp": {"forward gemma3.py": 3}}
RECOMPILES = {"one": [], "ddp": [], "fsdp": [["forward gemma3.py", "self._modules['self_attn'].sliding == True"]]}
# torch.compile(DDP(model)) traces DDP's own forward first: it breaks at DDP's logger and its `_inside_ddp_forward`
# context manager (dynamo never traces either), in DDP's Python, before the model's graph begins
BREAKS = {"one": set(), "ddp": {"distributed.py", "contextlib.py"}, "fsdp": set()}


@pytest.fixture(scope="module")
def runs(demo_data_dir, tmp_path_factory):
    """{name: (out_dir, stderr)} of the compiled runs ("one", "ddp", "fsdp") and their eager fp32 references
    ("one_eager", "ddp_eager": DDP and FSDP take the same steps). The compiled single process goes first, beside
    the cheap references; the two-process compiled runs follow, side by side, finding its kernels in inductor's
    cache."""
    root = tmp_path_factory.mktemp("rehearsal")
    tasks = root / "story_endings.jsonl"  # the shipped task's first 24 items: scoring runs eagerly, items cost time
    tasks.write_text("".join((TASKS / "story_endings.jsonl").read_text().splitlines(keepends=True)[:24]))
    logged = {"TORCH_LOGS": DYNAMO_LOGS}
    launches = {"one": (1, None, GPU_CONFIG, logged), "one_eager": (1, None, PLAIN_CONFIG, {}),
                "ddp_eager": (2, None, PLAIN_CONFIG, {}), "ddp": (2, None, GPU_CONFIG, logged),
                "fsdp": (2, str(REPO / "configs" / "accelerate" / "fsdp.yaml"), GPU_CONFIG, {**logged, **FSDP_ON_CPU})}
    results = {}
    for names in (("one", "one_eager", "ddp_eager"), ("ddp", "fsdp")):
        started = {}
        for name in names:
            processes, config_file, config, env = launches[name]
            args = ["--data_dir", str(demo_data_dir), "--out_dir", str(root / name), "--tasks", str(tasks), *RUN,
                    *config]
            started[name] = start_process(command(TRAIN, args, processes, config_file), env)
        for name, process in started.items():
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, (name, stderr[-3000:])
            results[name] = (root / name, stderr)
    return results


@pytest.mark.parametrize("launch, reference", [("one", "one_eager"), ("ddp", "ddp_eager"), ("fsdp", "ddp_eager")])
def test_losses_follow_the_eager_fp32_run(runs, launch, reference):
    rows, expected = read_metrics(runs[launch][0]), read_metrics(runs[reference][0])
    assert [r["step"] for r in rows] == [r["step"] for r in expected] == list(range(1, 21))
    for row, plain in zip(rows, expected):
        assert row["loss"] == pytest.approx(plain["loss"], rel=LOSS_TOLERANCE), row["step"]
    evaluated = [(row, plain) for row, plain in zip(rows, expected) if "val_loss" in plain]
    assert [row["step"] for row, _ in evaluated] == [10, 20]
    for row, plain in evaluated:
        assert row["val_loss"] == pytest.approx(plain["val_loss"], rel=LOSS_TOLERANCE), row["step"]
        assert 0 <= row["story_endings/acc"] <= 1  # scored, under compile
    assert rows[0]["loss"] - rows[-1]["loss"] > 0.5  # it learned: following the reference means something


@pytest.mark.parametrize("launch", ["one", "ddp", "fsdp"])
def test_only_the_chosen_graphs_compile_and_none_breaks_in_the_model(runs, launch):
    """Each process compiles the graphs of COMPILES and no other, though it evaluated and scored the tasks twice;
    a recompile for evaluation (no_grad) or for scoring (logits, other shapes) would show here."""
    processes = compiles_by_process(runs[launch][1])
    assert len(processes) == (1 if launch == "one" else 2), runs[launch][1][-3000:]
    for compiles in processes.values():
        assert compiles.count(MODEL_FILES) == COMPILES[launch], compiles
        assert compiles.recompiles == RECOMPILES[launch], compiles
        assert set(compiles.breaks) <= BREAKS[launch], compiles
