"""The benchmark tool, MFU, and the speed switches that must not change what training computes."""

import json
import sys

import pytest
import torch
from accelerate.utils import DynamoBackend
from torch._functorch import config as functorch_config
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from accel_train.models.activation_memory import saved_activation_bytes
from accel_train.config import load_config
from accel_train.errors import UserError
from accel_train.models.flops import flops_per_token, mfu
from accel_train.training.micro_batch import divisors_descending, largest_fitting
from accel_train.models.gemma3 import Gemma3
from accel_train.training.tracking import read_metrics
from accel_train.training.loop import train
from accel_train.training.start import make_accelerator
from helpers import TINY_MODEL, assert_one_error_line, help_by_key, run, run_side_by_side

SMALL_RUN = ["--batch_size", "4", "--gradient_accumulation_steps", "4", "--warmup_steps", "1", "--eval_iters", "1",
             "--sample_tokens", "0", "--plot", "false", *TINY_MODEL]


@pytest.fixture(scope="module")
def bench(tmp_path_factory, demo_data_dir):
    """One benchmark run of a tiny model on the CPU: (its JSON, its printed output, the JSON's path)."""
    out = tmp_path_factory.mktemp("bench") / "result.json"
    proc = run([sys.executable, "-m", "accel_train.bench", "--config", "configs/demo.json", "--data_dir",
                str(demo_data_dir), "--steps", "2", "--baseline_steps", "1", "--peak_tflops", "0.5", "--json", str(out),
                "--micro_batch", "8", "--profile_steps", "2", *SMALL_RUN])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout, out


def test_bench_times_ours_beside_the_baseline(bench):
    result, stdout, _ = bench
    ours, baseline = result["ours"], result["baseline"]
    assert ours["tokens_per_s"] > 0 and baseline["tokens_per_s"] > 0
    assert result["speedup"] == pytest.approx(ours["tokens_per_s"] / baseline["tokens_per_s"])
    assert f"ratio  {result['speedup']:.2f}x" in stdout
    tokens_per_step = 4 * 4 * 128
    assert ours["step_time_s"] == pytest.approx(tokens_per_step / ours["tokens_per_s"])
    assert baseline["step_time_s"] == pytest.approx(tokens_per_step / baseline["tokens_per_s"])
    assert (ours["micro_batch"], ours["micro_steps"], baseline["micro_batch"]) == (8, 2, 4)
    assert result["config"]["max_iters"] == 7  # 2 warm-up steps, 2 timed ones, the profiler's warm-up, 2 profiled
    assert ours["compile"] is False and ours["fused_adamw"] is False  # "auto" on the CPU
    for r in (ours, baseline):
        assert r["mfu"] == pytest.approx(mfu(r["tokens_per_s"], result["flops_per_token"], 0.5))
        assert 0 < r["loss"] < 10


def test_bench_profiles_the_steps_after_the_timed_ones(bench):
    result, stdout, json_path = bench
    ops = result["profile"]
    shares = [op["share"] for op in ops]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert "aten::mm" in [op["name"] for op in ops]  # the matmuls, forward and backward
    mm = next(op for op in ops if op["name"] == "aten::mm")
    assert mm["calls_per_step"] >= 2 * 7 * 2  # 2 micro-batches x (7 linear layers per block x 2 blocks) at least
    table = json_path.with_suffix(".profile.txt").read_text()
    assert "aten::mm" in table and "Self CPU" in table
    assert "profile of 2 steps" in stdout


def test_palm_flops_match_the_matmuls_a_training_step_runs():
    """6N + 12 L H Q T per token is what torch counts in a real forward and backward pass, but for the
    formula's norm vectors, which are parameters that do no matmul."""
    cfg = load_config(["--config", "configs/demo.json", *TINY_MODEL])
    model, batch, T = Gemma3(cfg.model, fused_loss=False), 2, cfg.block_size
    idx = torch.randint(cfg.model.vocab_size, (batch, T + 1))
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):  # attention as counted matmuls
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
    norm_params = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert counter.get_total_flops() == (flops_per_token(cfg.model, T) - 6 * norm_params) * batch * T


def test_bench_mistakes_are_one_line_with_the_closest_key():
    """bench's own keys are declared and parsed as the config's are: one error line, the closest key named, and
    --help stating each key's constraints."""
    bench = [sys.executable, "-m", "accel_train.bench"]
    outcomes = run_side_by_side([
        ("typo", [*bench, "--stepz", "3"], ["unknown", "'stepz'", "did you mean 'steps'?"]),
        ("config typo", [*bench, "--max_iter", "3"], ["did you mean 'max_iters'?"]),
        ("not a number", [*bench, "--steps", "ten"], ["'steps'", "int", "'ten'"]),
        ("below its range", [*bench, "--baseline_steps", "0"], ["'baseline_steps'", "at least 1", "got 0"]),
        ("not a choice", [*bench, "--baseline", "maybe"], ["'baseline'", "on, off", "maybe"]),
    ])
    for status, stderr, words in outcomes.values():
        assert_one_error_line(status, stderr, *words)
    shown = help_by_key(bench)
    assert "at least 1" in shown["steps"] and "one of on, off" in shown["baseline"] and "max_iters" in shown


def test_micro_batch_must_divide_a_step():
    with pytest.raises(UserError, match="micro_batch"):
        load_config(["--batch_size", "4", "--gradient_accumulation_steps", "2", "--micro_batch", "3"])


