"""Checkpoints under `out_dir/checkpoints/`: written atomically, verified, pruned, found again for resume.

`accelerator.save_state` writes the weights (model.safetensors; under FSDP Accelerate's own files, see
`load_weights`), optimizer, schedule, loss scaler and the RNG state of every process; `trainer_state.json`
adds the step, counters, data position, best validation loss, tracker run id and config. A checkpoint is
written to a hidden temporary folder, its files fsynced and listed with sizes and sha256 in `manifest.json`,
and only then renamed into place, so a crash or a full disk mid-save never leaves a half checkpoint that
`--resume auto` would pick. Every reader verifies a checkpoint against its manifest first. `best/` is a
verified copy of the checkpoint with the lowest validation loss, so neither pruning nor damage to a
`step_<N>/` folder can reach it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors

from accel_train.atomic import fsync, install_folder, remove_folder
from accel_train.checkpointing.trainer_state import STATE_FILE, TrainerState, check_format, field_problems
from accel_train.errors import UserError
from accel_train.numerals import whole_number

T = TypeVar("T")

class _TiedHeadNote(logging.Filter):
    """Accelerate warns at every save that it left the shared tensor lm_head.weight out of model.safetensors.
    It is the embedding's tied copy, which every reader re-ties, so the warning only alarms: drop that one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor {'lm_head.weight'}" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedHeadNote())

WEIGHTS_FILE = "model.safetensors"
FSDP_MODEL_NAME = "pytorch_model_fsdp"  # accelerate.utils.constants.FSDP_MODEL_NAME (importing accelerate is slow)
FSDP_FULL_WEIGHTS = f"{FSDP_MODEL_NAME}.bin"  # FSDP, FULL_STATE_DICT: the whole model, gathered by rank 0
FSDP_SHARDED_WEIGHTS = f"{FSDP_MODEL_NAME}_0"  # FSDP, SHARDED_STATE_DICT: a torch.distributed.checkpoint folder
MANIFEST_FILE = "manifest.json"
PREFIX = "step_"
BEST = "best"
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)  # what torch.save and safetensors raise on a failed write


