"""`optimizer: muon`: torch.optim.Muon on the hidden matrices, AdamW on the rest, with every guarantee of AdamW.

In-process tests drive the real `train_step` with a real Accelerator (as tests/test_training_math.py does);
the rest run the real trainer in subprocesses: exact resume after SIGKILL, a refused optimizer switch,
and a torch without Muon. Two processes against one are tests/test_processes.py, parametrized over the
optimizer.
"""

import random
import shutil
import sys

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState

from accel_train.errors import UserError
from accel_train.models.gemma3 import Gemma3
from accel_train.training.optim import Optimizers, OptimizerHyperparameters, build_optimizers
from accel_train.training.schedule import LrSchedule, lr_at
from accel_train.training.loop import train_step
from accel_train.training.start import make_accelerator, start_from
from helpers import TRAIN, run, snapshot, train
from interrupt import comparable_rows, finish, interrupt
from test_resume import args, weights
from test_training_math import one_thread  # noqa: F401 (its autouse fixture: one thread for tiny models)
from test_training_math import batch, config, first_lr, flat, prepare, record_steps, relative_error

MUON = dict(optimizer="muon", muon_lr=3e-3)
HIDDEN = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def build(cfg):
    """Model, [AdamW, Muon] as train() builds them, from the same initial weights every time."""
    torch.manual_seed(0)
    model = Gemma3(cfg.model)
    return model, build_optimizers(model, OptimizerHyperparameters.of(cfg))


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tmp_path):
    model, (adamw, muon) = build(config(tmp_path, **MUON))
    names = {id(p): name for name, p in model.named_parameters()}
    muon_names = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    adamw_names = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert muon_names == {n for n in names.values() if n.split(".")[-2] in HIDDEN}
    assert adamw_names == set(names.values()) - muon_names  # embedding (tied head) and norms
    assert any("embed_tokens" in n for n in adamw_names) and any("norm" in n for n in adamw_names)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1, 0.0]  # matrices decay, norms do not


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_accumulated_clipped_muon_step_equals_one_big_batch_at_both_rates(tmp_path):
    """4 micro-batches of 2 give one batch of 8's step: both optimizers see the gradient clipped once over all
    parameters (per optimizer, each part would be clipped to the whole limit), Muon's group runs at
    muon_lr x the schedule, and the weights move as one big batch moves them."""
    k, b = 4, 2
    x, y = batch(k * b)
    cfg = config(tmp_path, gradient_accumulation_steps=k, grad_clip=0.05, **MUON)
    model, optimizers = build(cfg)
    initial = [flat(p.detach().clone() for g in o.param_groups for p in g["params"]) for o in optimizers]
    _, loss = model(x, y)
    loss.backward()
    assert torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip) > 10 * cfg.grad_clip  # clipping bites
    clipped_ref = [flat(p.grad for g in o.param_groups for p in g["params"]).clone() for o in optimizers]
    for group in Optimizers(optimizers).param_groups:
        group["lr"] = first_lr(cfg) * group.get("lr_scale", 1.0)
    Optimizers(optimizers).step()
    updates_ref = [flat(p for g in o.param_groups for p in g["params"]) - w for o, w in zip(optimizers, initial)]

    accelerator = make_accelerator(cfg)
    model, optimizers, schedulers = prepare(accelerator, cfg, *build(cfg))
    seen = [record_steps(o.optimizer) for o in optimizers]
    micro_batches = [(x[i:i + b], y[i:i + b]) for i in range(0, k * b, b)]
    train_step(model, Optimizers(optimizers), schedulers, accelerator, micro_batches, cfg.grad_clip, False)

    for steps, ref in zip(seen, clipped_ref):
        assert len(steps) == 1 and relative_error(flat(steps[0]["grads"]), ref) < 1e-5
    assert [steps[0]["lr"] for steps in seen] == [first_lr(cfg), first_lr(cfg) * cfg.muon_lr / cfg.learning_rate]
    updates = [flat(p for g in o.param_groups for p in g["params"]) - w for o, w in zip(optimizers, initial)]
    assert relative_error(updates[0], updates_ref[0]) < 1e-5  # AdamW
    # Muon orthogonalizes in bf16, where the fp32 rounding of summed micro-batches flips some roundings (2e-3 here);
    # a missed or doubled step, or a wrong rate, is off by 50% or more
    assert relative_error(updates[1], updates_ref[1]) < 1e-2


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_bf16_muon_keeps_fp32_master_weights_and_momentum(tmp_path):
    """Under bf16 a Muon update far below bf16's resolution still moves the fp32 hidden matrices."""
    cfg = config(tmp_path, dtype="bfloat16", learning_rate=1e-5, min_lr=1e-6, warmup_steps=0, optimizer="muon")
    accelerator = make_accelerator(cfg)
    model, optimizers = build(cfg)
    up = model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        up.add_(1.0)  # around 1.0, bf16 values are 2**-7 apart
    before = up.detach().clone()
    model, optimizers, schedulers = prepare(accelerator, cfg, model, optimizers)
    matmul_dtypes = []
    accelerator.unwrap_model(model).layers[0].mlp.up_proj.register_forward_hook(
        lambda module, inputs, output: matmul_dtypes.append(output.dtype))

    train_step(model, Optimizers(optimizers), schedulers, accelerator, [batch(4)], cfg.grad_clip, False)

    assert accelerator.mixed_precision == "bf16" and matmul_dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    states = [t for s in optimizers[1].optimizer.state.values() for t in s.values()]
    assert states and all(t.dtype == torch.float32 for t in states)  # Muon's momentum buffers
    step = (accelerator.unwrap_model(model).layers[0].mlp.up_proj.weight.detach() - before).abs()
    assert step.max().item() < 2**-9  # below half of bf16's spacing: a bf16 weight could not have moved
    assert (step > 0).float().mean().item() > 0.9  # but the fp32 weights did


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_compiled_model_trains_under_muon_as_the_eager_one(tmp_path):
    """Accelerate compiles the model (inductor, here on the CPU); Muon steps on its gradients as on eager ones."""
    losses, updates = {}, {}
    for compiled in ("off", "on"):
        cfg = config(tmp_path, compile=compiled, **MUON)
        accelerator = make_accelerator(cfg)
        torch._dynamo.reset()
        model, optimizers = build(cfg)
        initial = flat(p.detach().clone() for g in optimizers[1].param_groups for p in g["params"])
        model, optimizers, schedulers = prepare(accelerator, cfg, model, optimizers)
        losses[compiled] = [train_step(model, Optimizers(optimizers), schedulers, accelerator,
                                       [batch(4, seed=s)], cfg.grad_clip, False)[0].item() for s in range(3)]
        updates[compiled] = flat(p for g in optimizers[1].param_groups for p in g["params"]) - initial
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4)
    assert relative_error(updates["on"], updates["off"]) < 0.05  # 0.013 here: bf16 orthogonalization, as above


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_resume_loads_muons_momentum_but_takes_its_settings_and_rates_from_its_own_config(tmp_path):
    """As for AdamW: accelerator.load_state brings back Muon's momentum buffers, the saved group settings and
    each scheduler's step count; the run's own muon_lr, momentum and weight decay must win over the saved
    ones, and each group's rate is the run's own schedule at the saved step (Muon's at its own scale)."""
    saved_cfg = config(tmp_path, **MUON)
    accelerator = make_accelerator(saved_cfg)
    model, optimizers, schedulers = prepare(accelerator, saved_cfg, *build(saved_cfg))
    train_step(model, Optimizers(optimizers), schedulers, accelerator, [batch(4)], 0.0, False)
    accelerator.save_state(str(tmp_path / "state"))
    momentum = [t.clone() for t in optimizers[1].optimizer.state_dict()["state"][0].values()]

    AcceleratorState._reset_state(reset_partial_state=True)  # a new run in the same process, as the fixture does
    GradientState._reset_state()
    schedule = dict(learning_rate=2e-3, min_lr=1e-5, warmup_steps=4, max_iters=30, lr_schedule="wsd",
                    decay_fraction=0.5)
    cfg = config(tmp_path, optimizer="muon", muon_lr=1e-2, muon_momentum=0.8, weight_decay=0.05, **schedule)
    accelerator = make_accelerator(cfg)
    model, optimizers, schedulers = prepare(accelerator, cfg, *build(cfg))
    start_from(cfg, accelerator, Optimizers(optimizers), tmp_path / "state", step=1)

    group = optimizers[1].param_groups[0]
    assert (group["momentum"], group["lr_scale"], group["weight_decay"]) == (0.8, 5.0, 0.05)
    assert optimizers[0].param_groups[0]["weight_decay"] == 0.05
    loaded = list(optimizers[1].optimizer.state_dict()["state"][0].values())
    assert all(torch.equal(a, b) for a, b in zip(loaded, momentum, strict=True))
    rate = lr_at(2, LrSchedule(**{k.replace("lr_schedule", "shape"): v for k, v in schedule.items()}))
    assert [s.state_dict() for s in schedulers] == [{"last_epoch": 1}] * 2
    assert [[g["lr"] for g in o.param_groups] for o in optimizers] == [[rate, rate], [rate * 5.0]]
    assert [s.get_last_lr() for s in schedulers] == [[rate, rate], [rate * 5.0]]


