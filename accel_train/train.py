"""Pretrain a Gemma 3-shaped model on token memmaps with HuggingFace Accelerate.

    accelerate launch accel_train/train.py [--config FILE] [--key value ...]
    python accel_train/train.py              # one device, the built-in demo run

The same loop runs on a CPU, one GPU, several GPUs and several nodes: the Accelerator owns
devices, mixed precision, gradient accumulation and the distributed data stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a path: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, TorchDynamoPlugin, broadcast_object_list, gather_object,
                               set_seed)
from torch._functorch import config as functorch_config
from tqdm.auto import tqdm

from accel_train.checkpoint import (BEST, check_layout, checkpoints_root, finish_bookkeeping, launch_layout,
                                    list_checkpoints, load_state, prune, read_trainer_state, resolve_resume,
                                    save_checkpoint, update_best)
from accel_train.config import TrainConfig, load_config
from accel_train.data import open_split, read_meta, split_path, train_loader
from accel_train.errors import UserError, first_line, run_cli
from accel_train.evaluate import estimate_loss
from accel_train.hf import hf_model_config, hf_state_dict
from accel_train.flops import flops_per_token, mfu, peak_tflops
from accel_train.hardware import Settings, resolve_hardware, resolve_settings, switch_on
from accel_train.loss_spikes import SpikeGuard
from accel_train.multiple_choice import TaskScorer, read_tasks, task_scorer
from accel_train.launcher import (check_fsdp, check_launch, check_lone_process, check_process_count,
                                  die_with_launcher, outlive_lost_output)
from accel_train.model import Gemma3
from accel_train.optim import (Optimizers, build_optimizers, group_settings, optimizer_count,
                               restore_group_settings)
from accel_train.plot import write_plot
from accel_train.preemption import StopSignals, any_process
from accel_train.resume import check_resumable, check_same_data, data_identity
from accel_train.schedule import Schedule, check_saved
from accel_train.sample import sample_text
from accel_train.run_lock import RunLock
from accel_train.token_scan import largest_id
from accel_train.tokenizer import TOKENIZER_FILE, encodes_like, load_tokenizer
from accel_train.tracking import (METRICS_FILE, MetricsLog, check_tracker_installed, has_rows, new_run_id,
                                  start_tracker, watch_model)


PENDING = "pending_evaluation"  # trainer-state key: the metrics record of a step saved before its evaluation


def train_step(model, optimizer, schedulers: list, accelerator, micro_batches, grad_clip: float,
               skip_nonfinite: bool, spikes: SpikeGuard | None = None):
    """One optimizer step at the rate its schedulers set over the accumulation window's micro-batches; then each
    scheduler steps once, to the next step's rate, whether the step was skipped or not.

    `optimizer` is one optimizer or several as one (optim.Optimizers: AdamW and Muon); the gradient is
    clipped once, over every parameter, before any of them steps.

    Returns (mean micro-batch loss, pre-clip gradient norm, skipped?) without
    synchronizing with the device. `accelerator.backward` scales each loss by 1/accumulation
    and gradients are all-reduced only on the window's last micro-batch. With `skip_nonfinite`,
    a step whose gradient norm is not finite changes no weight; deciding that costs one device
    synchronization per step, which is why stopping (checked at log and checkpoint steps) is the default.
    With `spikes`, a step whose loss or gradient norm is an outlier changes no weight either: that costs an
    all-reduce of the loss and a synchronization per step.
    """
    loss_sum, count = 0.0, 0
    for x, y in micro_batches:
        with accelerator.accumulate(model):
            _, loss = model(x, y)
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
    return loss_sum / count, grad_norm, nonfinite or spike


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    die_with_launcher()  # first: a trainer whose launcher is gone must not wait for its peers, or train on alone
    outlive_lost_output()
    cpu, mixed_precision = resolve_hardware(cfg.device, cfg.dtype)
    check_launch(cpu)
    check_lone_process()
    # Compiled, the min-cut partitioner keeps this share of the activations for the backward pass and
    # recomputes the rest, cheapest first: a finer trade of memory for compute than checkpoint_layers.
    functorch_config.activation_memory_budget = cfg.activation_memory_budget
    check_tracker_installed(cfg.tracker)  # before out_dir is touched: a run must not go on without its tracker
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if cfg.tracker == "none" else cfg.tracker,
        project_dir=cfg.out_dir,
        dataloader_config=DataLoaderConfiguration(non_blocking=not cpu),
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the process count
        # prepare() compiles the model, loss included; one static shape per micro-batch
        dynamo_plugin=TorchDynamoPlugin(backend="inductor" if switch_on(cfg.compile, not cpu) else "no",
                                        mode=cfg.compile_mode, dynamic=False),
    )
    check_process_count(accelerator.num_processes)  # before anything is written
    check_fsdp(accelerator.distributed_type, cfg.optimizer)
    return accelerator


def prepare_out_dir(cfg: TrainConfig, resuming: bool) -> None:
    """Create out_dir, refusing to write a fresh run over an earlier run's checkpoints or metrics.

    An earlier run killed before its first checkpoint leaves only metrics: `--resume auto` then starts
    afresh and keeps those rows aside, renamed; without it the run is refused."""
    out_dir = Path(cfg.out_dir)
    if not resuming and list_checkpoints(out_dir):
        raise UserError(f"{out_dir} already holds checkpoints of a run; continue it with --resume auto "
                        "or choose another --out_dir")
    if not resuming and (checkpoints_root(out_dir) / BEST).exists():
        raise UserError(f"{out_dir} already holds the best checkpoint of a run ({BEST}/), which a new run would "
                        "replace; move it away or choose another --out_dir")
    if not resuming and has_rows(out_dir):
        if cfg.resume != "auto":
            raise UserError(f"{out_dir} already holds {METRICS_FILE} of a run (it has no checkpoint); restart it "
                            "with --resume auto, which keeps those rows aside, or choose another --out_dir")
        kept = out_dir / f"metrics.before-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        os.replace(out_dir / METRICS_FILE, kept)
        print(f"kept the earlier rows of {out_dir / METRICS_FILE} as {kept}")
    try:
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out_dir / "checkpoints" / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to out_dir {out_dir}: {err.strerror}") from None


def check_data(cfg: TrainConfig) -> dict:
    """Make the demo corpus if asked, then check both splits and meta.json against the model, down to every
    token id: one beyond the vocabulary would crash the run mid-way, or train an id no tokenizer has."""
    data_dir = Path(cfg.data_dir)
    if cfg.demo_data:
        from accel_train.demo_corpus import ensure_demo_data

        ensure_demo_data(data_dir)
    split_path(data_dir, "train")  # a missing folder is named as such, before meta.json is looked for
    meta = read_meta(data_dir)
    if meta["vocab_size"] > cfg.model.vocab_size:
        fix = (f"prepare the data with the tokenizer of {cfg.init_from}" if cfg.init_from
               else "raise model.vocab_size")
        raise UserError(f"{data_dir}/meta.json has a vocabulary of {meta['vocab_size']} tokens but the model has "
                        f"model.vocab_size = {cfg.model.vocab_size}; {fix}")
    if cfg.init_from:
        check_init_tokenizer(data_dir, Path(cfg.init_from))
    splits = [open_split(str(data_dir), split) for split in ("train", "val")]
    for split, data in zip(("train", "val"), splits):
        expected = meta.get("tokens", {}).get(split)
        if expected is not None and expected != data.num_tokens:
            raise UserError(f"{data.path} holds {data.num_tokens:,} {meta['dtype']} tokens but {data_dir}/meta.json "
                            f"says {expected:,}: the file is truncated or meta.json describes other data")
        data.num_windows(cfg.block_size)
    vocab = (f"vocab_size {meta['vocab_size']:,} of {data_dir}/meta.json" if (data_dir / "meta.json").exists()
             else f"{meta['vocab_size']:,}, GPT-2's vocabulary, assumed without a meta.json")
    for data in splits:  # the cheap checks above first: this one reads every token (once, see token_scan)
        largest = largest_id(data.path, data.dtype)
        if largest >= meta["vocab_size"]:
            misread = largest > 0xFFFF and meta["dtype"] == "uint32"  # how a uint16 file read as uint32 looks
            cause = ("if the file holds uint16 tokens, meta.json's dtype uint32 is wrong" if misread
                     else "the data was made with a larger vocabulary than that")
            raise UserError(f"{data.path} holds token id {largest:,}, but ids must be below {vocab}; {cause}")
    return meta


def check_init_tokenizer(data_dir: Path, init_from: Path) -> None:
    """Continued pretraining needs the data encoded by the model's own tokenizer (where its folder holds one):
    with another, every embedding would be trained on some other token's text."""
    if not (init_from / TOKENIZER_FILE).is_file():
        return
    try:
        tokenizer = load_tokenizer(data_dir)
    except UserError as err:  # e.g. tiktoken offline: the check is a safeguard, not a reason to stop
        print(f"note: data and init_from tokenizers not compared ({err})")
        return
    if not encodes_like(tokenizer, init_from / TOKENIZER_FILE):
        raise UserError(f"the tokenizer of {data_dir} ({tokenizer.name}) is not the one of init_from {init_from}; "
                        f"prepare the data with --tokenizer {init_from}")


