"""The fused, chunked cross-entropy: the plain loss's value and gradients, without (tokens x vocabulary) tensors."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from accel_train.models.losses import chunk_tokens, linear_cross_entropy
from accel_train.models.gemma3 import Gemma3, ModelConfig
from helpers import bf16_losses_and_grads

TINY = ModelConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=32)


def plain_and_fused(hidden, weight, targets, chunk):
    """(loss, d hidden, d weight) of F.cross_entropy on full logits and of linear_cross_entropy."""
    out = []
    for fn in (lambda h, w: F.cross_entropy((h @ w.T).float(), targets),
               lambda h, w: linear_cross_entropy(h, w, targets, chunk=chunk)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = fn(h, w)
        (3.0 * loss).backward()  # a non-unit upstream gradient must reach both inputs
        out.append((loss.detach(), h.grad, w.grad))
    return out


@pytest.mark.parametrize("chunk", [7, 64, 5000])  # uneven last chunk, several chunks, one chunk
def test_equals_cross_entropy_in_fp32(chunk):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(300, 48, generator=g), torch.randn(500, 48, generator=g) * 0.3
    targets = torch.randint(500, (300,), generator=g)
    (loss_ref, gh_ref, gw_ref), (loss, gh, gw) = plain_and_fused(hidden, weight, targets, chunk)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # evaluation takes the path that keeps no gradients
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk=chunk), loss_ref)


def test_bf16_autocast_matches_the_plain_model_within_bf16_noise():
    idx = torch.randint(TINY.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
    (loss_ref, grad_ref), (loss, grad) = bf16_losses_and_grads(TINY, idx)
    assert loss == pytest.approx(loss_ref, rel=1e-3)
    assert ((grad - grad_ref).norm() / grad_ref.norm()).item() < 2e-2  # bf16 has 8 bits of mantissa
    assert grad.dtype == torch.float32  # the fp32 master weights get fp32 gradients


class LargestOutput(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("fused", [True, False])
def test_no_tensor_holds_every_tokens_logits(fused):
    """Through forward and backward, no tensor reaches tokens x vocabulary, except on the plain path,
    where the logits do (which shows the check can fail)."""
    g = torch.Generator().manual_seed(0)
    tokens, vocab, chunk = 512, 1000, 128
    hidden = torch.randn(tokens, 64, generator=g, requires_grad=True)
    weight = torch.randn(vocab, 64, generator=g, requires_grad=True)
    targets = torch.randint(vocab, (tokens,), generator=g)
    with LargestOutput() as mode:
        if fused:
            loss = linear_cross_entropy(hidden, weight, targets, chunk=chunk)
        else:
            loss = F.cross_entropy((hidden @ weight.T).float(), targets)
        loss.backward()
    if fused:
        assert mode.largest <= chunk * vocab < tokens * vocab
    else:
        assert mode.largest >= tokens * vocab


def test_default_chunk_bounds_the_logits_of_the_official_vocabulary():
    chunk = chunk_tokens(262_144)
    assert chunk % 128 == 0 and chunk * 262_144 * 4 <= 512 * 2**20  # at most 512 MiB of fp32 logits per chunk
    assert chunk_tokens(50_257) * 50_257 * 4 <= 512 * 2**20
    assert chunk_tokens(10**9) == 1  # a vocabulary past the budget still makes progress


def test_model_returns_logits_only_without_targets():
    torch.manual_seed(0)
    fused, plain = Gemma3(TINY), Gemma3(TINY, fused_loss=False)
    plain.load_state_dict(fused.state_dict())
    idx = torch.randint(TINY.vocab_size, (2, 16))
    logits, loss = fused(idx)
    assert loss is None and logits.shape == (2, 16, TINY.vocab_size)
    logits_t, loss_fused = fused(idx, idx)
    assert logits_t is None  # nothing (tokens x vocabulary) for Accelerate to cast to fp32
    plain_logits, loss_plain = plain(idx, idx)
    torch.testing.assert_close(plain_logits, logits)
    torch.testing.assert_close(loss_fused, loss_plain)


def test_compiles_in_one_graph_with_the_same_loss_and_gradients():
    """torch.compile traces the model and the fused loss's autograd Function without a graph break."""
    torch.manual_seed(0)
    eager = Gemma3(TINY)
    compiled_model = Gemma3(TINY)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True, dynamic=False)
    idx = torch.randint(TINY.vocab_size, (4, 33))
    losses = []
    for model, params in ((eager, eager.parameters()), (compiled, compiled_model.parameters())):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append((loss.detach(), torch.cat([p.grad.flatten() for p in params])))
    torch.testing.assert_close(losses[1][0], losses[0][0])
    torch.testing.assert_close(losses[1][1], losses[0][1], rtol=1e-4, atol=1e-6)
