"""Write a checkpoint as a HuggingFace Gemma 3 folder (model, config and the run's tokenizer files).

    python -m accel_train.export --checkpoint out/demo --out hf/demo

The mapping itself, and `--init_from` the other way, live in `accel_train/models/hf.py`. A model fine-tuned on
conversations is exported with its data's chat template, and its generation config stops at the end of the
assistant's turn, so that transformers' `apply_chat_template` and `generate` answer as `sample --chat` does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from accel_train.atomic import check_out_dir, staged_folder
from accel_train.checkpointing.trained_model import TrainedModel
from accel_train.data.folder import open_split
from accel_train.errors import Parser, UserError, run_cli
from accel_train.models.hf import check_tokenizer_files, save_tokenizer, to_hf, transformers_module
from accel_train.data.chat import ChatEncoder, load_template
from accel_train.data.meta import read_meta
from accel_train.data.tokenizer import load_tokenizer


SAMPLE_TOKENS = 4096  # of the validation split, decoded to check the exported tokenizer on the data's own text


def find_tokenizer(trained: TrainedModel, data_dir):
    """The tokenizer of `data_dir` as the user gave it (a mistake there is an error), or else of the run's data
    folder, or None (with a note) where that folder or its files are gone; either way one the model was trained
    with (TrainedModel.check_tokenizer), as an export must not publish ids its embedding does not mean."""
    if data_dir is not None:
        return trained.tokenizer(data_dir)
    try:
        tokenizer = load_tokenizer(trained.data_dir())
    except UserError as err:
        print(f"note: writing no tokenizer files ({err})")
        return None
    trained.check_tokenizer(trained.data_dir())
    return tokenizer


def data_sample(tokenizer, data_dir) -> list[str]:
    """The documents at the start of the data's validation split as text (none where the split is gone)."""
    try:
        tokens = open_split(str(data_dir), "val").tokens(0, SAMPLE_TOKENS)
    except UserError:  # the check still has its fixed probe
        return []
    documents = np.split(tokens, np.flatnonzero(tokens == tokenizer.eot_token))
    special = [tokenizer.eot_token, tokenizer.bos_token]  # document marks, not text
    return [text for text in (tokenizer.decode(doc[~np.isin(doc, special)]) for doc in documents) if text]


def chat_of(tokenizer, data_dir) -> ChatEncoder | None:
    """The chat template of the data (with the tokenizer), or None for data that is not conversations."""
    if tokenizer is None or read_meta(data_dir).chat_template_fingerprint is None:
        return None
    return ChatEncoder(tokenizer, load_template(data_dir))


def export(checkpoint, out, data_dir=None) -> Path:
    """Write the HuggingFace folder `out`, new or empty (staged first, so it holds files only when complete and
    its tokenizer encodes as the data's did)."""
    out, hint = Path(out).resolve(), "choose another --out"
    check_out_dir(out, False, hint)  # before the slow load
    trained = TrainedModel(checkpoint)
    model, tokenizer = trained.model, find_tokenizer(trained, data_dir)
    chat = chat_of(tokenizer, trained.data_dir(data_dir))
    transformers_module().utils.logging.disable_progress_bar()  # stderr is for errors
    with staged_folder(out, False, hint) as tmp:
        hf = to_hf(model, tokenizer.eot_token if tokenizer else None)
        if chat is not None:  # generate stops where sample --chat does
            hf.generation_config.eos_token_id = sorted({tokenizer.eot_token, chat.end_of_turn})
        try:
            hf.save_pretrained(str(tmp))
        except SafetensorError as err:  # a failed write (disk full) of the weights
            raise OSError(str(err)) from None
        if tokenizer and save_tokenizer(tokenizer, tmp, chat and chat.template):
            check_tokenizer_files(tokenizer, tmp, data_sample(tokenizer, trained.data_dir(data_dir)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m accel_train.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder, or an out_dir (its newest)")
    parser.add_argument("--out", required=True, help="the HuggingFace folder to write (must not exist yet)")
    parser.add_argument("--data_dir", default=None, help="where meta.json names the tokenizer (default: the run's)")
    args = parser.parse_args(argv)
    print(f"wrote {export(args.checkpoint, args.out, args.data_dir)}")


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
