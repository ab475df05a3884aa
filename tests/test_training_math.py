"""The training step computes what it claims, checked in-process against plain PyTorch references.

Every test drives the real `train_step` with a real Accelerator built by `make_accelerator`, and
reads what the optimizer is actually handed through a step pre-hook on it.
"""

import math

import pytest
import torch

from accel_train.config import TrainConfig
from accel_train.models.gemma3 import Gemma3, ModelConfig
from accel_train.training.optim import build_optimizer
from accel_train.training.schedule import LrSchedule, Schedule, lr_at
from accel_train.training.loop import train_step
from accel_train.training.start import make_accelerator

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TINY = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=16, sliding_window=8, sliding_window_pattern=2,
                   query_pre_attn_scalar=16, max_position_embeddings=64)
BLOCK = 16


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model gains nothing from threads, which other jobs on a small machine contend for."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(tmp_path, **overrides) -> TrainConfig:
    settings = dict(device="cpu", dtype="float32", out_dir=str(tmp_path), learning_rate=1e-3, min_lr=1e-4,
                    warmup_steps=2, max_iters=10, weight_decay=0.1, block_size=BLOCK, gradient_accumulation_steps=1,
                    grad_clip=0.0, model=TINY)
    return TrainConfig(**{**settings, **overrides}).validate()


def batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(TINY.vocab_size, (n, BLOCK + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def build(cfg: TrainConfig):
    """Model and AdamW as train() builds them, from the same initial weights every time."""
    torch.manual_seed(0)
    model = Gemma3(cfg.model)
    return model, build_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2))


def prepare(accelerator, cfg: TrainConfig, model, optimizers: list):
    """The model, the optimizers and a Schedule for each through accelerator.prepare, as train() prepares them."""
    schedulers = [Schedule(optimizer, LrSchedule.of(cfg)) for optimizer in optimizers]
    model, *prepared = accelerator.prepare(model, *optimizers, *schedulers)
    return model, prepared[:len(optimizers)], prepared[len(optimizers):]


def record_steps(optimizer: torch.optim.Optimizer) -> list[dict]:
    """What each optimizer step receives: a copy of every gradient and the learning rate it uses."""
    seen = []

    def hook(opt, args, kwargs):
        seen.append({"grads": [p.grad.clone() for g in opt.param_groups for p in g["params"]],
                     "lr": opt.param_groups[0]["lr"]})

    optimizer.register_step_pre_hook(hook)
    return seen


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def first_lr(cfg: TrainConfig) -> float:
    return lr_at(1, LrSchedule.of(cfg))


def reference_step(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor):
    """One plain PyTorch step on the whole batch: (loss, gradient, clipped gradient, weights after)."""
    model, optimizer = build(cfg)
    _, loss = model(x, y)
    loss.backward()
    grad = flat(p.grad for g in optimizer.param_groups for p in g["params"]).clone()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
    clipped = flat(p.grad for g in optimizer.param_groups for p in g["params"]).clone()
    for group in optimizer.param_groups:
        group["lr"] = first_lr(cfg)
    optimizer.step()
    return loss.item(), grad, clipped, flat(model.state_dict().values())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("clip_fraction", [0.0, 0.1], ids=["no-clip", "clip"])
def test_accumulated_step_equals_one_big_batch(tmp_path, clip_fraction):
    """4 micro-batches of 2 give the loss, gradient, pre-clip norm, clipped gradient and AdamW step of one batch of 8.

    Clipping, when it bites, scales the whole accumulated gradient once, so the optimizer sees
    g * clip / |g| and the logged norm is |g|, not the clipped one.
    """
    k, b = 4, 2
    x, y = batch(k * b)
    _, full_grad, _, _ = reference_step(config(tmp_path), x, y)
    cfg = config(tmp_path, gradient_accumulation_steps=k, grad_clip=clip_fraction * full_grad.norm().item())
    loss_ref, grad_ref, clipped_ref, weights_ref = reference_step(cfg, x, y)

    accelerator = make_accelerator(cfg)
    model, optimizer = build(cfg)
    model, [optimizer], schedulers = prepare(accelerator, cfg, model, [optimizer])
    seen = record_steps(optimizer.optimizer)
    micro_batches = [(x[i:i + b], y[i:i + b]) for i in range(0, k * b, b)]
    loss, grad_norm, _ = train_step(model, optimizer, schedulers, accelerator, micro_batches, cfg.grad_clip,
                                    skip_nonfinite=False)

    assert len(seen) == 1  # one optimizer step for the whole accumulation window
    assert loss.item() == pytest.approx(loss_ref, rel=1e-6)  # mean over all k*b*BLOCK tokens
    assert grad_norm.item() == pytest.approx(grad_ref.norm().item(), rel=1e-5)
    assert relative_error(flat(seen[0]["grads"]), clipped_ref) < 1e-5
    if clip_fraction:
        assert flat(seen[0]["grads"]).norm().item() == pytest.approx(cfg.grad_clip, rel=1e-4)
    assert (flat(accelerator.unwrap_model(model).state_dict().values()) - weights_ref).abs().max().item() < 1e-6
    assert seen[0]["lr"] == first_lr(cfg)


