"""The trained model in a checkpoint, for the tools that use one outside a run (sample, score, export): found from
a checkpoint folder or a run's out_dir, verified against its manifest, loaded whatever layout the run saved, with
the tokenizer its data was prepared with (checked, wherever the user points --data_dir)."""

from __future__ import annotations

from pathlib import Path

import torch

from accel_train.checkpointing.checkpoint import (MANIFEST_FILE, STATE_FILE, WEIGHTS_FILE, latest_checkpoint,
                                                  load_weights, read_trainer_state, verified_checkpoint)
from accel_train.config import TrainConfig, config_from_dict
from accel_train.data.meta import meaning_differences, read_meta
from accel_train.errors import UserError
from accel_train.models.build import build_model


def find_checkpoint(path) -> Path:
    """A checkpoint folder as given, or the newest sound checkpoint of a run's out_dir; either way one that
    matches its manifest, so damaged weights are refused rather than sampled or exported."""
    folder = Path(path)
    if any((folder / name).exists() for name in (WEIGHTS_FILE, STATE_FILE, MANIFEST_FILE)):
        return verified_checkpoint(folder, "use checkpoint")
    newest = latest_checkpoint(folder) if folder.is_dir() else None
    if newest is None:
        raise UserError(f"{folder} is neither a checkpoint folder (with {WEIGHTS_FILE}) nor an out_dir "
                        "that holds one; pass e.g. out/demo or out/demo/checkpoints/step_300")
    return newest


class TrainedModel:
    """A checkpoint's model (fp32, eval mode, on the CPU), its run's config and what its data's ids meant."""

    def __init__(self, checkpoint):
        self.folder = find_checkpoint(checkpoint)
        state = read_trainer_state(self.folder)
        self.cfg: TrainConfig = config_from_dict(state.config)
        self.model = build_model(self.cfg.model)
        load_weights(self.model, self.folder)  # any layout the run saved, lm_head re-tied; unreadable is one line
        self.model.eval()
        data = state.data  # checkpoints from before data identities record none
        self.meaning = next(iter(data["sources"].values()))["meta"] if "sources" in data else data.get("meta")

    def data_dir(self, data_dir=None) -> str:
        """The folder whose tokenizer reads this model's ids: `data_dir` as given, else the run's (data_mix's
        first folder: a mixture's folders share one tokenizer)."""
        return str(data_dir) if data_dir is not None else self.cfg.mixture().first.data_dir

    def check_tokenizer(self, data_dir) -> None:
        """Refuse, in one line saying what differs, a data folder whose tokenizer is not the one this model was
        trained with: its ids would be read as other text (mojibake, wrong scores) or lie beyond the embedding
        (an IndexError). Compared by fingerprint where both record one, else by what both record (see
        meta.meaning_differences); a checkpoint that records no data is checked against its vocabulary alone."""
        meta = read_meta(data_dir)
        differ = meaning_differences(self.meaning, meta.meaning()) if self.meaning else []
        if meta.vocab_size > self.cfg.model.vocab_size:
            differ.append(f"the model's vocab_size is {self.cfg.model.vocab_size}, the tokenizer's {meta.vocab_size}")
        if differ:
            raise UserError(f"the tokenizer of {data_dir} is not the one {self.folder} was trained with "
                            f"({'; '.join(differ)}; there is the checkpoint, here {data_dir}); pass the --data_dir "
                            f"it was trained on ({self.data_dir()}) or one prepared with its tokenizer")

    def chat_template(self, data_dir=None) -> str:
        """The chat template of `data_dir` (default: the run's folder), whose fingerprint check_tokenizer compared
        with the one this model was trained with."""
        from accel_train.data.chat import load_template

        return load_template(self.data_dir(data_dir))

    def tokenizer(self, data_dir=None):
        """The tokenizer of `data_dir` (default: the run's folder), checked against this model."""
        from accel_train.data.tokenizer import load_tokenizer

        folder = self.data_dir(data_dir)
        tokenizer = load_tokenizer(folder)  # a missing folder is named before it is compared
        self.check_tokenizer(folder)
        return tokenizer


def load_model(checkpoint) -> tuple[torch.nn.Module, TrainConfig]:
    """The trained model (fp32, eval mode, on the CPU) and the run's config from a checkpoint."""
    trained = TrainedModel(checkpoint)
    return trained.model, trained.cfg
