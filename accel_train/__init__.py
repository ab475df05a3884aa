"""accel_train: pretrain small language models from scratch with HuggingFace Accelerate."""

from accel_train.config import TrainConfig, load_config
from accel_train.data import get_batch
from accel_train.evaluate import estimate_loss
from accel_train.model import Gemma3, ModelConfig

__all__ = ["Gemma3", "ModelConfig", "TrainConfig", "estimate_loss", "get_batch", "load_config"]
