"""What a resumed run may change: nothing that alters the model or the data it is shown.

The model's shape must match the checkpoint's weights, and the optimizer its optimizer state (AdamW's
and Muon's differ). The data stream must continue as it was: global batch b is drawn from (seed, b)
alone and an optimizer step takes gradient_accumulation_steps x processes of them, so processes may be
traded for accumulation and micro_batch may regroup a step's sequences, but batch_size, block_size, seed
and their product may not change.
"""

from __future__ import annotations

from pathlib import Path

from accel_train.config import TrainConfig
from accel_train.errors import UserError


def check_resumable(folder: Path, state: dict, cfg: TrainConfig, processes: int) -> None:
    """Raise a UserError naming what to fix where resuming `folder` (its trainer `state`) with `cfg` on
    `processes` processes would not continue the same run."""
    saved, wanted = state["config"]["model"], cfg.to_dict()["model"]
    changed = [f"model.{k} is {saved.get(k)} there, {v} here" for k, v in wanted.items() if saved.get(k) != v]
    if changed:
        raise UserError(f"the config's model shape differs from the checkpoint {folder} "
                        f"({'; '.join(changed)}); resume with the checkpoint's model settings or start a new out_dir")
    saved_optimizer = state["config"].get("optimizer", "adamw")  # checkpoints from before Muon hold AdamW's state
    if saved_optimizer != cfg.optimizer:
        raise UserError(f"the checkpoint {folder} holds the state of optimizer {saved_optimizer}, this run asks for "
                        f"{cfg.optimizer}; resume with --optimizer {saved_optimizer} or start a new out_dir")
    _check_data_stream(folder, state, cfg, processes)


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _check_data_stream(folder: Path, state: dict, cfg: TrainConfig, processes: int) -> None:
    """Refuse to resume `folder` where the run would draw other data: global batches come from (seed, b)
    and an optimizer step takes accumulation x processes of them, so only micro_batch may regroup them.
    Checkpoints without a process count come from this project's single-process days."""
    saved, saved_processes = state["config"], state.get("processes", 1)
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
