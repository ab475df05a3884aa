"""Our Gemma 3 computes the same function as HuggingFace's `Gemma3ForCausalLM` (no download).

The sequence is longer than the sliding window and the two RoPE bases differ, so a wrong mask,
a swapped base or a misplaced norm shows up as a logit difference far above fp32 rounding.
"""

import dataclasses

import pytest
import torch

from accel_train.model import Gemma3, ModelConfig

transformers = pytest.importorskip("transformers")  # a test extra, not a runtime dependency

CFG = ModelConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, sliding_window=7, sliding_window_pattern=2,
                  rope_local_base_freq=10_000.0, rope_theta=1_000_000.0, query_pre_attn_scalar=24.0,
                  max_position_embeddings=64)
SEQ_LEN = 40  # well past the sliding window


def hf_config(cfg: ModelConfig) -> "transformers.Gemma3TextConfig":
    layer_types = ["sliding_attention" if cfg.is_sliding(i) else "full_attention" for i in range(cfg.num_hidden_layers)]
    return transformers.Gemma3TextConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, sliding_window=cfg.sliding_window,
        layer_types=layer_types, query_pre_attn_scalar=int(cfg.query_pre_attn_scalar),
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings, hidden_activation="gelu_pytorch_tanh",
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_base_freq},
                         "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta}},
        attn_implementation="eager")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ours = Gemma3(CFG).eval()
    with torch.no_grad():  # norms start at zero; randomize everything so every weight matters
        for p in ours.parameters():
            p.normal_(0.0, 0.3 if p.dim() == 1 else 0.05)
    theirs = transformers.Gemma3ForCausalLM(hf_config(CFG)).eval()
    state = {("" if k.startswith("lm_head") else "model.") + k: v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state, strict=True)  # every weight has a counterpart by name
    idx = torch.randint(CFG.vocab_size, (2, SEQ_LEN), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return ours, theirs, idx, theirs(idx).logits


def our_logits(state: dict, cfg: ModelConfig, idx: torch.Tensor) -> torch.Tensor:
    model = Gemma3(cfg).eval()
    model.load_state_dict(state)
    with torch.no_grad():
        return model(idx)[0]


def test_logits_match_transformers(models):
    ours, _, idx, hf_logits = models
    assert ours.layers[0].self_attn.sliding and not ours.layers[1].self_attn.sliding
    with torch.no_grad():
        logits = ours(idx)[0]
    assert logits.dtype == hf_logits.dtype == torch.float32
    assert (logits - hf_logits).abs().max().item() < 1e-5


def test_logits_match_with_a_kv_cache(models):
    """Generation's cached path (a prompt, then one token at a time) computes the same logits."""
    from accel_train.model import KVCache

    ours, _, idx, hf_logits = models
    cache, chunks = KVCache(), [idx[:, :11]] + [idx[:, t:t + 1] for t in range(11, SEQ_LEN)]
    with torch.no_grad():
        logits = torch.cat([ours(chunk, cache=cache)[0] for chunk in chunks], dim=1)
    assert (logits - hf_logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("change", [{"sliding_window": SEQ_LEN},
                                    {"rope_local_base_freq": 1_000_000.0},
                                    {"rope_theta": 10_000.0}])
def test_comparison_sees_the_window_and_both_rope_bases(models, change):
    """The input exercises what it claims: without the window, or with either base changed, logits differ."""
    ours, _, idx, hf_logits = models
    logits = our_logits(ours.state_dict(), dataclasses.replace(CFG, **change), idx)
    assert (logits - hf_logits).abs().max().item() > 1e-3