def checkpoints_root(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record size and sha256 of every file, fsyncing each, then the manifest itself."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        fsync(path)
        files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = folder / MANIFEST_FILE
    manifest.write_text(json.dumps({"files": files}, indent=1))
    fsync(manifest)


def verify(folder: Path, checksums: bool = True) -> str | None:
    """None if the checkpoint matches its manifest, else why not; `checksums=False` checks sizes only (cheap)."""
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
        entries = [(name, entry["bytes"], entry["sha256"]) for name, entry in files.items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "no readable manifest"
    for name in (STATE_FILE, WEIGHTS_FILE, FSDP_FULL_WEIGHTS, f"{FSDP_SHARDED_WEIGHTS}/.metadata"):
        # what readers open by name must not escape the check
        if name not in files and (folder / name).exists():
            return f"{name} is not in the manifest"
    for name, size, sha256 in entries:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
        if checksums and _sha256(path) != sha256:
            return f"{name} does not match its checksum"
    return None


def verified_checkpoint(folder: Path, use: str) -> Path:
    """`folder` if it is a checkpoint that matches its manifest, else a UserError: 'cannot {use} {folder}: why'."""
    problem = verify(folder) if folder.is_dir() else "no such folder"
    if problem:
        raise UserError(f"cannot {use} {folder}: {problem}")
    return folder


def _install(tmp: Path, final: Path) -> None:
    """Rename a complete folder into place. A folder already there (an earlier run's checkpoint of the
    same step, or an older best/) is replaced; one that fails verification is kept, renamed, for inspection."""
    if final.exists():
        if verify(final) is None:
            remove_folder(final)
        else:
            kept = final.with_name(f"{final.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(final, kept)
            warnings.warn(f"{final} failed verification; kept it as {kept}", stacklevel=3)
    install_folder(tmp, final)


def save_checkpoint(accelerator, out_dir, step: int, trainer_state: TrainerState, any_process) -> Path:
    """Save everything needed to continue at `step` as `step_<step>/`; every process must call this.

    `any_process(flag)` must return True on every process when `flag` is True on any: a write that fails on
    one process (a full disk) makes all of them raise a UserError, after the partial folder is
    removed; earlier checkpoints are untouched.
    """
    root = checkpoints_root(out_dir)
    final, tmp = root / f"{PREFIX}{step}", root / f".tmp_{PREFIX}{step}"

    def write(save) -> None:
        """Run this process's part of the save; the agreement after it is also the barrier."""
        problem = None
        try:
            save()
        except WRITE_ERRORS as err:
            problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        if any_process(problem is not None):
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"could not write checkpoint {final}: {problem or 'a write failed on another process'} "
                            "(disk full?); the earlier checkpoints are intact")

    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-save
    accelerator.wait_for_everyone()
    write(lambda: accelerator.save_state(str(tmp)))  # every process writes its own RNG state
    write(lambda: _finish_save(tmp, trainer_state) if accelerator.is_main_process else None)
    if accelerator.is_main_process:
        _install(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _finish_save(tmp: Path, trainer_state: TrainerState) -> None:
    (tmp / STATE_FILE).write_text(json.dumps(trainer_state.to_json(), indent=1))
    write_manifest(tmp)


def update_best(out_dir, folder: Path, val_loss: float | None) -> bool:
    """Make `best/` a copy of `folder` if its validation loss beats best/'s; True if it did.

    A copy, not hard links: damage to a step folder in place must not reach best/, at the cost of one
    checkpoint's disk space. The copy is verified before it replaces best/; one that fails (or a full
    disk) leaves best/ as it was, with a warning: training goes on.
    """
    best = checkpoints_root(out_dir) / BEST
    if val_loss is None:
        return False
    if best.is_dir():
        try:
            best_loss = read_trainer_state(best).val_loss
        except UserError:
            best_loss = None  # unreadable: replace it
        if best_loss is not None and best_loss <= val_loss:
            return False
    tmp = best.with_name(f".tmp_{BEST}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(folder, tmp, copy_function=_copy_synced)
        problem = verify(tmp)
    except OSError as err:
        problem = err.strerror or str(err)
    if problem:
        shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(f"best/ not updated: the copy of {folder} failed ({problem}); best/ is as it was", stacklevel=2)
        return False
    _install(tmp, best)
    return True


def _copy_synced(src, dst) -> None:
    shutil.copy2(src, dst)
    fsync(Path(dst))


def prune(out_dir, keep_last: int, newest: Path) -> list[Path]:
    """Delete old checkpoints, keeping the `keep_last` newest sound ones up to `newest` (just written).

    Sound means the files have the sizes the manifest says; an unsound one is neither counted nor
    deleted (it is left for inspection), so the only good checkpoint is never deleted. Checkpoints
    newer than `newest` (skipped as broken by `--resume auto`) are left alone; so is `best/`.
    `keep_last` 0 keeps everything. Returns the deleted folders.
    """
    remove_leftovers(out_dir)
    if keep_last < 1:
        return []
    kept, deleted = 0, []
    for folder in reversed(list_checkpoints(out_dir)):
        if step_of(folder) > step_of(newest):
            continue
        if kept < keep_last:
            kept += verify(folder, checksums=False) is None
            continue
        remove_folder(folder)
        deleted.append(folder)
    return deleted


def remove_leftovers(out_dir) -> None:
    """Delete the temporary folders of saves and deletions that a killed run left half done."""
    root = checkpoints_root(out_dir)
    for stale in [*root.glob(".tmp_*"), *root.glob(".deleting_*")]:
        shutil.rmtree(stale, ignore_errors=True)


def finish_bookkeeping(out_dir, keep_last: int, newest: Path) -> None:
    """Do for `newest` what a run killed right after saving it may not have done: update best/, prune, clean up.

    Runs when a run resumes from `newest`, so that a kill between a save and its bookkeeping leaves
    nothing behind once the next run starts (a finished run resumed has no later save to do it)."""
    if newest.resolve() in [folder.resolve() for folder in list_checkpoints(out_dir)]:
        update_best(out_dir, newest, read_trainer_state(newest).val_loss)
        prune(out_dir, keep_last, newest)  # removes the leftovers too
    else:  # best/, or a checkpoint elsewhere: the run's next save prunes
        remove_leftovers(out_dir)


def step_of(folder: Path) -> int | None:
    """The step N of a folder named step_<N>, None for any other name."""
    return whole_number(folder.name[len(PREFIX):]) if folder.name.startswith(PREFIX) else None


def list_checkpoints(out_dir) -> list[Path]:
    """Checkpoint folders `step_<N>`, oldest first (temporary folders and best/ excluded)."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def latest_checkpoint(out_dir) -> Path | None:
    """The newest checkpoint that passes verification, None where out_dir has none at all. Broken ones are
    skipped, with a warning where a sound one is found, and never deleted; only broken ones is a UserError."""
    broken = []
    for folder in reversed(list_checkpoints(out_dir)):
        problem = verify(folder)
        if problem is None:
            for skipped, why in broken:
                warnings.warn(f"skipping checkpoint {skipped}: {why}", stacklevel=2)
            return folder
        broken.append((folder, problem))
    if broken:
        raise UserError(f"no checkpoint in {checkpoints_root(out_dir)} passed verification "
                        f"({'; '.join(f'{folder.name}: {why}' for folder, why in broken)}); none was deleted: "
                        "name a sound checkpoint folder, or another out_dir")
    return None


def resolve_resume(resume: str, out_dir) -> Path | None:
    """The checkpoint folder `--resume` names: '' for none, 'auto' for the newest sound one in out_dir, or a path.

    'auto' with no checkpoint at all starts afresh; with only broken ones it is an error. A named
    checkpoint may not be older than a sound one in out_dir: the two runs' checkpoints would mix.
    """
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    folder = verified_checkpoint(_named_checkpoint(Path(resume)), "resume from")
    state = read_trainer_state(folder)
    newer = [p for p in list_checkpoints(out_dir) if step_of(p) > state.step and verify(p, checksums=False) is None]
    if newer:
        raise UserError(f"{out_dir} holds checkpoints newer than {folder} (the newest is {newer[-1].name}); "
                        "move them away or resume into another --out_dir")
    _check_same_run(out_dir, folder, state.run_id)
    return folder


def _check_same_run(out_dir, folder: Path, run_id: str | None) -> None:
    """Refuse to continue `folder` (of run `run_id`) into an out_dir holding another run's checkpoints: their
    steps, best/ and metrics rows would mix. Checkpoints without a run id (or unreadable) say nothing."""
    for other in [*list_checkpoints(out_dir), checkpoints_root(out_dir) / BEST]:
        try:
            theirs = read_trainer_state(other).run_id
        except UserError:
            continue
        if run_id and theirs and theirs != run_id:
            raise UserError(f"{out_dir} holds checkpoints of another run ({other.name} is of run {theirs}, {folder} "
                            f"of run {run_id}); resume it into its own out_dir or an empty --out_dir")


def _named_checkpoint(path: Path) -> Path:
    """`path` unless it is plainly not a checkpoint to resume: a file, a run's out_dir, or the temporary folder
    of a save or deletion cut short (complete or not, the next run's clean-up would delete it from under us)."""
    if path.is_file():
        raise UserError(f"cannot resume from {path}: it is a file; name a checkpoint folder (step_<N>/ or best/)")
    if path.name.startswith((".tmp_", ".deleting_")):
        raise UserError(f"cannot resume from {path}: it is the temporary folder of a save or deletion that was cut "
                        "short; name a step_<N>/ or best/ folder, or use --resume auto")
    if checkpoints_root(path).is_dir() and not (path / MANIFEST_FILE).exists():
        raise UserError(f"cannot resume from {path}: it is a run's out_dir, not a checkpoint; use --out_dir {path} "
                        "--resume auto, or name one of its checkpoints/ folders")
    return path


def load_or_refuse(path: Path, load: Callable[[], T]) -> T:
    """`load()` reading `path` (a checkpoint, or one of its files), or a one-line UserError. The manifest catches
    accidents to the files, not files damaged (or made by other code) before it was written: a library's loader then
    raises whatever the bytes lead it to (any type, even an IndexError), so every reader loads through here."""
    try:
        return load()
    except UserError:
        raise
    except Exception as err:  # whatever the loader raised, the checkpoint cannot be loaded
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        why = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # "Error(s) in loading ...:" says little
        raise UserError(f"cannot load checkpoint {path}: {type(err).__name__}: "
                        f"{why if len(why) <= 200 else why[:200] + '...'} (its files match {MANIFEST_FILE}, so they "
                        "were damaged before it was written, or written by other code); use another checkpoint"
                        ) from None


def read_trainer_state(folder: Path) -> TrainerState:
    """trainer_state.json: an object with the step reached and the run's config, which every reader needs, of a
    checkpoint in the format this version writes, every field of its type. There is one format: a checkpoint in
    another is refused in one line, not read half right."""
    path = folder / STATE_FILE
    fields = load_or_refuse(path, lambda: _json_object(path))
    check_format(folder, fields)
    problems = field_problems(fields)
    if problems:
        raise UserError(f"cannot read checkpoint {folder}: its {STATE_FILE} has {'; '.join(problems)} (its files "
                        f"match {MANIFEST_FILE}, so it was edited or written by other code); use another checkpoint")
    return TrainerState.of_json(fields)


def _json_object(path: Path) -> dict:
    state = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(state, dict):
        raise ValueError(f"{STATE_FILE} is not an object holding a step (a whole number) and a config")
    return state


def load_state(accelerator, folder: Path) -> None:
    """`accelerator.load_state(folder)`, or a UserError. Accelerate goes on without an RNG state it cannot read
    (a resume would then not be exact), so this process's own is read first, where the checkpoint has one (a
    checkpoint saved by fewer processes has none for the others)."""
    from accelerate.utils import RNG_STATE_NAME, load as torch_load

    rng = folder / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl"

    def check_rng() -> None:
        if not {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(torch_load(rng)):
            raise ValueError("it does not hold the random states")

    if rng.exists():
        load_or_refuse(rng, check_rng)
    load_or_refuse(folder, lambda: accelerator.load_state(str(folder)))


LAYOUTS = {WEIGHTS_FILE: "one process or DDP", FSDP_FULL_WEIGHTS: "FSDP with fsdp_state_dict_type FULL_STATE_DICT",
           FSDP_SHARDED_WEIGHTS: "FSDP with fsdp_state_dict_type SHARDED_STATE_DICT"}  # who writes each layout


def weights_layout(folder: Path) -> str:
    """The name under which a checkpoint holds its weights, one of LAYOUTS."""
    return next((name for name in (FSDP_SHARDED_WEIGHTS, FSDP_FULL_WEIGHTS) if (folder / name).exists()), WEIGHTS_FILE)


def launch_layout(accelerator) -> str:
    """The name under which this launch's `save_state` writes the weights, one of LAYOUTS."""
    if accelerator.distributed_type != "FSDP":
        return WEIGHTS_FILE
    sharded = accelerator.state.fsdp_plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    return FSDP_SHARDED_WEIGHTS if sharded else FSDP_FULL_WEIGHTS


def check_layout(folder: Path, layout: str) -> None:
    """Refuse to resume a checkpoint another kind of launch wrote: Accelerate's `load_state` reads only the
    weights and optimizer files its own launch writes, and fails on others with a traceback."""
    saved = weights_layout(folder)
    if saved != layout:
        raise UserError(f"{folder} was saved by {LAYOUTS[saved]} ({saved}), but this launch is {LAYOUTS[layout]}, "
                        "which cannot load it; resume with the kind of launch that wrote it, or start a new out_dir")


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a checkpoint's weights into a plain model in this one process, whichever way the run saved them:
    model.safetensors (one process, DDP), or under FSDP the file rank 0 gathered or the sharded folder, read
    whole without a process group. Sampling and export need no launcher and no consolidation step. Anything
    unreadable is one line, through `load_or_refuse`."""
    source = folder / weights_layout(folder)

    def load() -> None:
        if source.name == WEIGHTS_FILE:
            load_safetensors(model, source)  # also re-ties lm_head, whose copy Accelerate leaves out of the file
            return
        state = (_read_sharded(model, source) if source.name == FSDP_SHARDED_WEIGHTS
                 else torch.load(source, map_location="cpu", weights_only=True))
        _check_shared_equal(model, state, source)
        model.load_state_dict(state)  # copies into the parameters, so tied ones stay one parameter

    load_or_refuse(source, load)


def _read_sharded(model: torch.nn.Module, path: Path) -> dict:
    """The weights of an FSDP sharded checkpoint (Accelerate saves them under the key "model"), every shard
    read into tensors shaped like `model`'s; names that share a parameter get a tensor each, to be compared."""
    import torch.distributed.checkpoint as dcp

    state = {name: torch.empty_like(tensor) for name, tensor in model.state_dict().items()}
    with warnings.catch_warnings():  # that it reads in one process, as asked
        warnings.filterwarnings("ignore", "torch.distributed is disabled")
        dcp.load({"model": state}, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
    return state


def _check_shared_equal(model: torch.nn.Module, state: dict, source: Path) -> None:
    """FSDP gathers a tied pair (embedding and output head) as two tensors: they must hold the same values, or
    loading both into the one parameter would quietly keep the second and drop the first."""
    names_of = {}
    for name, param in model.state_dict(keep_vars=True).items():
        names_of.setdefault(id(param), []).append(name)
    for first, *others in names_of.values():
        for other in others:
            if first in state and other in state and not torch.equal(state[first], state[other]):
                raise UserError(f"{source} holds different {first} and {other}, which the model ties into one "
                                "parameter: the weights were untied when they were saved")
