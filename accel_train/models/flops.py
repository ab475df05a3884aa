"""Model FLOPs utilization: FLOPs per token from the model's shape, over the GPU's peak.

PaLM's formula (Chowdhery et al. 2022, appendix B): a token costs 6N FLOPs for the weights
(forward 2N, backward 4N) plus 12 * layers * heads * head_dim * block_size for attention
scores. N counts every parameter once; the tied embedding counts because it is also the
output projection. Only work the model must do is counted, so MFU compares fairly across
implementations (recomputation and padding do not raise it).
"""

from __future__ import annotations

import torch

from accel_train.models.build import build_model
from accel_train.models.gemma3 import ModelConfig

# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, matched in order against the
# device name; first match wins, so the more specific names come first.
PEAK_TFLOPS = (
    ("B200", 2250.0),
    ("H200", 989.0),  # also GH200
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("V100", 125.0),  # fp16: no bf16 on this card
    ("T4", 65.0),  # fp16
)


def flops_per_token(cfg: ModelConfig, block_size: int) -> float:
    """Training FLOPs (forward and backward) per token, by PaLM's formula."""
    with torch.device("meta"):
        n = build_model(cfg).num_params(non_embedding=False)
    return 6.0 * n + 12.0 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * block_size


def peak_tflops(device: torch.device, override: float = 0.0) -> float | None:
    """The device's bf16 peak in TFLOP/s: `override` if set, else the table's; None when unknown (CPUs)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float, devices: int = 1) -> float:
    """Fraction of `devices` GPUs' peak that `tokens_per_s` (over all of them) amounts to."""
    return tokens_per_s * flops_per_tok / (peak * 1e12 * devices)