@pytest.mark.parametrize("accumulation", [1, 3])
def test_each_optimizer_step_takes_its_schedulers_rate_whatever_the_accumulation(tmp_path, accumulation):
    """Step s runs at lr_at(s) on every parameter group: the prepared scheduler steps once per accumulation
    window, and after it the optimizer holds the next step's rate."""
    cfg = config(tmp_path, gradient_accumulation_steps=accumulation, warmup_steps=3, max_iters=6)
    accelerator = make_accelerator(cfg)
    model, optimizer = build(cfg)
    model, [optimizer], [scheduler] = prepare(accelerator, cfg, model, [optimizer])
    seen = record_steps(optimizer.optimizer)
    expected = [lr_at(s, LrSchedule.of(cfg))
                for s in range(1, cfg.max_iters + 4)]
    for s in range(cfg.max_iters + 2):
        train_step(model, optimizer, [scheduler], accelerator,
                   [batch(1, seed=s * 10 + i) for i in range(accumulation)], cfg.grad_clip, False)
        assert scheduler.get_last_lr() == [group["lr"] for group in optimizer.param_groups] == 2 * [expected[s + 1]]
    assert [step["lr"] for step in seen] == expected[:-1]


def test_schedule_key_points_and_monotonic_decay():
    lr, min_lr, warmup, max_iters = 1e-3, 1e-4, 10, 110

    def at(step):
        return lr_at(step, LrSchedule(lr, min_lr, warmup, max_iters))

    assert at(0) == 0.0
    assert at(warmup // 2) == pytest.approx(lr / 2)
    assert at(warmup) == pytest.approx(lr)
    assert at((warmup + max_iters) // 2) == pytest.approx((lr + min_lr) / 2)
    assert at(max_iters) == pytest.approx(min_lr)
    assert at(max_iters + 1) == at(max_iters + 1000) == min_lr
    warmup_rates = [at(s) for s in range(warmup + 1)]
    decay_rates = [at(s) for s in range(warmup, max_iters + 20)]
    assert all(a < b for a, b in zip(warmup_rates, warmup_rates[1:]))
    assert all(a > b for a, b in zip(decay_rates, decay_rates[1:max_iters - warmup + 1]))
    assert all(a >= b for a, b in zip(decay_rates, decay_rates[1:]))
    assert min(decay_rates) >= min_lr


def test_bf16_autocast_keeps_fp32_master_weights_and_optimizer_state(tmp_path):
    """Under bf16 the matmuls run in bf16, yet an update far below bf16's resolution still moves a weight."""
    cfg = config(tmp_path, dtype="bfloat16", learning_rate=1e-4, min_lr=1e-5, warmup_steps=0)
    accelerator = make_accelerator(cfg)
    model, optimizer = build(cfg)
    with torch.no_grad():
        model.norm.weight.fill_(1.0)  # around 1.0, bf16 values are 2**-7 apart: a 1e-4 step rounds away
    before = model.norm.weight.detach().clone()
    model, [optimizer], schedulers = prepare(accelerator, cfg, model, [optimizer])
    matmul_dtypes = []
    accelerator.unwrap_model(model).layers[0].mlp.up_proj.register_forward_hook(
        lambda module, args, output: matmul_dtypes.append(output.dtype))

    train_step(model, optimizer, schedulers, accelerator, [batch(4)], cfg.grad_clip, skip_nonfinite=False)

    assert accelerator.mixed_precision == "bf16" and matmul_dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    states = [t for s in optimizer.optimizer.state.values() for t in s.values() if t.dim() > 0]
    assert states and all(t.dtype == torch.float32 for t in states)
    after = accelerator.unwrap_model(model).norm.weight.detach()
    step = (after - before).abs()
    assert step.max().item() < 2**-9  # below half of bf16's spacing at 1.0 ...
    assert torch.equal(after.bfloat16(), before.bfloat16())  # ... so a bf16 weight could not have moved
    assert (step > 0).float().mean().item() > 0.9  # but the fp32 weight did
