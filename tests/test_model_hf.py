"""Our Gemma 3 computes the same function as HuggingFace's `Gemma3ForCausalLM` (no download).

The sequence is longer than the sliding window and the two RoPE bases differ, so a wrong mask,
a swapped base or a misplaced norm shows up as a logit difference far above fp32 rounding.
"""

import dataclasses

import pytest
import torch

from accel_train.models.hf import to_hf
from accel_train.models.gemma3 import Gemma3, KVCache, ModelConfig

CFG = ModelConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, sliding_window=7, sliding_window_pattern=2,
                  rope_local_base_freq=10_000.0, rope_theta=1_000_000.0, query_pre_attn_scalar=24.0,
                  max_position_embeddings=64)
SEQ_LEN = 40  # well past the sliding window


@pytest.fixture(scope="module")
def models():
    """Our model with random weights (norms included), an input, and transformers' logits for it."""
    torch.manual_seed(0)
    ours = Gemma3(CFG).eval()
    with torch.no_grad():  # norms start at zero; randomize everything so every weight matters
        for p in ours.parameters():
            p.normal_(0.0, 0.3 if p.dim() == 1 else 0.05)
    theirs = to_hf(ours)  # Gemma3ForCausalLM from the equivalent config, every weight copied by name
    # What makes the config "equivalent", stated here rather than trusted to the exporter:
    assert theirs.config.layer_types == ["sliding_attention", "full_attention"] * 2
    assert theirs.config.sliding_window == CFG.sliding_window
    assert theirs.config.rope_parameters["sliding_attention"]["rope_theta"] == CFG.rope_local_base_freq
    assert theirs.config.rope_parameters["full_attention"]["rope_theta"] == CFG.rope_theta
    idx = torch.randint(CFG.vocab_size, (2, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return ours, idx, theirs(idx).logits


def our_logits(state: dict, cfg: ModelConfig, idx: torch.Tensor) -> torch.Tensor:
    model = Gemma3(cfg).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(idx)[0]


def test_logits_match_transformers(models):
    ours, idx, hf_logits = models
    assert ours.layers[0].self_attn.sliding and not ours.layers[1].self_attn.sliding
    with torch.no_grad():
        logits = ours(idx)[0]
    assert logits.dtype == hf_logits.dtype == torch.float32
    assert (logits - hf_logits).abs().max().item() < 1e-5


def test_logits_match_with_a_kv_cache(models):
    """Generation's cached path (a prompt, then one token at a time) computes the same logits."""
    ours, idx, hf_logits = models
    cache, chunks = KVCache(), [idx[:, :11]] + [idx[:, t:t + 1] for t in range(11, SEQ_LEN)]
    with torch.no_grad():
        logits = torch.cat([ours(chunk, cache=cache)[0] for chunk in chunks], dim=1)
    assert (logits - hf_logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("change", [{"sliding_window": SEQ_LEN},
                                    {"rope_local_base_freq": 1_000_000.0},
                                    {"rope_theta": 10_000.0}])
def test_comparison_sees_the_window_and_both_rope_bases(models, change):
    """The input exercises what it claims: without the window, or with either base changed, logits differ."""
    ours, idx, hf_logits = models
    logits = our_logits(ours.state_dict(), dataclasses.replace(CFG, **change), idx)
    assert (logits - hf_logits).abs().max().item() > 1e-3
