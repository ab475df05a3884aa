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


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Every parameter group's settings (weight decay, betas, ...) without its parameters."""
    return [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]


def restore_group_settings(optimizer: torch.optim.Optimizer, settings: list[dict]) -> None:
    """Put back settings taken by `group_settings`. Loading an optimizer's state also loads the settings
    it was saved with; after a resume, this run's config must win over the checkpoint's."""
    for group, wanted in zip(optimizer.param_groups, settings, strict=True):
        group.update(wanted)