def test_search_takes_the_largest_divisor_that_fits():
    tried = []

    def fits(size):
        tried.append(size)
        if size > 6:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return size <= 4  # 6 runs but leaves no headroom

    assert divisors_descending(24) == [24, 12, 8, 6, 4, 3, 2, 1]
    assert largest_fitting(divisors_descending(24), fits) == 4
    assert tried == [24, 12, 8, 6, 4]
    with pytest.raises(ValueError):  # an error that is not about memory is not swallowed
        largest_fitting([8, 4], lambda size: int("not a number"))


@pytest.fixture(scope="module")
def regrouped(tmp_path_factory, demo_data_dir):
    """The same 6 optimizer steps of 16 sequences as 4 x 4 (the config), 1 x 16 and 8 x 2: metrics and weights."""
    runs = {}
    for micro_batch in (0, 16, 2):
        out = tmp_path_factory.mktemp(f"micro{micro_batch}")
        cfg = load_config(["--data_dir", str(demo_data_dir), "--out_dir", str(out), "--max_iters", "6",
                           "--log_interval", "1", "--eval_interval", "6", "--micro_batch", str(micro_batch),
                           "--peak_tflops", "2", "--learning_rate", "3e-3", "--min_lr", "3e-4", *SMALL_RUN])
        _, model = train(cfg)
        runs[micro_batch] = read_metrics(out), torch.cat([p.detach().flatten() for p in model.parameters()])
    return runs


def test_micro_batch_changes_no_step(regrouped):
    """Regrouping a step's sequences into other micro-batches gives the same losses, gradient norms and weights."""
    rows_ref, weights_ref = regrouped[0]
    assert rows_ref[-1]["loss"] < rows_ref[0]["loss"]
    for micro_batch in (16, 2):
        rows, weights = regrouped[micro_batch]
        assert [r["step"] for r in rows] == [r["step"] for r in rows_ref] == list(range(1, 7))
        for r, ref in zip(rows, rows_ref):
            assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5)
            assert r["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
        assert ((weights - weights_ref).norm() / weights_ref.norm()).item() < 1e-5


def test_metrics_rows_carry_tokens_per_second_and_mfu(regrouped):
    rows, _ = regrouped[0]
    cfg = load_config(SMALL_RUN)
    for r in rows:
        assert r["tokens_per_s"] > 0
        assert r["mfu"] == pytest.approx(mfu(r["tokens_per_s"], flops_per_token(cfg.model, 128), 2.0))


def saved_bytes_and_grads(model, idx):
    """Bytes the forward pass keeps for the backward (weights aside), and the gradients it gives."""
    saved, (_, loss) = saved_activation_bytes(model, lambda: model(idx[:, :-1], idx[:, 1:]))
    loss.backward()
    return saved, torch.cat([p.grad.flatten() for p in model.parameters()])


def test_checkpointed_layers_keep_less_and_give_the_same_gradients():
    cfg = load_config(["--config", "configs/demo.json", *TINY_MODEL])
    torch.manual_seed(0)
    plain, checkpointed = Gemma3(cfg.model), Gemma3(cfg.model, checkpoint_layers=True)
    checkpointed.load_state_dict(plain.state_dict())
    idx = torch.randint(cfg.model.vocab_size, (4, 129))
    kept, grads = saved_bytes_and_grads(plain, idx)
    kept_checkpointed, grads_checkpointed = saved_bytes_and_grads(checkpointed, idx)
    torch.testing.assert_close(grads_checkpointed, grads)
    assert kept_checkpointed < kept / 3


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_activation_memory_budget_makes_the_compiled_model_keep_less_for_the_same_gradients():
    """The trainer's Accelerator compiles with inductor and sets the budget that inductor's min-cut partitioner
    reads; that partitioner then keeps a fraction of the activations and recomputes the rest, with the same
    gradients. It runs here behind aot_eager_decomp_partition, inductor's partitioning without its code
    generation: seconds per compile on the CPU instead of a minute of C++."""
    # torch's own patch: pytest's monkeypatch deletes a torch config key on undo, breaking later compiles
    with functorch_config.patch(activation_memory_budget=1.0):  # this process's value comes back after
        check_the_budget_keeps_less()


def check_the_budget_keeps_less() -> None:
    """The test's body, under the budget patch."""
    cfg = load_config(["--config", "configs/demo.json", *TINY_MODEL, "--compile", "on", "--device", "cpu"])
    torch.manual_seed(0)
    weights = Gemma3(cfg.model).state_dict()
    idx = torch.randint(cfg.model.vocab_size, (16, 129))
    kept, grads = {}, {}
    for budget in (1.0, 0.2):
        cfg.activation_memory_budget = budget
        accelerator = make_accelerator(cfg)
        assert accelerator.state.dynamo_plugin.backend == DynamoBackend.INDUCTOR
        assert functorch_config.activation_memory_budget == budget
        torch._dynamo.reset()
        model = Gemma3(cfg.model)
        model.load_state_dict(weights)
        compiled = torch.compile(model, backend="aot_eager_decomp_partition")
        compiled(idx[:, :-1], idx[:, 1:])[1].backward()  # compiled outside the counting: the graph training runs
        model.zero_grad(set_to_none=True)
        kept[budget], grads[budget] = saved_bytes_and_grads(compiled, idx)
    torch.testing.assert_close(grads[0.2], grads[1.0], rtol=1e-4, atol=1e-6)
    assert kept[0.2] < kept[1.0] / 2


def test_bench_refuses_a_data_dir_typed_wrong(tmp_path):
    """A --data_dir on the command line that holds no data is a mistake, not a reason to time the demo corpus."""
    from accel_train import bench

    with pytest.raises(UserError, match=f"--data_dir {tmp_path / 'dta'} holds no train.bin"):
        bench.main(["--data_dir", str(tmp_path / "dta"), "--steps", "1", "--json", str(tmp_path / "b.json")])
    assert not list(tmp_path.iterdir())
