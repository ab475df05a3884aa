"""The training loop: `train` runs (or continues) a configured run, `run_loop` takes its optimizer steps, and
`train_step` is one of them. Everything before the first step is training/start.py's `build_run`; the
evaluations at evaluation steps are evaluation/in_training.py's.

The same loop runs on a CPU, one GPU, several GPUs and several nodes: the Accelerator owns
devices, mixed precision, gradient accumulation and the distributed data stream.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from accel_train.checkpointing.checkpoint import prune, save_checkpoint, update_best
from accel_train.checkpointing.run_lock import StartLock
from accel_train.checkpointing.trainer_state import TrainerState
from accel_train.config import TrainConfig
from accel_train.data.tokens import IGNORE
from accel_train.distributed.collective import on_main_process
from accel_train.distributed.preemption import StopSignals, any_process
from accel_train.errors import UserError
from accel_train.evaluation.in_training import evaluate
from accel_train.models.flops import mfu
from accel_train.training.loss_spikes import SpikeGuard
from accel_train.training.start import Run, build_run


def token_weights(targets: list, accelerator) -> torch.Tensor:
    """What each micro-batch's mean loss is multiplied by so that the step's gradient is that of the mean over every
    trained target of the step (all micro-batches, all processes), not a mean of per-micro-batch means: its share of
    those targets, times the micro-batches and processes that `backward` and the all-reduce average over. The
    count is all-reduced once per step, before any backward pass, without a host synchronization."""
    counts = torch.stack([(y != IGNORE).sum() for y in targets])
    total = accelerator.reduce(counts.sum(), "sum").clamp(min=1)
    return counts * (len(targets) * accelerator.num_processes) / total


def train_step(model, optimizer, schedulers: list, accelerator, micro_batches, grad_clip: float,
               skip_nonfinite: bool, spikes: SpikeGuard | None = None, token_mean: bool = False):
    """One optimizer step at the rate its schedulers set over the accumulation window's micro-batches; then each
    scheduler steps once, to the next step's rate, whether the step was skipped or not.

    `optimizer` is one optimizer or several as one (optim.Optimizers: AdamW and Muon); the gradient is
    clipped once, over every parameter, before any of them steps.

    With `token_mean` (data with a loss mask), the step's loss is the mean over its trained targets (token_weights);
    the loss returned then averages across processes to it.

    Returns (mean micro-batch loss, pre-clip gradient norm, why the update was skipped or None) without
    synchronizing with the device. `accelerator.backward` scales each loss by 1/accumulation
    and gradients are all-reduced only on the window's last micro-batch. With `skip_nonfinite`,
    a step whose gradient norm is not finite changes no weight; deciding that costs one device
    synchronization per step, which is why stopping (checked at log and checkpoint steps) is the default.
    With `spikes`, a step whose loss or gradient norm is an outlier changes no weight either: that costs an
    all-reduce of the loss and a synchronization per step.
    """
    loss_sum, count = 0.0, 0
    if token_mean:
        micro_batches = list(micro_batches)
        weights = token_weights([y for _, y in micro_batches], accelerator)
    for x, y in micro_batches:
        with accelerator.accumulate(model):
            _, loss = model(x, y)
            if token_mean:
                loss = loss * weights[count]
            accelerator.backward(loss)
        loss_sum, count = loss_sum + loss.detach(), count + 1
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    nonfinite = skip_nonfinite and not torch.isfinite(grad_norm).item()
    spike = not nonfinite and spikes is not None and spikes.is_spike(
        accelerator.reduce(loss_sum / count, "mean").item(), grad_norm.item())
    if not spike and (not nonfinite or accelerator.scaler is not None):  # the fp16 scaler skips a non-finite step
        optimizer.step()
    elif spike and accelerator.scaler is not None:
        accelerator.scaler.update()  # it unscaled these gradients for clipping: its step must be closed all the same
    for scheduler in schedulers:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    skipped = (f"gradient norm {grad_norm.item()} is not finite (nonfinite skip)" if nonfinite else
               spikes.outlier_reason() if spike else None)
    return loss_sum / count, grad_norm, skipped


def check_finite(record: dict, scaled: bool, last_good: Path | None) -> None:
    """Stop a diverged run. Checked only where the loss and gradient norm are fetched anyway: a
    non-finite update leaves non-finite weights, so they stay non-finite until the check. Under
    fp16 an infinite gradient norm is the loss scaler's business (it skips the step), so only the loss counts."""
    if math.isfinite(record["loss"]) and (scaled or math.isfinite(record["grad_norm"])):
        return
    raise UserError(f"training diverged: loss {record['loss']}, gradient norm {record['grad_norm']} at step "
                    f"{record['step']}; the last good checkpoint is {last_good or 'none (none was written yet)'}; "
                    "lower learning_rate, or set nonfinite to skip to skip such steps")


