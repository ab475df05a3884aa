"""Pretrain a Gemma 3-shaped model on token memmaps with HuggingFace Accelerate.

    accelerate launch accel_train/train.py [--config FILE] [--key value ...]
    python accel_train/train.py              # one device, the built-in demo run

The same loop runs on a CPU, one GPU, several GPUs and several nodes: the Accelerator owns
devices, mixed precision, gradient accumulation and the distributed data stream.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a path: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm

from accel_train.checkpoint import list_checkpoints, read_trainer_state, resolve_resume, save_checkpoint
from accel_train.config import TrainConfig, load_config
from accel_train.data import open_split, read_meta, train_loader
from accel_train.errors import UserError, run_cli
from accel_train.evaluate import estimate_loss
from accel_train.hardware import resolve_hardware
from accel_train.model import Gemma3
from accel_train.optim import build_optimizer
from accel_train.schedule import warmup_cosine
from accel_train.tracking import MetricsLog, new_run_id, start_tracker


def train_step(model, optimizer, scheduler, accelerator, micro_batches, grad_clip: float):
    """One optimizer step over the accumulation window's micro-batches.

    Returns (mean micro-batch loss, pre-clip gradient norm, learning rate used) without
    synchronizing with the device. `accelerator.backward` scales each loss by 1/accumulation
    and gradients are all-reduced only on the window's last micro-batch.
    """
    loss_sum, count = 0.0, 0
    for x, y in micro_batches:
        with accelerator.accumulate(model):
            _, loss = model(x, y)
            accelerator.backward(loss)
        loss_sum, count = loss_sum + loss.detach(), count + 1
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / count, grad_norm, lr


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    cpu, mixed_precision = resolve_hardware(cfg.device, cfg.dtype)
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step, whatever the process count
        log_with=None if cfg.tracker == "none" else cfg.tracker,
        project_dir=cfg.out_dir,
        dataloader_config=DataLoaderConfiguration(non_blocking=not cpu),
    )


def prepare_out_dir(cfg: TrainConfig, resuming: bool) -> None:
    """Create out_dir, refusing to write a fresh run over an earlier run's checkpoints."""
    out_dir = Path(cfg.out_dir)
    if not resuming and list_checkpoints(out_dir):
        raise UserError(f"{out_dir} already holds checkpoints of a run; continue it with --resume auto "
                        "or choose another --out_dir")
    try:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write to out_dir {out_dir}: {err.strerror}") from None


def check_data(cfg: TrainConfig) -> dict:
    """Make the demo corpus if asked, then check both splits and meta.json against the model."""
    data_dir = Path(cfg.data_dir)
    if cfg.demo_data and not (data_dir / "train.bin").exists():
        from accel_train.demo_corpus import write_demo_data

        write_demo_data(data_dir)
    meta = read_meta(data_dir)
    if meta["vocab_size"] > cfg.model.vocab_size:
        raise UserError(f"{data_dir}/meta.json has a vocabulary of {meta['vocab_size']} tokens but the model has "
                        f"model.vocab_size = {cfg.model.vocab_size}; raise model.vocab_size")
    for split in ("train", "val"):
        open_split(str(data_dir), split).num_windows(cfg.block_size)
    return meta


def fresh_state(cfg: TrainConfig) -> dict:
    return {"step": 0, "tokens": 0, "next_batch": 0, "best_val_loss": None, "run_id": new_run_id(),
            "config": cfg.to_dict()}


