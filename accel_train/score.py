"""Score a model on multiple-choice task files: a run's checkpoint, or any HuggingFace causal LM folder.

    python -m accel_train.score --checkpoint out/demo --task story_endings
    python -m accel_train.score --checkpoint hf/demo --task my_hellaswag.jsonl --device cuda

The scorer is the one the trainer runs in its loop (`tasks`), so a run's score can be compared with a published
model's on the same file. A checkpoint is scored as the run scores it (its tokenizer, document prefix, block_size
and batch_size); a HuggingFace folder (transformers' AutoModelForCausalLM, e.g. an export of a run) with its own
tokenizer, after its BOS token (or its end-of-text where it has none), up to --block_size tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from accel_train.errors import Parser, UserError, first_line, number, run_cli
from accel_train.evaluation.multiple_choice import TaskScorer, read_tasks, task_scorer
from accel_train.checkpointing.trained_model import TrainedModel
from accel_train.training.hardware import usable_device

HF_CONFIG = "config.json"


def is_hf_folder(path: Path) -> bool:
    return (path / HF_CONFIG).is_file()


def checkpoint_scorer(path, tasks: str, batch_size: int | None, data_dir) -> tuple:
    """(model, logits function, scorer) of a run's checkpoint: its tokenizer, block_size and batch size."""
    trained = TrainedModel(path)
    model, cfg = trained.model, trained.cfg
    scorer = task_scorer(tasks, trained.tokenizer(data_dir), cfg.block_size, batch_size or cfg.batch_size)
    return model, (lambda x: model(x)[0]), scorer


def check_fits(path: Path, config, vocab_size: int, block_size: int | None) -> None:
    """Refuse a tokenizer whose ids lie beyond the model's embedding (an IndexError mid-way, or a wrong score), and
    a block_size beyond the positions the model was trained for (scored silently past them, or a huge allocation),
    as the trainer refuses them."""
    if vocab_size > config.vocab_size:
        raise UserError(f"the tokenizer in {path} has {vocab_size} tokens but the model's embedding has "
                        f"{config.vocab_size} (vocab_size in {path / HF_CONFIG}): it is not this model's tokenizer; "
                        "export the model again with the --data_dir it was trained on")
    positions = getattr(config, "max_position_embeddings", None)
    if block_size is not None and positions is not None and block_size > positions:
        raise UserError(f"--block_size {block_size} is above the {positions} positions of the model in {path} "
                        f"(max_position_embeddings); use --block_size {positions} or less")


def hf_scorer(path: Path, tasks: str, batch_size: int | None, block_size: int | None) -> tuple:
    """(model, logits function, scorer) of a HuggingFace folder, with its own tokenizer."""
    from accel_train.models.hf import transformers_module
    from accel_train.data.tokenizer import hf_tokenizer

    transformers = transformers_module()
    transformers.utils.logging.disable_progress_bar()  # stderr is for errors
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        tokenizer = hf_tokenizer(path)
        check_fits(path, config, tokenizer.vocab_size, block_size)  # before the slow load
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), config=config, local_files_only=True,
                                                                  dtype=torch.float32).eval()
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"transformers cannot load the model in {path}: {first_line(err)}") from None
    bos = tokenizer.config.get("bos_token")
    bos = bos.get("content") if isinstance(bos, dict) else bos
    bos_id = tokenizer.tokenizer.token_to_id(bos) if bos else None
    prefix = [tokenizer.eot_token if bos_id is None else bos_id]  # as lm-eval's prefix token
    block_size = block_size or model.config.max_position_embeddings
    scorer = TaskScorer(read_tasks(tasks), tokenizer.encode, prefix, block_size, batch_size or 32)
    return model, (lambda x: model(input_ids=x).logits), scorer


def score(path, tasks: str, device: str = "cpu", batch_size: int | None = None, block_size: int | None = None,
          data_dir=None) -> dict:
    """{'<task>/acc': ..., '<task>/acc_norm': ...} of the model at `path` (see the module's docstring)."""
    path = Path(path)
    read_tasks(tasks)  # a bad task file is reported before the slow load
    device = usable_device(device)
    if is_hf_folder(path):
        model, logits_of, scorer = hf_scorer(path, tasks, batch_size, block_size)
    else:
        if block_size is not None:
            raise UserError("--block_size is for HuggingFace folders; a checkpoint is scored at its run's block_size")
        model, logits_of, scorer = checkpoint_scorer(path, tasks, batch_size, data_dir)
    try:
        model.to(device)
    except RuntimeError as err:  # e.g. out of GPU memory
        raise UserError(f"cannot use --device {device}: {first_line(err)}") from None
    return scorer.score(logits_of, device)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m accel_train.score", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint folder, an out_dir (its newest), or a HuggingFace model folder")
    parser.add_argument("--task", action="append", required=True,
                        help="a task file (JSON Lines) or a shipped task's name; repeat for several")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=number(int, 1), default=None,
                        help="rows per forward pass (default: the run's batch_size; 32 for a HuggingFace folder)")
    parser.add_argument("--block_size", type=number(int, 1), default=None,
                        help="HuggingFace folder: tokens fed at most (default: its max_position_embeddings)")
    parser.add_argument("--data_dir", default=None, help="checkpoint: where meta.json names the tokenizer "
                                                         "(default: the run's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a line per task")
    args = parser.parse_args(argv)
    results = score(args.checkpoint, ",".join(args.task), args.device, args.batch_size, args.block_size,
                    args.data_dir)
    if args.json:
        print(json.dumps(results))
        return
    for name in dict.fromkeys(key.rsplit("/", 1)[0] for key in results):
        print(f"{name}: acc {results[name + '/acc']:.4f}, acc_norm {results[name + '/acc_norm']:.4f}")


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
