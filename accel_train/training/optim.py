"""The optimizers: AdamW alone, or Muon for the hidden matrices with AdamW for the rest.

AdamW decays matrices only (not norms, as the seed's did). Muon (PyTorch's `torch.optim.Muon`)
orthogonalizes each update of the attention and MLP projections; the embedding (tied to the
output head) and the norms stay with AdamW, as Muon's authors prescribe.
"""

from __future__ import annotations

import torch

from accel_train.errors import UserError


def param_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """Two groups: 2-D weights (linear layers, the embedding) decay; vectors (norm scales) do not."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float, betas: tuple[float, float],
                    fused: bool = False) -> torch.optim.AdamW:
    """AdamW over every trainable parameter (tied weights appear once in `parameters()`)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(param_groups(params, weight_decay), lr=learning_rate, betas=betas, fused=fused or None)


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The attention and MLP projections: the 2-D weights inside the decoder layers."""
    return [p for name, p in model.named_parameters()
            if name.startswith("layers.") and p.dim() == 2 and p.requires_grad]


def require_muon() -> None:
    """Refuse `optimizer: muon` on a torch older than 2.9, which has no torch.optim.Muon."""
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f"optimizer 'muon' needs torch.optim.Muon (PyTorch 2.9 or later); this is torch "
                        f"{torch.__version__}: upgrade torch or use --optimizer adamw")


def build_optimizers(model: torch.nn.Module, cfg, fused: bool = False, mixed_precision: str = "no") -> list:
    """The config's optimizers: [AdamW], or [AdamW for embedding, head and norms, Muon for the hidden matrices].

    Muon's group carries `lr_scale` (muon_lr / learning_rate), so one schedule drives both at their own peaks."""
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return [build_optimizer(model, cfg.learning_rate, cfg.weight_decay, betas, fused=fused)]
    require_muon()
    if mixed_precision == "fp16":  # Accelerate's loss scaler would update once per optimizer, unscaling twice
        raise UserError("optimizer 'muon' does not run under float16 loss scaling; use --dtype bfloat16 or float32, "
                        "or --optimizer adamw")
    muon_params = hidden_matrices(model)
    hidden = {id(p) for p in muon_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden]
    adamw = torch.optim.AdamW(param_groups(rest, cfg.weight_decay), lr=cfg.learning_rate, betas=betas,
                              fused=fused or None)
    muon_lr = cfg.muon_lr or cfg.learning_rate
    muon = torch.optim.Muon([{"params": muon_params, "lr_scale": muon_lr / cfg.learning_rate}], lr=muon_lr,
                            weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum, adjust_lr_fn=cfg.muon_adjust_lr)
    return [adamw, muon]


class Optimizers:
    """Several prepared optimizers behind one optimizer's interface: the training step steps and clears them
    as one (each has its own scheduler). Gradient clipping covers all parameters before any of them steps."""

    def __init__(self, optimizers: list):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)


def group_settings(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Every parameter group's settings (weight decay, betas, ...) without its parameters, nor its rate: that
    is its scheduler's, which sets it when it loads its step count."""
    return [{key: value for key, value in group.items() if key not in ("params", "lr")}
            for group in optimizer.param_groups]


def restore_group_settings(optimizer: torch.optim.Optimizer, settings: list[dict]) -> None:
    """Put back settings taken by `group_settings`. Loading an optimizer's state also loads the settings
    it was saved with; after a resume, this run's config must win over the checkpoint's."""
    for group, wanted in zip(optimizer.param_groups, settings, strict=True):
        group.update(wanted)