def train(cfg: TrainConfig, after_step=None, at_end=None) -> tuple[TrainerState, torch.nn.Module]:
    """Run (or continue) the configured training; returns the final trainer state and this process's model.

    `after_step()`, if given, is called as soon as each optimizer step's work is queued, before any
    evaluation or checkpoint: a profiler's step, for the benchmark. `at_end(run, model)`, if given, is called on
    the main process when this run reaches max_iters, after its final checkpoint: the command's extras. The main
    process holds out_dir's lock from the start of the run to its end."""
    lock = StartLock(cfg.out_dir)
    try:
        with lock.undone_on_failure():
            run = build_run(cfg, lock)
        step = run_loop(run, after_step)
        return finish(run, step, at_end)
    finally:
        lock.release()


def run_loop(run: Run, after_step) -> int:
    """Optimizer steps up to max_iters, each followed, when due, by a metrics row, the step's evaluations and a
    checkpoint; a stop signal saves a checkpoint and ends the loop. Returns the step reached."""
    cfg, accelerator, trainer_state = run.cfg, run.accelerator, run.trainer_state
    step, last_saved = run.start_step, run.resume_from
    if step >= cfg.max_iters and not trainer_state.owes_evaluation:
        accelerator.print(f"{cfg.out_dir} is already at step {step} of max_iters {cfg.max_iters}; nothing to do")
        return step
    progress = tqdm(total=cfg.max_iters, initial=step, disable=not accelerator.is_main_process, desc="train")
    # a line above the progress bar, on the main process (tqdm.write ignores disable)
    print_line = progress.write if accelerator.is_main_process else (lambda message: None)
    window_start, window_steps = time.perf_counter(), 0
    with StopSignals() as stop, progress:  # closing the bar first lets an error start its own line
        if trainer_state.owes_evaluation and not pay_owed_evaluations(run, stop, print_line):
            return step  # stopped again in them: the checkpoint still owes them
        while step < cfg.max_iters:
            lr = run.optimizer.param_groups[0]["lr"]  # AdamW's rate for this step, as its scheduler set it
            loss, grad_norm, skipped = train_step(run.model, run.optimizer, run.schedulers, accelerator,
                                                  itertools.islice(run.batches, run.step_plan.micro_steps),
                                                  cfg.grad_clip, skip_nonfinite=cfg.nonfinite == "skip",
                                                  spikes=run.spikes, token_mean=run.masked)
            if after_step is not None:
                after_step()
            step, window_steps = step + 1, window_steps + 1
            trainer_state.tokens += run.tokens_per_step
            if skipped is not None:
                trainer_state.skipped_steps += 1
                print_line(f"step {step}: update skipped: {skipped}")
            progress.update(1)
            stopping = stop.reached_any_process()  # a cheap CPU all-reduce: the only per-step sync
            if not (cfg.log_due(step) or cfg.save_due(step) or stopping):
                continue
            record = metrics_row(run, step, lr, loss, grad_norm, window_start, window_steps)
            if cfg.nonfinite != "skip":
                check_finite(record, scaled=accelerator.scaler is not None, last_good=last_saved)
            if cfg.eval_due(step) or cfg.tasks_due(step):
                evaluations = evaluate(run, step, stop.reached_any_process, print_line)
                if evaluations is None:  # a stop signal cut them short: the checkpoint owes them, done on resume
                    trainer_state.evaluation_owed, stopping = record, True
                else:
                    record.update(evaluations)
            if cfg.log_due(step):
                write_row(run, record)
                accelerator.log(record, step=step)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
            if cfg.save_due(step) or stopping:
                last_saved = save_run(run, step, record.get("val_loss"))
            if stopping:
                print_line(f"stopping at step {step} on {stop.received or 'a signal to another process'}: "
                       f"saved {last_saved}; continue with --resume auto")
                break
            if cfg.log_due(step):
                window_start, window_steps = time.perf_counter(), 0
    return step