def val_tokens_per_byte(data_dir) -> float | None:
    """Tokens per UTF-8 byte of text in the validation split, from meta.json; None for data prepared before
    prepare counted bytes. It turns val_loss (nats per token) into val_bpb (bits per byte), which does not
    depend on the tokenizer."""
    meta = read_meta(Path(data_dir))
    tokens, text_bytes = meta.get("tokens", {}).get("val"), meta.get("bytes", {}).get("val")
    return tokens / text_bytes if tokens and text_bytes else None


def fresh_state(cfg: TrainConfig, processes: int) -> dict:
    return {"step": 0, "tokens": 0, "next_batch": 0, "best_val_loss": None, "skipped_steps": 0,
            "run_id": new_run_id(), "config": cfg.to_dict(), "processes": processes}


def plan_start(cfg: TrainConfig, processes: int, lock: RunLock, layout: str) -> tuple[Path | None, dict]:
    """Take out_dir for this run, then the checkpoint to resume (or None) and the trainer state to start from;
    `layout` is how this launch saves weights (checkpoint.LAYOUTS). Every check a user's mistake can fail
    happens here, before anything but the lock is written."""
    lock.acquire()
    resume_from = resolve_resume(cfg.resume, cfg.out_dir)
    state = fresh_state(cfg, processes) if resume_from is None else read_trainer_state(resume_from)
    if resume_from is not None:
        check_layout(resume_from, layout)
        check_resumable(resume_from, state, cfg, processes)
        check_saved(resume_from, optimizer_count(cfg.optimizer))
    data = data_identity(cfg.data_dir, check_data(cfg))
    if cfg.tasks:
        read_tasks(cfg.tasks)  # a bad task file is refused now, not at the first evaluation
        load_tokenizer(cfg.data_dir)
    if resume_from is not None:
        check_same_data(resume_from, state, data, cfg)
    state.update(config=cfg.to_dict(), processes=processes, data=data)  # the next checkpoint is this run's
    prepare_out_dir(cfg, resuming=resume_from is not None)
    if resume_from is not None:
        finish_bookkeeping(cfg.out_dir, cfg.keep_last, resume_from)
    return resume_from, state


