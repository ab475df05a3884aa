"""AdamW with weight decay on matrices only (not on norms, as the seed's did)."""

from __future__ import annotations

import torch


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: 2-D weights (linear layers, the embedding) decay; vectors (norm scales) do not."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weights appear once
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float, betas: tuple[float, float],
                    fused: bool = False) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=learning_rate, betas=betas, fused=fused or None)
