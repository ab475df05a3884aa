"""What a resumed run may change: nothing that alters the model or the data it is shown.

The model's shape must match the checkpoint's weights, and the optimizer its optimizer state (AdamW's
and Muon's differ). The data stream must continue as it was: global batch b is drawn from (seed, b)
alone and an optimizer step takes gradient_accumulation_steps x processes of them, so processes may be
traded for accumulation and micro_batch may regroup a step's sequences, but batch_size, block_size, seed
and their product may not change. Nor may the data itself: a checkpoint records what identifies it (see
`data_identity`), and a resume on other data is refused unless accept_data_change says it is meant.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from accel_train.config import TrainConfig
from accel_train.data.tokens import SPLIT_FILES, open_split
from accel_train.errors import UserError

SAMPLED_CHUNKS = 16  # chunks of each split hashed, spread evenly from its first byte to its last
CHUNK_BYTES = 4096
META_KEYS = ("dtype", "vocab_size", "tokenizer", "eot_token")  # what meta.json says the token ids mean


def check_resumable(folder: Path, state: dict, cfg: TrainConfig, processes: int) -> None:
    """Raise a UserError naming what to fix where resuming `folder` (its trainer `state`) with `cfg` on
    `processes` processes would not continue the same run."""
    saved, wanted = state["config"]["model"], cfg.to_dict()["model"]
    changed = [f"model.{k} is {saved.get(k)} there, {v} here" for k, v in wanted.items() if saved.get(k) != v]
    if changed:
        raise UserError(f"the config's model shape differs from the checkpoint {folder} "
                        f"({'; '.join(changed)}); resume with the checkpoint's model settings or start a new out_dir")
    saved_optimizer = state["config"]["optimizer"]
    if saved_optimizer != cfg.optimizer:
        raise UserError(f"the checkpoint {folder} holds the state of optimizer {saved_optimizer}, this run asks for "
                        f"{cfg.optimizer}; resume with --optimizer {saved_optimizer} or start a new out_dir")
    _check_data_stream(folder, state, cfg, processes)


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _check_data_stream(folder: Path, state: dict, cfg: TrainConfig, processes: int) -> None:
    """Refuse to resume `folder` where the run would draw other data: global batches come from (seed, b)
    and an optimizer step takes accumulation x processes of them, so only micro_batch may regroup them."""
    saved, saved_processes = state["config"], state["processes"]
    changed, fixes = [], []
    for k in ("batch_size", "block_size", "seed"):
        if saved[k] != getattr(cfg, k):
            changed.append(f"{k} is {saved[k]} there, {getattr(cfg, k)} here")
            fixes.append(f"--{k} {saved[k]}")
    saved_batches, accum = saved["gradient_accumulation_steps"] * saved_processes, cfg.gradient_accumulation_steps
    if saved_batches != accum * processes:
        changed.append(f"gradient_accumulation_steps x processes is {saved['gradient_accumulation_steps']} x "
                       f"{_processes(saved_processes)} there, {accum} x {_processes(processes)} here")
        fixes.append(f"--gradient_accumulation_steps {saved_batches // processes} with {_processes(processes)}"
                     if saved_batches % processes == 0 else
                     f"--gradient_accumulation_steps {saved['gradient_accumulation_steps']} with "
                     f"{_processes(saved_processes)}")
    if changed:
        raise UserError(f"resuming {folder} would change its data stream ({'; '.join(changed)}): it took "
                        f"{saved_batches * saved['batch_size']} sequences of {saved['block_size']} tokens per "
                        f"optimizer step, this run would take {accum * processes * cfg.batch_size} sequences of "
                        f"{cfg.block_size} tokens; use {' '.join(fixes)}, or start a new out_dir")


def data_identity(data_dir, meta: dict) -> dict:
    """What identifies the data in `data_dir`, and not where it lies: each split's token count and a hash of
    a few chunks at fixed places in it (a whole-file hash would read terabytes at every start), and what
    meta.json says the ids mean. `meta` is the folder's checked meta.json."""
    identity = {"meta": {key: meta.get(key) for key in META_KEYS}}
    for split in SPLIT_FILES:
        tokens = open_split(str(data_dir), split)
        identity[split] = {"tokens": tokens.num_tokens, "sampled_sha256": _sampled_sha256(tokens.path)}
    return identity


def _sampled_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        last_start = max(f.seek(0, 2) - CHUNK_BYTES, 0)
        for i in range(SAMPLED_CHUNKS):
            f.seek(last_start * i // (SAMPLED_CHUNKS - 1))
            digest.update(f.read(CHUNK_BYTES))
    return digest.hexdigest()


def check_same_data(folder: Path, state: dict, identity: dict, cfg: TrainConfig) -> None:
    """Refuse to resume `folder` (its trainer `state`) on data other than the data it was trained on: the data
    stream's positions would point into other text. accept_data_change continues on purpose."""
    changed = _differences(state["data"], identity)
    if not changed:
        return
    if cfg.accept_data_change:
        print(f"note: the data in {cfg.data_dir} is not what {folder} was trained on ({'; '.join(changed)}); "
              "continuing on it, as accept_data_change asks")
        return
    raise UserError(f"the data in {cfg.data_dir} is not what {folder} was trained on ({'; '.join(changed)}), so the "
                    "resumed data stream would point into other text; point --data_dir at that data (it was in "
                    f"{state['config']['data_dir']}), set --accept_data_change true to continue on this data on "
                    "purpose, or start a new out_dir")


def _differences(saved: dict, identity: dict) -> list[str]:
    was_meta = saved.get("meta", {})
    changed = [f"meta.json's {key} is {was_meta.get(key)} there, {value} here"
               for key, value in identity["meta"].items() if was_meta.get(key) != value]
    for split in SPLIT_FILES:
        was, now = saved.get(split, {}), identity[split]
        if was.get("tokens") != now["tokens"]:
            changed.append(f"{split}: {was.get('tokens')} tokens there, {now['tokens']} here")
        elif was.get("sampled_sha256") != now["sampled_sha256"]:
            changed.append(f"{split}: as many tokens, but other ones")
    return changed
