"""The one place a model is built from its shape: every caller (training, the micro-batch search, the benchmark,
FLOPs counting, HuggingFace conversion, a checkpoint's reader) goes through `build_model`, so a new model family
is chosen here."""

from __future__ import annotations

from torch import nn

from accel_train.models.gemma3 import Gemma3, ModelConfig


def build_model(shape: ModelConfig, *, fused_loss: bool = True, checkpoint_layers: bool = False,
                document_separator: int | None = None, masked_loss: bool = False) -> nn.Module:
    """A freshly initialized model of `shape` (on torch's current default device); the switches are the
    run's: the fused loss, per-layer recomputation, document masking at `document_separator`, and a loss over
    the targets that are trained on (`masked_loss`)."""
    return Gemma3(shape, fused_loss=fused_loss, checkpoint_layers=checkpoint_layers,
                  document_separator=document_separator, masked_loss=masked_loss)


def training_model(cfg, document_separator: int | None, masked_loss: bool = False) -> nn.Module:
    """The model a run of `cfg` (a TrainConfig) trains, with its speed switches."""
    return build_model(cfg.model, fused_loss=cfg.fused_loss, checkpoint_layers=cfg.checkpoint_layers,
                       document_separator=document_separator, masked_loss=masked_loss)