def on_main_process(accelerator: Accelerator, fn):
    """fn() on the main process only, its result given to every process; a UserError there is raised by all."""
    outcome = [None, None]
    if accelerator.is_main_process:
        try:
            outcome = [fn(), None]
        except UserError as err:
            outcome = [None, str(err)]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise UserError(outcome[1])
    return outcome[0]


def on_every_process(accelerator: Accelerator, fn) -> None:
    """fn() on every process; a UserError on any is raised by all, with the first failing process's message: only
    rank 0 prints errors, and a process failing alone would leave the others waiting for it."""
    try:
        fn()
        error = None
    except UserError as err:
        error = str(err)
    errors = gather_object([error]) if accelerator.num_processes > 1 else [error]
    failed = [message for message in errors if message is not None]
    if failed:
        raise UserError(failed[0])


def check_finite(record: dict, scaled: bool, last_good: Path | None) -> None:
    """Stop a diverged run. Checked only where the loss and gradient norm are fetched anyway: a
    non-finite update leaves non-finite weights, so they stay non-finite until the check. Under
    fp16 an infinite gradient norm is the loss scaler's business (it skips the step), so only the loss counts."""
    if math.isfinite(record["loss"]) and (scaled or math.isfinite(record["grad_norm"])):
        return
    raise UserError(f"training diverged: loss {record['loss']}, gradient norm {record['grad_norm']} at step "
                    f"{record['step']}; the last good checkpoint is {last_good or 'none (none was written yet)'}; "
                    "lower learning_rate, or set nonfinite to skip to skip such steps")