def metrics_row(run: Run, step: int, lr: float, loss, grad_norm, window_start: float, window_steps: int) -> dict:
    """The record of optimizer step `step`, its throughput over the `window_steps` steps since `window_start`.
    Fetching the loss and gradient norm waits for the device, so the clock is read after them."""
    accelerator, cfg = run.accelerator, run.cfg
    record = {"step": step, "loss": accelerator.reduce(loss, "mean").item(), "lr": lr,
              "grad_norm": grad_norm.item(), "tokens": run.trainer_state.tokens,
              "tokens_per_s": window_steps * run.tokens_per_step / (time.perf_counter() - window_start)}
    if run.peak_tflops:
        record["mfu"] = mfu(record["tokens_per_s"], run.flops_per_token, run.peak_tflops, accelerator.num_processes)
    if cfg.nonfinite == "skip" or run.spikes is not None:
        record["skipped_steps"] = run.trainer_state.skipped_steps
    if run.spikes is not None:
        record.update(run.spikes.last_z)
    return record


def pay_owed_evaluations(run: Run, stop: StopSignals, print_line) -> bool:
    """Do first the evaluations that a stop signal cut short at the checkpoint's step, and write that step's row
    (the stopped run wrote it without them; the start dropped that copy). False if a stop signal cuts them short
    again: the row goes back as it was, and the checkpoint, unchanged, still owes them."""
    row = run.trainer_state.evaluation_owed
    evaluations = evaluate(run, row["step"], stop.reached_any_process, print_line)
    if evaluations is None:
        print_line(f"stopping at step {row['step']} on {stop.received or 'a signal to another process'}, again in "
               f"its evaluations: {run.resume_from} still owes them; continue with --resume auto")
    else:
        row.update(evaluations)
        run.trainer_state.evaluation_owed = None
        run.accelerator.log(row, step=row["step"])
    write_row(run, row)
    return evaluations is not None


def write_row(run: Run, record: dict) -> None:
    """Append a metrics row on the main process, once sure that out_dir is still the folder this run locked."""
    def confirmed_write() -> None:
        run.lock.confirm()
        run.metrics.write(record)

    on_main_process(run.accelerator, confirmed_write)


def save_run(run: Run, step: int, val_loss: float | None) -> Path:
    """Save the run at `step`, with the data stream's position, then update best/ and drop old checkpoints."""
    trainer_state, cfg = run.trainer_state, run.cfg
    trainer_state.step, trainer_state.val_loss = step, val_loss
    trainer_state.next_batch = run.first_batch + (step - run.start_step) * run.batches_per_step
    saved_counts = (trainer_state.mixture or {}).get("counts")
    trainer_state.mixture = run.mixture.record(run.stream.counts_at(trainer_state.next_batch), saved_counts)
    if run.spikes is not None:
        trainer_state.spike_history = run.spikes.history
    on_main_process(run.accelerator, run.lock.confirm)  # never save into a folder that replaced out_dir
    folder = save_checkpoint(run.accelerator, cfg.out_dir, step, trainer_state, any_process)
    if run.accelerator.is_main_process:
        update_best(cfg.out_dir, folder, val_loss)
        prune(cfg.out_dir, cfg.keep_last, newest=folder)
    return folder


def finish(run: Run, step: int, at_end) -> tuple[TrainerState, torch.nn.Module]:
    """End the run at `step` (`at_end` called if it reached max_iters here); the state and the plain model returned."""
    cfg, accelerator = run.cfg, run.accelerator
    plain_model = accelerator.unwrap_model(run.model, keep_torch_compile=False)  # sampling's many shapes: no recompiles
    if at_end is not None and accelerator.is_main_process and run.start_step < step == cfg.max_iters:
        at_end(run, plain_model)
    accelerator.end_training()
    return run.trainer_state, plain_model
