"""The trained model in a checkpoint, for the tools that use one outside a run (sample, export): found from a
checkpoint folder or a run's out_dir, verified against its manifest, loaded whatever layout the run saved."""

from __future__ import annotations

from pathlib import Path

from accel_train.checkpointing.checkpoint import (MANIFEST_FILE, STATE_FILE, WEIGHTS_FILE, latest_checkpoint,
                                                  load_weights, read_trainer_state, verified)
from accel_train.config import TrainConfig, config_from_dict
from accel_train.errors import UserError
from accel_train.models.gemma3 import Gemma3


def find_checkpoint(path) -> Path:
    """A checkpoint folder as given, or the newest sound checkpoint of a run's out_dir; either way one that
    matches its manifest, so damaged weights are refused rather than sampled or exported."""
    folder = Path(path)
    if any((folder / name).exists() for name in (WEIGHTS_FILE, STATE_FILE, MANIFEST_FILE)):
        return verified(folder, "use checkpoint")
    newest = latest_checkpoint(folder) if folder.is_dir() else None
    if newest is None:
        raise UserError(f"{folder} is neither a checkpoint folder (with {WEIGHTS_FILE}) nor an out_dir "
                        "that holds one; pass e.g. out/demo or out/demo/checkpoints/step_300")
    return newest


def load_model(checkpoint) -> tuple[Gemma3, TrainConfig]:
    """The trained model (fp32, eval mode, on the CPU) and the run's config from a checkpoint."""
    folder = find_checkpoint(checkpoint)
    cfg = config_from_dict(read_trainer_state(folder)["config"])
    model = Gemma3(cfg.model)
    load_weights(model, folder)  # any layout the run saved, lm_head re-tied; anything unreadable is one line
    return model.eval(), cfg
