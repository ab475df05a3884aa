"""Checkpoints under `out_dir/checkpoints/step_<N>/`, written atomically and found again for resume.

`accelerator.save_state` writes the weights (model.safetensors), optimizer, schedule and the RNG
state of every process; `trainer_state.json` adds the step, counters, data position and config.
A checkpoint is written to a hidden temporary folder and renamed into place only when complete,
with a manifest of sizes and checksums, so a crash mid-save never leaves a half checkpoint
that `--resume auto` would pick.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from accel_train.errors import UserError

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
PREFIX = "step_"


def checkpoints_root(out_dir) -> Path:
    return Path(out_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> None:
    """Record size and sha256 of every file, fsyncing each, then the manifest itself."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(path)
        files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = folder / MANIFEST_FILE
    manifest.write_text(json.dumps({"files": files}, indent=1))
    _fsync(manifest)


def verify(folder: Path) -> str | None:
    """None if the checkpoint matches its manifest, else why not."""
    try:
        files = json.loads((folder / MANIFEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return "no readable manifest"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its checksum"
    return None


def save_checkpoint(accelerator, out_dir, step: int, trainer_state: dict) -> Path:
    """Save everything needed to continue at `step`; every process must call this."""
    root = checkpoints_root(out_dir)
    final, tmp = root / f"{PREFIX}{step}", root / f".tmp_{PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
        write_manifest(tmp)
        if final.exists():  # a previous run's checkpoint of the same step: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    accelerator.wait_for_everyone()
    return final


def step_of(folder: Path) -> int:
    return int(folder.name[len(PREFIX):])


def list_checkpoints(out_dir) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders excluded)."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=step_of)


def latest_checkpoint(out_dir) -> Path | None:
    """The newest checkpoint that passes verification; broken ones are skipped with a warning."""
    for folder in reversed(list_checkpoints(out_dir)):
        problem = verify(folder)
        if problem is None:
            return folder
        warnings.warn(f"skipping checkpoint {folder}: {problem}", stacklevel=2)
    return None


def resolve_resume(resume: str, out_dir) -> Path | None:
    """The checkpoint folder `--resume` names: '' for none, 'auto' for the newest in out_dir, or a path."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(out_dir)
    folder = Path(resume)
    problem = verify(folder) if folder.is_dir() else "no such folder"
    if problem:
        raise UserError(f"cannot resume from {folder}: {problem}")
    return folder


def read_trainer_state(folder: Path) -> dict:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {folder / STATE_FILE}: {err}") from None