def show_results(cfg: TrainConfig, model, sample: bool) -> None:
    """The end of a finished run, on the main process: draw the metrics and print a short sample. Both are
    extras after the final checkpoint, so any failure (no matplotlib, a tokenizer that cannot load offline)
    is a one-line note and the run still succeeds."""
    extras = {"plot": lambda: write_plot(cfg.out_dir)} if cfg.plot else {}
    if cfg.sample_tokens and sample:
        extras["sample"] = lambda: sample_text(model, cfg.data_dir, max_new_tokens=cfg.sample_tokens, seed=cfg.seed)
    for name, make in extras.items():
        try:
            print(f"{name}: {make()}")
        except Exception as err:  # whatever it is: the checkpoint is saved, and an extra must not fail the run
            reason = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
            print(f"note: no {name}: {reason.strip().splitlines()[0]}", flush=True)


class StartLock(RunLock):
    """out_dir's lock, which also notes the folders out_dir held when it was taken: a start that fails (a refused
    resume, a model too large for memory) removes the folders it made (checkpoints/, a tracker's), so that out_dir
    is left as it was. Files stay: the only ones a start writes are the lock and the earlier rows it keeps aside."""

    _before: set[Path] | None = None  # None where this process did not take the lock

    def acquire(self) -> None:
        super().acquire()
        self._before = self._folders()

    def _folders(self) -> set[Path]:
        return {path for path in self.out_dir.iterdir() if path.is_dir() and not path.is_symlink()}

    @contextlib.contextmanager
    def undone_on_failure(self):
        try:
            yield
        except BaseException:
            for folder in self._folders() - self._before if self._before is not None else ():
                shutil.rmtree(folder, ignore_errors=True)
            raise


@dataclasses.dataclass
class Run:
    """What the loop needs, built by `build_run`: the prepared objects, the trainer state it advances and saves,
    and the per-run constants its metrics rows and checkpoints are made of."""
    cfg: TrainConfig
    accelerator: Accelerator
    settings: Settings
    model: torch.nn.Module
    optimizer: Optimizers
    schedulers: list  # one per optimizer, each prepared: the rate of the coming step
    batches: Iterator
    state: dict
    resume_from: Path | None
    redo: dict | None  # the record of a step whose evaluation a stop signal cut short: evaluated first
    metrics: MetricsLog
    start_step: int
    first_batch: int
    batches_per_step: int  # loader batches per optimizer step, all processes together
    tokens_per_step: int  # all processes together
    flops_per_token: float
    peak_tflops: float | None
    tokens_per_byte: float | None
    lock: RunLock  # held by the main process: confirmed before each write to out_dir
    spikes: SpikeGuard | None  # with spike_sigma: decides which updates are skipped, its history in `state`
    scorer: TaskScorer | None  # with tasks: the multiple-choice tasks, encoded


def train(cfg: TrainConfig, after_step=None) -> tuple[dict, torch.nn.Module]:
    """Run (or continue) the configured training; returns the final trainer state and this process's model.

    `after_step()`, if given, is called as soon as each optimizer step's work is queued, before any
    evaluation or checkpoint: a profiler's step, for the benchmark. The main process holds out_dir's
    lock from the start of the run to its end."""
    lock = StartLock(cfg.out_dir)
    try:
        with lock.undone_on_failure():
            run = build_run(cfg, lock)
        step = run_loop(run, after_step)
        return finish(run, step)
    finally:
        lock.release()


