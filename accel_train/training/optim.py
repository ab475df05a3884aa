"""The optimizers: AdamW alone, or Muon for the hidden matrices with AdamW for the rest.

AdamW decays matrices only (not norms, as the seed's did). Muon (PyTorch's `torch.optim.Muon`)
orthogonalizes each update of the attention and MLP projections; the embedding (tied to the
output head) and the norms stay with AdamW, as Muon's authors prescribe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from accel_train.errors import UserError


MUON_ADJUST_LR = ("match_rms_adamw", "original")  # torch.optim.Muon's adjust_lr_fn choices


@dataclass(frozen=True)
class OptimizerHyperparameters:
    """What the optimizers are made of: which (a key of OPTIMIZERS), the numbers every one reads (the rate is the
    peak the schedule scales), and `own`: the values of the config keys that only the chosen one reads (its
    entry's `keys`)."""
    name: str
    learning_rate: float
    weight_decay: float
    betas: tuple[float, float]
    own: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cfg) -> OptimizerHyperparameters:
        """The optimizers a run's config asks for."""
        return cls(cfg.optimizer, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                   {key: getattr(cfg, key) for key in OPTIMIZERS[cfg.optimizer].keys})


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


def adamw_alone(model: torch.nn.Module, s: OptimizerHyperparameters, fused: bool, mixed_precision: str) -> list:
    return [build_optimizer(model, s.learning_rate, s.weight_decay, s.betas, fused=fused)]


def muon_and_adamw(model: torch.nn.Module, s: OptimizerHyperparameters, fused: bool, mixed_precision: str) -> list:
    """AdamW for embedding, head and norms, Muon for the hidden matrices. Muon's group carries `lr_scale`
    (muon_lr / learning_rate), so one schedule drives both at their own peaks."""
    if mixed_precision == "fp16":  # Accelerate's loss scaler would update once per optimizer, unscaling twice
        raise UserError("optimizer 'muon' does not run under float16 loss scaling; use --dtype bfloat16 or float32, "
                        "or --optimizer adamw")
    muon_params = hidden_matrices(model)
    hidden = {id(p) for p in muon_params}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in hidden]
    adamw = torch.optim.AdamW(param_groups(rest, s.weight_decay), lr=s.learning_rate, betas=s.betas,
                              fused=fused or None)
    muon_lr = s.own["muon_lr"] or s.learning_rate
    muon = torch.optim.Muon([{"params": muon_params, "lr_scale": muon_lr / s.learning_rate}], lr=muon_lr,
                            weight_decay=s.weight_decay, momentum=s.own["muon_momentum"],
                            adjust_lr_fn=s.own["muon_adjust_lr"])
    return [adamw, muon]


def always_available() -> None:
    pass


@dataclass(frozen=True)
class OptimizerChoice:
    """One entry of OPTIMIZERS: everything the rest of the trainer asks about an optimizer."""
    build: Callable  # (model, OptimizerHyperparameters, fused AdamW, Accelerate's mixed precision) -> optimizers,
    # each stepped as one (Optimizers) and given its own scheduler
    keys: tuple[str, ...] = ()  # the config keys that only it reads (OptimizerHyperparameters.own)
    require: Callable[[], None] = always_available  # a UserError where this torch lacks it
    not_under_fsdp: str | None = None  # why it cannot run under FSDP, or None where it can


OPTIMIZERS = {  # the config's `optimizer` choices; a new optimizer is one entry and its config keys
    "adamw": OptimizerChoice(adamw_alone),
    "muon": OptimizerChoice(muon_and_adamw, keys=("muon_lr", "muon_momentum", "muon_adjust_lr"), require=require_muon,
                            not_under_fsdp="Muon runs beside AdamW, and Accelerate checkpoints only one optimizer per "
                                           "model under FSDP; use --optimizer adamw, or Muon with DDP (--multi_gpu)"),
}


def build_optimizers(model: torch.nn.Module, s: OptimizerHyperparameters, fused: bool = False,
                     mixed_precision: str = "no") -> list:
    """The optimizers `s` names (see OPTIMIZERS), over every trainable parameter of `model`."""
    choice = OPTIMIZERS[s.name]
    choice.require()
    return choice.build(model, s, fused, mixed_precision)


def check_distributed(name: str, distributed_type) -> None:
    """Refuse, once the Accelerator is built, an optimizer its distributed type cannot run."""
    reason = OPTIMIZERS[name].not_under_fsdp
    if distributed_type == "FSDP" and reason is not None:
        raise UserError(f"optimizer '{name}' does not run under FSDP: {reason}")


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


def group_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """Every parameter group's hyperparameters (weight decay, betas, ...) without its parameters, nor its rate:
    that is its scheduler's, which sets it when it loads its step count."""
    return [{key: value for key, value in group.items() if key not in ("params", "lr")}
            for group in optimizer.param_groups]


def restore_group_hyperparameters(optimizer: torch.optim.Optimizer, hyperparameters: list[dict]) -> None:
    """Put back hyperparameters taken by `group_hyperparameters`. Loading an optimizer's state also loads the
    hyperparameters it was saved with; after a resume, this run's config must win over the checkpoint's."""
    for group, wanted in zip(optimizer.param_groups, hyperparameters, strict=True):
        group.update(wanted)
