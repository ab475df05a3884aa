"""Train with the given arguments, then write out_dir/tied_<rank>.json: whether this process's trained model
(under FSDP, sharded) still holds the embedding and the output head as one parameter."""

import json
import sys
from pathlib import Path

from accelerate import PartialState

import accel_train.training.loop as trainer
from accel_train.config import load_config

cfg = load_config(sys.argv[1:])
_, model = trainer.train(cfg)
(Path(cfg.out_dir) / f"tied_{PartialState().process_index}.json").write_text(json.dumps({
    "one_parameter": model.lm_head.weight is model.embed_tokens.weight,
    "kind": type(model.embed_tokens.weight).__name__}))
