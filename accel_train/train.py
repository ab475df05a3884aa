"""Pretrain a Gemma 3-shaped model on token memmaps with HuggingFace Accelerate.

    accelerate launch accel_train/train.py [--config FILE] [--key value ...]
    python accel_train/train.py              # one device, the built-in demo run

The same loop (training/loop.py) runs on a CPU, one GPU, several GPUs and several nodes: the Accelerator owns
devices, mixed precision, gradient accumulation and the distributed data stream. At the end of a run that reached
max_iters, this command draws the metrics and prints a sample.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a path: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from accel_train.config import load_config
from accel_train.errors import UserError, run_cli
from accel_train.models.generation import sample_text
from accel_train.training.loop import train
from accel_train.training.metrics_plot import write_plot
from accel_train.training.start import Run


def show_results(run: Run, model) -> None:
    """The end of a finished run, on the main process: draw the metrics and print a short sample (not under FSDP).
    Both are extras after the final checkpoint, so any failure (no matplotlib, a tokenizer that cannot load
    offline) is a one-line note and the run still succeeds."""
    cfg = run.cfg
    extras = {"plot": lambda: write_plot(cfg.out_dir)} if cfg.plot else {}
    if cfg.sample_tokens and run.accelerator.distributed_type != "FSDP":
        extras["sample"] = lambda: sample_text(model, run.mixture.first.folder.tokenizer(),
                                               max_new_tokens=cfg.sample_tokens, seed=cfg.seed)
    for name, make in extras.items():
        try:
            print(f"{name}: {make()}")
        except Exception as err:  # whatever it is: the checkpoint is saved, and an extra must not fail the run
            reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            print(f"note: no {name}: {reason.strip().splitlines()[0]}", flush=True)


def main(argv: list[str] | None = None) -> None:
    train(load_config(sys.argv[1:] if argv is None else argv), at_end=show_results)


if __name__ == "__main__":
    run_cli(main)