def build_run(cfg: TrainConfig, lock: RunLock) -> Run:
    """Everything before the first step: the Accelerator, out_dir taken and checked, the automatic settings,
    the model and optimizers (loaded from the checkpoint when resuming), the data stream and the trackers."""
    accelerator = make_accelerator(cfg)
    if not accelerator.is_main_process:
        warnings.filterwarnings("ignore")  # say things once
    if cfg.init_from:  # the model takes the HuggingFace checkpoint's shape: a new config, the caller's stays as it is
        cfg = dataclasses.replace(cfg, model=hf_model_config(cfg.init_from)).validate()
    resume_from, state = on_main_process(accelerator, lambda: plan_start(cfg, accelerator.num_processes, lock,
                                                                         launch_layout(accelerator)))
    state.setdefault("skipped_steps", 0)
    settings = resolve_settings(cfg, accelerator)
    accelerator.gradient_accumulation_steps = settings.micro_steps  # the same sequences per step
    set_seed(cfg.seed)  # the same initial weights whatever the number of processes
    model = new_model(cfg)
    if cfg.init_from and resume_from is None:
        model.load_state_dict(hf_state_dict(cfg.init_from))
        accelerator.print(f"starting from the weights of {cfg.init_from}")
    optimizers = build_optimizers(model, cfg, fused=settings.fused_adamw, mixed_precision=accelerator.mixed_precision)
    world = accelerator.num_processes
    batches_per_step, tokens_per_step = cfg.gradient_accumulation_steps * world, cfg.tokens_per_step * world
    first_batch = state["next_batch"]
    loader = train_loader(cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.seed,
                          num_batches=first_batch + (cfg.max_iters - state["step"]) * batches_per_step,
                          first_batch=first_batch, pin_memory=not settings.cpu, micro_batch=settings.micro_batch)
    schedulers = [Schedule(optimizer, cfg) for optimizer in optimizers]  # one each, so Muon's keeps its own scale
    model, *prepared, loader = accelerator.prepare(model, *optimizers, *schedulers, loader)  # saved one by one
    optimizer, schedulers = Optimizers(prepared[:len(optimizers)]), prepared[len(optimizers):]
    start_from(cfg, accelerator, optimizer, resume_from, state["step"])
    on_main_process(accelerator, lambda: start_tracker(accelerator, cfg, state["run_id"]))
    watch_model(accelerator, model, cfg)
    redo = state.get(PENDING)
    metrics = MetricsLog(cfg.out_dir, accelerator.is_main_process)
    if resume_from:
        on_main_process(accelerator, lambda: metrics.keep_until(state["step"] - (redo is not None)))
    accelerator.print(f"model: {accelerator.unwrap_model(model).num_params() / 1e6:.2f}M non-embedding parameters; "
                      f"{world} process(es), {tokens_per_step:,} tokens per optimizer step "
                      f"in {settings.micro_steps} micro-batch(es) of {settings.micro_batch} per process")
    return Run(cfg, accelerator, settings, model, optimizer, schedulers, iter(loader), state, resume_from, redo,
               metrics, start_step=state["step"], first_batch=first_batch, batches_per_step=batches_per_step,
               tokens_per_step=tokens_per_step, flops_per_token=flops_per_token(cfg.model, cfg.block_size),
               peak_tflops=peak_tflops(accelerator.device, cfg.peak_tflops),
               tokens_per_byte=val_tokens_per_byte(cfg.data_dir), lock=lock,
               spikes=SpikeGuard(cfg.spike_sigma, cfg.spike_window, state) if cfg.spike_sigma else None,
               scorer=task_scorer(cfg.tasks, cfg.data_dir, cfg.block_size, cfg.batch_size) if cfg.tasks else None)


def new_model(cfg: TrainConfig) -> Gemma3:
    """The model to train, initialized; a shape too large for memory is a UserError rather than the allocator's
    traceback (valid shapes have no other upper bound: that depends on the machine)."""
    try:
        return Gemma3(cfg.model, fused_loss=cfg.fused_loss, checkpoint_layers=cfg.checkpoint_layers)
    except (RuntimeError, MemoryError) as err:  # torch's allocators raise RuntimeError (OutOfMemoryError on a GPU)
        raise UserError(f"cannot allocate the model of this config's model.* shape: {first_line(err)}; "
                        "choose a smaller model") from None