def test_muon_under_fp16_loss_scaling_is_refused(tmp_path):
    model = Gemma3(config(tmp_path).model)
    with pytest.raises(UserError, match="float16"):
        build_optimizers(model, OptimizerHyperparameters.of(config(tmp_path, **MUON)), mixed_precision="fp16")
    adamw = OptimizerHyperparameters.of(config(tmp_path))
    assert len(build_optimizers(model, adamw, mixed_precision="fp16")) == 1  # AdamW alone runs


@pytest.mark.parametrize("key, value", [("optimizer", "sgd"), ("muon_momentum", 1.0), ("muon_lr", -1.0),
                                        ("muon_adjust_lr", "rms"), ("muon_lr", 20.0)])
def test_bad_muon_keys_are_refused(tmp_path, key, value):
    with pytest.raises(UserError, match=key if key != "muon_lr" or value < 0 else "weight_decay x muon_lr"):
        config(tmp_path, **{**MUON, key: value})


MUON_ARGS = ["--optimizer", "muon", "--muon_lr", "1e-2"]


@pytest.fixture(scope="module")
def muon_reference(demo_data_dir, tmp_path_factory):
    """One uninterrupted single-process Muon run, keeping every checkpoint."""
    out = tmp_path_factory.mktemp("muon_reference") / "out"
    result = train(args(demo_data_dir, out, "--keep_last", "0", *MUON_ARGS))
    assert result.returncode == 0, result.stderr
    return out


