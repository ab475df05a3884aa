"""What a resumed run may change: nothing that alters the model or the data it is shown.

The model's shape must match the checkpoint's weights, and the optimizer its optimizer state (AdamW's
and Muon's differ). The data stream must continue as it was: global batch b is drawn from (seed, b)
alone and an optimizer step takes gradient_accumulation_steps x processes of them, so processes may be
traded for accumulation and micro_batch may regroup a step's sequences, but batch_size, block_size, seed
and their product may not change. Nor may the data itself: a checkpoint records what identifies it (see
data.folder.DataFolder.identity), and a resume on other data is refused unless accept_data_change says it is
meant.
"""

from __future__ import annotations

from pathlib import Path

from accel_train.checkpointing.trainer_state import TrainerState
from accel_train.config import TrainConfig
from accel_train.data.meta import SPLITS, meaning_differences
from accel_train.data.mixture import Mixture, setting_of
from accel_train.errors import UserError


def check_resumable(folder: Path, state: TrainerState, cfg: TrainConfig, mixture: Mixture, processes: int) -> None:
    """Raise a UserError naming what to fix where resuming `folder` (its trainer `state`) with `cfg` (training on
    `mixture`) on `processes` processes would not continue the same run."""
    saved, wanted = state.config["model"], cfg.to_dict()["model"]
    changed = [f"model.{k} is {saved.get(k)} there, {v} here" for k, v in wanted.items() if saved.get(k) != v]
    if changed:
        raise UserError(f"the config's model shape differs from the checkpoint {folder} "
                        f"({'; '.join(changed)}); resume with the checkpoint's model settings or start a new out_dir")
    saved_optimizer = state.config["optimizer"]
    if saved_optimizer != cfg.optimizer:
        raise UserError(f"the checkpoint {folder} holds the state of optimizer {saved_optimizer}, this run asks for "
                        f"{cfg.optimizer}; resume with --optimizer {saved_optimizer} or start a new out_dir")
    _check_data_stream(folder, state, cfg, processes)
    _check_window_stream(folder, state, cfg, mixture)


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _check_data_stream(folder: Path, state: TrainerState, cfg: TrainConfig, processes: int) -> None:
    """Refuse to resume `folder` where the run would draw other data: global batches come from (seed, b)
    and an optimizer step takes accumulation x processes of them, so only micro_batch may regroup them."""
    saved, saved_processes = state.config, state.processes
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


def _check_window_stream(folder: Path, state: TrainerState, cfg: TrainConfig, mixture: Mixture) -> None:
    """Refuse to resume `folder` with other windows or another order of them, or to turn one data folder into a
    mixture (or back): the stream would not continue where it stopped. Checkpoints from before these keys drew
    random windows anywhere from one folder."""
    saved = state.config
    was = {"sampling": saved.get("sampling", "random"), "window_start": saved.get("window_start", "any")}
    changed = [f"{key} is {value} there, {getattr(cfg, key)} here" for key, value in was.items()
               if value != getattr(cfg, key)]
    was_setting = setting_of(saved)
    if was_setting != mixture.setting:
        changed.append(f"it trained on {was_setting}, this run on {mixture.setting}")
    if changed:
        fixes = " ".join(f"--{key} {value}" for key, value in was.items() if value != getattr(cfg, key))
        raise UserError(f"resuming {folder} would change its data stream ({'; '.join(changed)}); resume with "
                        f"{fixes or 'the data settings it was trained with'}, or start a new out_dir")


def check_same_data(folder: Path, state: TrainerState, mixture: Mixture, identity: dict,
                    accept_data_change: bool) -> None:
    """Refuse to resume `folder` (its trainer `state`) on `mixture`, whose data is `identity` (Mixture.identity),
    where that is other than the data it was trained on: the data stream's positions would point into other text.
    accept_data_change continues on purpose."""
    check_no_renamed_source(folder, state, identity)
    changed = _differences(state.data, identity)
    if not changed:
        return
    where = mixture.described
    if accept_data_change:
        print(f"note: the data in {where} is not what {folder} was trained on ({'; '.join(changed)}); "
              "continuing on it, as accept_data_change asks")
        return
    raise UserError(f"the data in {where} is not what {folder} was trained on ({'; '.join(changed)}), so the "
                    f"resumed data stream would point into other text; point {mixture.option} at that data (it was "
                    f"{state.config.get(mixture.setting)}), set --accept_data_change true to continue on this "
                    "data on purpose, or start a new out_dir")


def _differences(saved: dict, identity: dict) -> list[str]:
    """What differs between the saved identity and this run's: of the folder, or of each source that both
    mixtures hold (a source added on resume starts from its first window; one dropped keeps its count)."""
    if "sources" not in identity:
        return _folder_differences(saved, identity)
    was = saved.get("sources", {})
    return [f"{name}: {difference}" for name, now in identity["sources"].items() if name in was
            for difference in _folder_differences(was[name], now)]


def check_no_renamed_source(folder: Path, state: TrainerState, identity: dict) -> None:
    """Refuse a mixture source the checkpoint knew under another name: a source is its folder's name, so a renamed
    folder would start its data over from its first window. (A folder moved elsewhere under its name is the same
    source.) Where the checkpoint's source is still in the mixture, the new one is another copy: allowed."""
    was, now = state.data.get("sources", {}), identity.get("sources", {})
    for name, current in now.items():
        if name in was:
            continue
        for old_name, old in was.items():
            if old_name not in now and not _folder_differences(old, current):
                raise UserError(f"data_mix's source {name} holds the data that {folder} trained on as source "
                                f"{old_name} (its folder was named {old_name}); a renamed folder is a new source "
                                f"whose windows start over: give the folder its name {old_name} again, or start a "
                                "new out_dir")


def _folder_differences(saved: dict, identity: dict) -> list[str]:
    was_meta, now_meta = saved.get("meta", {}), identity["meta"]
    changed = [f"meta.json's {difference}" for difference in meaning_differences(was_meta, now_meta)]
    if was_meta.get("dtype") != now_meta["dtype"]:
        changed.append(f"meta.json's dtype is {was_meta.get('dtype')} there, {now_meta['dtype']} here")
    for split in SPLITS:
        was, now = saved.get(split, {}), identity[split]
        if was.get("tokens") != now["tokens"]:
            changed.append(f"{split}: {was.get('tokens')} tokens there, {now['tokens']} here")
        elif was.get("sampled_sha256") != now["sampled_sha256"]:
            changed.append(f"{split}: as many tokens, but other ones")
    return changed
