"""Document masking: attention stays inside each document of a window, on the CPU's dense-mask path and in
FlexAttention's rendering of the same rule, combined with the sliding window, and in training runs."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from accel_train.config import load_config
from accel_train.model import Gemma3, attention_rule, dense_mask, document_ids
from helpers import TINY_MODEL

SEP = 0  # the token that opens each document


def documents(*lengths: int, seed: int = 0) -> list[torch.Tensor]:
    """Documents of these lengths: the separator, then random tokens that are not it."""
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([SEP]), torch.randint(1, 300, (n - 1,), generator=g)]) for n in lengths]


def tiny_model(window: int, separator: int | None = SEP) -> Gemma3:
    """Two layers: the first attends within a sliding window, the second globally."""
    cfg = load_config([*TINY_MODEL, "--model.vocab_size", "300", "--model.sliding_window", str(window),
                       "--model.sliding_window_pattern", "2"])
    torch.manual_seed(0)
    return Gemma3(cfg.model, document_separator=separator).eval()


def logits(model: Gemma3, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens[None])[0][0]


@pytest.mark.parametrize("window", [64, 5])
def test_a_packed_window_computes_each_document_as_if_alone(window):
    """A window of three documents gives each one's tokens the logits of that document run by itself. RoPE
    makes attention depend on distances only, so a document's later positions in the window change nothing
    but rounding. With window 5 the documents are longer than the sliding window, so both limits bind."""
    docs = documents(7, 12, 9)
    packed = torch.cat(docs)
    model = tiny_model(window)
    together = logits(model, packed)
    start = 0
    for doc in docs:
        alone = logits(model, doc)
        assert (together[start:start + len(doc)] - alone).abs().max().item() < 1e-4, start
        start += len(doc)
    unmasked = logits(tiny_model(window, separator=None), packed)
    assert (unmasked[len(docs[0]):] - together[len(docs[0]):]).abs().max().item() > 1e-2  # the mask mattered


def test_a_window_that_starts_mid_document_and_repeated_separators():
    """The tokens before the first separator are one (cut) document; a separator right after another is a
    document of one token, which attends to itself only."""
    head, tail = documents(6, 8, seed=1)
    window = torch.cat([head[1:], torch.tensor([SEP]), tail])
    model = tiny_model(4)
    together = logits(model, window)
    cut = len(head) - 1
    assert (together[:cut] - logits(model, head[1:])).abs().max().item() < 1e-4
    assert (together[cut] - logits(model, torch.tensor([SEP]))[0]).abs().max().item() < 1e-4
    assert (together[cut + 1:] - logits(model, tail)).abs().max().item() < 1e-4


def test_document_ids_start_a_document_at_each_separator():
    idx = torch.tensor([[5, 0, 3, 4, 0, 0, 7], [0, 1, 2, 3, 4, 5, 6]])
    assert document_ids(idx, SEP).tolist() == [[0, 1, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1]]


def test_gradients_do_not_cross_documents():
    """Training on a packed window: the loss of the second document's tokens has no gradient from the first's
    embeddings (what attention must not read, it cannot learn from)."""
    first, second = documents(10, 10, seed=2)
    packed = torch.cat([first, second])[None]
    model = tiny_model(64)
    model.train()
    hidden = model.embed_tokens(packed).detach().requires_grad_()
    original = model.embed_tokens.forward
    model.embed_tokens.forward = lambda idx: hidden  # the same embeddings, as a leaf whose gradient we read
    try:
        logits_, _ = model(packed)
    finally:
        model.embed_tokens.forward = original
    logits_[0, len(first):].logsumexp(-1).sum().backward()
    assert hidden.grad[0, :len(first)].abs().max().item() == 0
    assert hidden.grad[0, len(first):].abs().max().item() > 0


@pytest.mark.parametrize("window", [None, 40])
def test_flex_attention_with_the_rule_matches_the_dense_mask(window):
    """The CUDA path's block mask and the CPU path's dense mask come from the same rule and give the same
    attention (FlexAttention runs forward on the CPU too); 200 positions, not a multiple of its 128-blocks."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 200, 32), torch.randn(2, 1, 200, 32), torch.randn(2, 1, 200, 32)
    idx = torch.randint(0, 30, (2, 200))  # a separator (0) every 30 tokens or so
    rule = attention_rule(window, document_ids(idx, SEP))
    block_mask = create_block_mask(rule, 2, None, 200, 200, device="cpu")
    flex = flex_attention(q, k, v, block_mask=block_mask, scale=0.2, enable_gqa=True)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(rule, 2, 200, "cpu"), scale=0.2,
                                           enable_gqa=True)
    assert (flex - dense).abs().max().item() < 1e-5
    causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
    assert (dense - causal).abs().max().item() > 1e-2
