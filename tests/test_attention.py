"""Attention kernels: the sliding-window FlexAttention path computes what the dense mask does, and the
compiled training forward is one graph (a graph break splits it and costs speed on a GPU)."""

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F

from accel_train.config import load_config
from accel_train.models.gemma3 import Gemma3, sliding_window_flex, sliding_window_mask
from helpers import TINY_MODEL

WINDOW = 48


def dense_sliding_window(q, k, v, scale):
    T = q.shape[2]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(T, T, WINDOW, q.device),
                                          scale=scale, enable_gqa=True)


@pytest.mark.parametrize("compiled", [False, True])
def test_flex_sliding_window_matches_the_dense_mask(compiled):
    """4 query heads on 1 key-value head, a block that is no multiple of FlexAttention's 128-token blocks."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 200, 32), torch.randn(2, 1, 200, 32), torch.randn(2, 1, 200, 32)
    attend = torch.compile(sliding_window_flex, fullgraph=True) if compiled else sliding_window_flex
    out = attend(q, k, v, WINDOW, 0.2)  # no gradient: FlexAttention has no CPU backward
    expected = dense_sliding_window(q, k, v, 0.2)
    assert (out - expected).abs().max().item() < 1e-5
    full_causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2, enable_gqa=True)
    assert (out - full_causal)[:, :, WINDOW:].abs().max().item() > 1e-2  # past the window, the window matters


@pytest.mark.parametrize("block_size", [32, 96])
@pytest.mark.parametrize("checkpoint_layers", [False, True])
def test_training_forward_compiles_to_one_graph(block_size, checkpoint_layers):
    """Within and beyond the sliding window, with and without recomputed layers, under bf16 autocast."""
    cfg = load_config([*TINY_MODEL, "--model.num_hidden_layers", "3", "--model.sliding_window_pattern", "3"])
    model = Gemma3(cfg.model, checkpoint_layers=checkpoint_layers)
    idx = torch.randint(cfg.model.vocab_size, (2, block_size + 1))
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(idx[:, :-1], idx[:, 1:])
    assert explanation.graph_break_count == 0, [str(reason.reason) for reason in explanation.break_reasons]
    assert explanation.graph_count == 1