def train(cfg: TrainConfig) -> tuple[dict, torch.nn.Module]:
    """Run (or continue) the configured training; returns the final trainer state and this process's model."""
    accelerator = make_accelerator(cfg)
    if not accelerator.is_main_process:
        warnings.filterwarnings("ignore")  # say things once
    resume_from = resolve_resume(cfg.resume, cfg.out_dir)
    with accelerator.main_process_first():
        if accelerator.is_main_process:
            prepare_out_dir(cfg, resuming=resume_from is not None)
        check_data(cfg)
    state = read_trainer_state(resume_from) if resume_from else fresh_state(cfg)
    if state["config"]["model"] != cfg.to_dict()["model"]:
        raise UserError(f"the model shape in the config differs from the checkpoint {resume_from}; "
                        "resume with the checkpoint's model settings or start a new out_dir")

    set_seed(cfg.seed)  # the same initial weights whatever the number of processes
    model = Gemma3(cfg.model)
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                fused=accelerator.device.type == "cuda")
    scheduler = warmup_cosine(optimizer, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.max_iters)
    world, accum = accelerator.num_processes, cfg.gradient_accumulation_steps
    batches_per_step = accum * world
    first_batch = state["next_batch"]
    loader = train_loader(cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.seed,
                          num_batches=first_batch + (cfg.max_iters - state["step"]) * batches_per_step,
                          first_batch=first_batch, pin_memory=accelerator.device.type == "cuda")
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if resume_from:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resuming from {resume_from} at step {state['step']}")
    else:
        set_seed(cfg.seed, device_specific=True)  # each process draws its own evaluation batches

    start_tracker(accelerator, cfg, state["run_id"])
    metrics = MetricsLog(cfg.out_dir, accelerator.is_main_process, resume_step=state["step"] if resume_from else None)
    accelerator.print(f"model: {accelerator.unwrap_model(model).num_params() / 1e6:.2f}M non-embedding parameters; "
                      f"{world} process(es), {cfg.tokens_per_step * world:,} tokens per optimizer step")

    def checkpoint(step: int) -> None:
        state.update(step=step, next_batch=first_batch + (step - start_step) * batches_per_step)
        save_checkpoint(accelerator, cfg.out_dir, step, state)

    step = start_step = state["step"]
    batches = iter(loader)
    progress = tqdm(total=cfg.max_iters, initial=step, disable=not accelerator.is_main_process, desc="train")
    window_start, window_steps = time.perf_counter(), 0
    while step < cfg.max_iters:
        loss, grad_norm, lr = train_step(model, optimizer, scheduler, accelerator,
                                         itertools.islice(batches, accum), cfg.grad_clip)
        step, window_steps = step + 1, window_steps + 1
        state["tokens"] += cfg.tokens_per_step * world
        progress.update(1)
        evaluate = step % cfg.eval_interval == 0 or step == cfg.max_iters
        if evaluate or step % cfg.log_interval == 0:
            record = {"step": step, "loss": accelerator.reduce(loss, "mean").item(), "lr": lr,
                      "grad_norm": grad_norm.item(), "tokens": state["tokens"],
                      "tokens_per_s": window_steps * cfg.tokens_per_step * world / (time.perf_counter() - window_start)}
            if evaluate:  # the prepared model autocasts by itself, so no extra context is needed
                losses = estimate_loss(model, cfg.eval_iters, contextlib.nullcontext(), cfg.block_size, cfg.batch_size,
                                       accelerator.device, accelerator.device.type, data_dir=cfg.data_dir)
                record.update(val_loss=losses["val"], train_eval_loss=losses["train"])
                if state["best_val_loss"] is None or losses["val"] < state["best_val_loss"]:
                    state["best_val_loss"] = losses["val"]
            metrics.write(record)
            accelerator.log(record, step=step)
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
            if evaluate:
                progress.write(f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}")
        if (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0) or step == cfg.max_iters:
            checkpoint(step)
        if step % cfg.log_interval == 0 or evaluate:
            window_start, window_steps = time.perf_counter(), 0
    progress.close()
    if step == start_step:
        accelerator.print(f"{cfg.out_dir} is already at step {step} of max_iters {cfg.max_iters}; nothing to do")
    accelerator.end_training()
    return state, accelerator.unwrap_model(model)


def main(argv: list[str] | None = None) -> None:
    train(load_config(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run_cli(main)
