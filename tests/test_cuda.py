"""What only a GPU can show: no host-device synchronization inside training steps, attention on the
flash kernel within the sliding window and on FlexAttention beyond it, the fused loss in bf16 on CUDA.
Skipped without CUDA; scripts/gpu_check.py runs them."""

import itertools

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from accel_train.config import load_config
from accel_train.data.tokens import train_loader
from accel_train.models.gemma3 import Gemma3
from accel_train.training.optim import build_optimizer
from accel_train.training.schedule import LrSchedule, Schedule
from accel_train.data.stream import WindowStream
from accel_train.training.loop import train_step
from accel_train.training.start import make_accelerator
from helpers import TINY_MODEL, bf16_losses_and_grads

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("fresh_accelerate_state")]

# One layer of each kind in the Gemma 3 270M attention shape (4 query heads, 1 key-value head, head_dim 256).
GEMMA_ATTENTION = ["--model.num_hidden_layers", "2", "--model.sliding_window_pattern", "2", "--model.vocab_size",
                   "50257", "--model.hidden_size", "640", "--model.intermediate_size", "2048",
                   "--model.num_attention_heads", "4", "--model.num_key_value_heads", "1", "--model.head_dim", "256",
                   "--model.query_pre_attn_scalar", "256", "--model.sliding_window", "512"]


@pytest.mark.parametrize("compile", ["off", "on"])
def test_training_steps_do_not_synchronize(demo_data_dir, compile):
    """Between log steps the host only queues work: any synchronization inside train_step raises here."""
    cfg = load_config(["--data_dir", str(demo_data_dir), "--dtype", "bfloat16", "--compile", compile,
                       "--batch_size", "8", "--gradient_accumulation_steps", "2", *TINY_MODEL])
    accelerator = make_accelerator(cfg)
    model = Gemma3(cfg.model)
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), fused=True)
    loader = train_loader(WindowStream.of_folder(cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.seed),
                          num_batches=40, pin_memory=True)
    scheduler = Schedule(optimizer, LrSchedule.of(cfg))
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    batches = iter(loader)

    def step():
        return train_step(model, optimizer, [scheduler], accelerator, itertools.islice(batches, 2), cfg.grad_clip,
                          skip_nonfinite=False)

    for _ in range(3):  # warm-up: compilation and first allocations may synchronize
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [step() for _ in range(5)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(loss).item() for loss, *_ in results)


def test_attention_runs_on_the_flash_kernel_within_the_window():
    """With only the flash kernel allowed, SDPA raises if the call (mask, GQA, head_dim) does not suit it."""
    cfg = load_config(GEMMA_ATTENTION)
    model = Gemma3(cfg.model).cuda()
    idx = torch.randint(cfg.model.vocab_size, (4, 129), device="cuda")
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)


def test_fused_loss_matches_the_plain_loss_in_bf16_on_cuda():
    cfg = load_config(GEMMA_ATTENTION)
    idx = torch.randint(cfg.model.vocab_size, (8, 129), device="cuda")
    (loss_ref, grad_ref), (loss, grad) = bf16_losses_and_grads(cfg.model, idx)
    assert loss == pytest.approx(loss_ref, rel=1e-3)
    assert ((grad - grad_ref).norm() / grad_ref.norm()).item() < 2e-2


def test_compiled_sliding_window_beyond_the_block_uses_flex_attention_and_matches_eager():
    """Block 384 over a window of 128: compiled, the sliding layer takes the FlexAttention kernel (with its
    own backward); its loss and gradients agree with the eager dense-mask path within bf16 rounding."""
    cfg = load_config([*GEMMA_ATTENTION, "--model.sliding_window", "128"])
    torch.manual_seed(0)
    model = Gemma3(cfg.model).cuda()
    idx = torch.randint(cfg.model.vocab_size, (4, 385), device="cuda")
    x, y = idx[:, :-1], idx[:, 1:]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        graph_code = "".join(graph.code for graph in torch._dynamo.explain(model)(x, y).graphs)
    assert "flex_attention" in graph_code

    def loss_and_grads(forward):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = forward(x, y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    torch._dynamo.reset()
    loss_ref, grad_ref = loss_and_grads(model)
    loss, grad = loss_and_grads(torch.compile(model, fullgraph=True))
    assert loss == pytest.approx(loss_ref, rel=5e-3)
    assert ((grad - grad_ref).norm() / grad_ref.norm()).item() < 3e-2