def test_muon_run_killed_mid_step_and_mid_save_resumes_bit_exactly(demo_data_dir, muon_reference, tmp_path):
    out, rng, log = tmp_path / "out", random.Random(3), tmp_path / "log.txt"
    run_args = args(demo_data_dir, out, "--keep_last", "2", *MUON_ARGS)
    events = [interrupt(kind, run_args, 1, out, rng, 12, log) for kind in ("kill-save", "kill-step")]
    assert finish(run_args, 1, log) == 0, log.read_text()[-3000:]
    assert all(e["interrupted"] for e in events), events
    assert weights(out) == weights(muon_reference), events  # Muon's momentum came back from optimizer_1.bin
    assert comparable_rows(out) == comparable_rows(muon_reference)


def test_resuming_with_another_optimizer_is_refused_untouched(demo_data_dir, muon_reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(muon_reference, out)
    before = snapshot(out)
    result = train(args(demo_data_dir, out, "--resume", "auto", "--optimizer", "adamw"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "optimizer muon" in lines[0] and "--optimizer muon" in lines[0]
    assert snapshot(out) == before


def test_muon_on_a_torch_without_it_is_one_error_line(demo_data_dir, tmp_path):
    """An older torch, simulated by deleting torch.optim.Muon before the trainer starts."""
    old_torch = ("import runpy, sys, torch; del torch.optim.Muon; sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")
    result = run([sys.executable, "-c", old_torch, TRAIN, *args(demo_data_dir, tmp_path / "out", *MUON_ARGS)])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "torch.optim.Muon" in lines[0], result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()
