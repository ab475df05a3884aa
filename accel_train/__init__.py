"""accel_train: pretrain small language models from scratch with HuggingFace Accelerate.

The public names load on first use, so tools that need no torch (data preparation, plots)
start without importing it.
"""

import importlib

_EXPORTS = {
    "Gemma3": "accel_train.models.gemma3",
    "ModelConfig": "accel_train.models.gemma3",
    "TrainConfig": "accel_train.config",
    "load_config": "accel_train.config",
    "get_batch": "accel_train.data.tokens",
    "estimate_loss": "accel_train.evaluation.validation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'accel_train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
