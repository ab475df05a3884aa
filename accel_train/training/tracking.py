"""Where metrics go: `metrics.jsonl` always, plus wandb or tensorboard through Accelerate's trackers."""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from accel_train.atomic import replaced_file
from accel_train.errors import UserError

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per logged optimizer step.

    A row that cannot be written whole (a full disk) is cut back off, so the file never ends in a torn
    row, and the failure is a UserError.
    """

    def __init__(self, out_dir, enabled: bool):
        self.path, self.enabled = Path(out_dir) / METRICS_FILE, enabled

    def keep_until(self, step: int) -> None:
        """Drop the rows past `step` that a resumed run will write again."""
        if self.enabled and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= step]
            try:
                with replaced_file(self.path) as tmp:  # a kill now loses nothing
                    tmp.write_text("".join(line + "\n" for line in kept))
            except OSError as err:
                raise UserError(f"cannot rewrite {self.path} for the resumed run: {err.strerror} (disk full?); "
                                "it is unchanged") from None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        row = memoryview((json.dumps(record) + "\n").encode())
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot append to {self.path}: {err.strerror}") from None
        try:
            end = os.fstat(fd).st_size
            while row:  # a nearly full disk takes part of a write, then refuses the rest
                row = row[os.write(fd, row):]
        except OSError as err:
            os.ftruncate(fd, end)
            raise UserError(f"cannot append to {self.path}: {err.strerror} (disk full?); the rows and "
                            "checkpoints written so far are intact: free space, then --resume auto") from None
        finally:
            os.close(fd)


def _step(line: str) -> float:
    """The step of a metrics row; a row torn by a killed run counts as past every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def has_rows(out_dir) -> bool:
    path = Path(out_dir) / METRICS_FILE
    return path.is_file() and any(line.strip() for line in path.read_text().splitlines())


def read_metrics(out_dir) -> list[dict]:
    """The rows of metrics.jsonl; a torn last row (a run killed mid-write) is left out."""
    lines = [line for line in (Path(out_dir) / METRICS_FILE).read_text().splitlines() if line.strip()]
    if lines and _step(lines[-1]) == math.inf:
        lines.pop()
    return [json.loads(line) for line in lines]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def check_tracker_installed(tracker: str) -> None:
    """Refuse a tracker whose package is missing before any work. Accelerate itself would only warn, drop
    the tracker and train on, logging nothing where the user asked; its own list of available trackers decides."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    if tracker != "none" and LoggerType(tracker) not in get_available_trackers():
        # every tracker Accelerate knows is installed by its own name
        raise UserError(f"tracker {tracker} needs the {tracker} package, which {sys.executable} cannot import: "
                        f"pip install {tracker} (or choose another tracker)")


def start_tracker(accelerator, cfg, run_id: str) -> None:
    """Open the config's tracker (TRACKERS) with its nested config as hyperparameters, continuing the tracker's run
    `run_id` where it can (wandb, when a checkpoint is resumed). A tracker that does not start (wandb online
    without `wandb login`) is a UserError: a run must not go on without it. Main process only: Accelerate starts
    trackers there."""
    from accelerate.tracking import GeneralTracker

    choice = TRACKERS[cfg.tracker]
    if choice is None:
        return
    options = choice.options(cfg, run_id)
    try:
        accelerator.init_trackers(choice.project(cfg), config=flat_config(cfg.to_dict()),
                                  init_kwargs={cfg.tracker: options} if options else {})
    except Exception as err:  # whatever the tracker's library raises, the user needs its message, not a traceback
        reason = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise UserError(f"cannot start the {cfg.tracker} tracker: {reason}") from None
    if type(accelerator.get_tracker(cfg.tracker)) is GeneralTracker:  # Accelerate's stand-in for a missing one
        raise UserError(f"the {cfg.tracker} tracker did not start; check that {sys.executable} can import "
                        f"{cfg.tracker}")


def watch_model(accelerator, model, watch_interval: int) -> None:
    """Histograms of gradients and parameters every `watch_interval` optimizer steps, in each started tracker
    that can watch a model (wandb), as the seed's `run.watch` did. wandb counts backward passes, so the interval
    is scaled by the micro-batches per optimizer step (the accelerator's accumulation count, which `micro_batch`
    may make differ from the config's)."""
    if not (watch_interval and accelerator.is_main_process):
        return
    for tracker in accelerator.trackers:
        if hasattr(tracker.tracker, "watch"):
            tracker.tracker.watch(accelerator.unwrap_model(model, keep_torch_compile=False), log="all",
                                  log_freq=watch_interval * accelerator.gradient_accumulation_steps)


def flat_config(d: dict, prefix: str = "") -> dict:
    """Nested config as flat `model.key` entries, which every tracker accepts as hyperparameters."""
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class Tracker:
    """One entry of TRACKERS: what Accelerate's tracker of that name is started with, from the run's config."""
    project: Callable  # (config) -> the tracker's project name
    options: Callable = lambda cfg, run_id: {}  # (config, run id) -> its init_kwargs; the config keys it reads


def wandb_options(cfg, run_id: str) -> dict:
    """wandb continues the run `run_id` on resume, in out_dir, with the comma-separated wandb_tags."""
    return {"id": run_id, "resume": "allow", "dir": cfg.out_dir, "name": cfg.run_name or None,
            "tags": [tag.strip() for tag in cfg.wandb_tags.split(",") if tag.strip()]}


TRACKERS = {  # the config's `tracker` choices (Accelerate's names); a new tracker is one entry and its config keys
    "none": None,
    "wandb": Tracker(project=lambda cfg: cfg.wandb_project, options=wandb_options),
    "tensorboard": Tracker(project=lambda cfg: cfg.run_name or "tensorboard"),
}