def start_from(cfg: TrainConfig, accelerator: Accelerator, optimizer: Optimizers, resume_from: Path | None,
               step: int) -> None:
    """Load the checkpoint being resumed into the prepared objects; or, starting afresh, seed the evaluation
    batches per process."""
    if resume_from:
        settings = group_settings(optimizer)
        on_every_process(accelerator, lambda: load_state(accelerator, resume_from))
        restore_group_settings(optimizer, settings)  # this config's weight decay and betas, not the checkpoint's;
        # the rate is this config's schedule at `step`: the schedulers loaded their step count alone
        accelerator.step = 0  # a checkpoint lies between optimizer steps, whatever micro-batch count it saved
        accelerator.print(f"resuming from {resume_from} at step {step}")
    else:
        if cfg.resume == "auto":
            accelerator.print(f"no checkpoint in {cfg.out_dir} yet: starting from step 0")
        set_seed(cfg.seed, device_specific=True)  # each process draws its own evaluation batches


def run_loop(run: Run, after_step) -> int:
    """Optimizer steps up to max_iters, each followed, when due, by a metrics row, an evaluation and a
    checkpoint; a stop signal saves a checkpoint and ends the loop. Returns the step reached."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    step, last_saved = run.start_step, run.resume_from
    progress = tqdm(total=cfg.max_iters, initial=step, disable=not accelerator.is_main_process, desc="train")
    report = progress.write if accelerator.is_main_process else (lambda message: None)  # tqdm.write ignores disable
    window_start, window_steps = time.perf_counter(), 0
    with StopSignals() as stop, progress:  # closing the bar first lets an error start its own line
        if run.redo is not None:
            finish_pending_evaluation(run, stop, report)
        while step < cfg.max_iters and PENDING not in state:
            lr = run.optimizer.param_groups[0]["lr"]  # AdamW's rate for this step, as its scheduler set it
            loss, grad_norm, skipped = train_step(run.model, run.optimizer, run.schedulers, accelerator,
                                                  itertools.islice(run.batches, run.settings.micro_steps),
                                                  cfg.grad_clip, skip_nonfinite=cfg.nonfinite == "skip",
                                                  spikes=run.spikes)
            if after_step is not None:
                after_step()
            step, window_steps = step + 1, window_steps + 1
            state["tokens"] += run.tokens_per_step
            state["skipped_steps"] += skipped
            if skipped and run.spikes is not None:
                report(f"step {step}: update skipped (z-scores {run.spikes.last_z})")
            progress.update(1)
            stopping = any_process(stop.received is not None)  # a cheap CPU all-reduce: the only per-step sync
            if not (cfg.log_due(step) or cfg.save_due(step) or stopping):
                continue
            record = metrics_row(run, step, lr, loss, grad_norm, window_start, window_steps)
            if cfg.nonfinite != "skip":
                check_finite(record, scaled=accelerator.scaler is not None, last_good=last_saved)
            if (cfg.eval_due(step) or cfg.tasks_due(step)) and not evaluate_into(run, record, stop, report):
                stopping = True  # the signal came during the evaluation, which the checkpoint redoes on resume
            if cfg.log_due(step):
                write_row(run, record)
                accelerator.log(record, step=step)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
            if cfg.save_due(step) or stopping:
                last_saved = checkpoint(run, step, record.get("val_loss"))
            if stopping:
                report(f"stopping at step {step} on {stop.received or 'a signal to another process'}: "
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
              "grad_norm": grad_norm.item(), "tokens": run.state["tokens"],
              "tokens_per_s": window_steps * run.tokens_per_step / (time.perf_counter() - window_start)}
    if run.peak_tflops:
        record["mfu"] = mfu(record["tokens_per_s"], run.flops_per_token, run.peak_tflops, accelerator.num_processes)
    if cfg.nonfinite == "skip" or run.spikes is not None:
        record["skipped_steps"] = run.state["skipped_steps"]
    if run.spikes is not None:
        record.update(run.spikes.last_z)
    return record


def finish_pending_evaluation(run: Run, stop: StopSignals, report) -> None:
    """Evaluate the step a stop signal cut short before anything else, and write its row, evaluated or (stopped
    again) as the stopped run left it."""
    if evaluate_into(run, run.redo, stop, report):
        run.accelerator.log(run.redo, step=run.start_step)
    else:
        report(f"stopping at step {run.start_step} on {stop.received or 'a signal to another process'}, again in "
               f"its evaluation: {run.resume_from} still holds it; continue with --resume auto")
    write_row(run, run.redo)


def write_row(run: Run, record: dict) -> None:
    """Append a metrics row on the main process, once sure that out_dir is still the folder this run locked."""
    def confirmed_write() -> None:
        run.lock.confirm()
        run.metrics.write(record)

    on_main_process(run.accelerator, confirmed_write)


def evaluate_into(run: Run, record: dict, stop: StopSignals, report) -> bool:
    """Add this step's evaluations (validation losses, task scores: those due) to `record`; True if they ran to
    the end. A stop signal cuts them short (every process agrees, batch by batch): then the record waits in the
    trainer state and the RNG that draws evaluation batches is rewound, so the checkpoint about to be saved
    resumes into the evaluations an uninterrupted run makes. The prepared model autocasts by itself, so no extra
    context is needed."""
    cfg, state, device, step = run.cfg, run.state, run.accelerator.device, record["step"]
    rng = torch.get_rng_state()  # get_batch draws from the CPU generator
    losses = scores = {}

    def stop_requested() -> bool:
        return any_process(stop.received is not None)

    if cfg.eval_due(step):
        losses = estimate_loss(run.model, cfg.eval_iters, contextlib.nullcontext(), cfg.block_size, cfg.batch_size,
                               device, device.type, data_dir=cfg.data_dir, stop_requested=stop_requested)
    if losses is not None and cfg.tasks_due(step):
        scores = score_tasks(run, stop_requested)
    if losses is None or scores is None:
        torch.set_rng_state(rng)
        state[PENDING] = record
        return False
    state.pop(PENDING, None)
    record.update(scores)
    if scores:
        report(f"step {step}: " + ", ".join(f"{key} {value:.4f}" for key, value in scores.items()))
    if losses:
        add_losses(run, record, losses, report)
    return True


def score_tasks(run: Run, stop_requested) -> dict | None:
    """The multiple-choice scores of the model as it is, every process scoring its share (None: stopped)."""
    accelerator, model = run.accelerator, run.model
    was_training = model.training
    model.eval()
    try:
        return run.scorer.score(lambda x: model(x)[0], accelerator.device, accelerator.process_index,
                                accelerator.num_processes, stop_requested,
                                sum_across=lambda counts: accelerator.reduce(counts, "sum"))
    finally:
        model.train(was_training)


def add_losses(run: Run, record: dict, losses: dict, report) -> None:
    """Put the validation losses (and bits per byte) into `record` and keep the best validation loss."""
    state = run.state
    record.update(val_loss=losses["val"], train_eval_loss=losses["train"])
    if run.tokens_per_byte:
        record["val_bpb"] = losses["val"] / math.log(2) * run.tokens_per_byte
    if state["best_val_loss"] is None or losses["val"] < state["best_val_loss"]:
        state["best_val_loss"] = losses["val"]
    report(f"step {record['step']}: train {losses['train']:.4f}, val {losses['val']:.4f}")


def checkpoint(run: Run, step: int, val_loss: float | None) -> Path:
    """Save the run at `step`, with the data stream's position, then update best/ and drop old checkpoints."""
    state, cfg = run.state, run.cfg
    state.update(step=step, next_batch=run.first_batch + (step - run.start_step) * run.batches_per_step,
                 val_loss=val_loss)
    on_main_process(run.accelerator, run.lock.confirm)  # never save into a folder that replaced out_dir
    folder = save_checkpoint(run.accelerator, cfg.out_dir, step, state, agree=any_process)
    if run.accelerator.is_main_process:
        update_best(cfg.out_dir, folder, val_loss)
        prune(cfg.out_dir, cfg.keep_last, newest=folder)
    return folder


def finish(run: Run, step: int) -> tuple[dict, torch.nn.Module]:
    """End the run at `step`: results shown if it reached max_iters here; the state and the plain model returned."""
    cfg, accelerator = run.cfg, run.accelerator
    plain_model = accelerator.unwrap_model(run.model, keep_torch_compile=False)  # sampling's many shapes: no recompiles
    if accelerator.is_main_process and run.start_step < step == cfg.max_iters:
        show_results(cfg, plain_model, sample=accelerator.distributed_type != "FSDP")
    if step == run.start_step and run.redo is None:
        accelerator.print(f"{cfg.out_dir} is already at step {step} of max_iters {cfg.max_iters}; nothing to do")
    accelerator.end_training()
    return run.state, plain_model


def main(argv: list[str] | None = None) -> None:
    train(load_config(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    run_cli(main)
