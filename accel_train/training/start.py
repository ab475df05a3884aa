"""Everything before the first optimizer step: the Accelerator, out_dir taken and checked, the data checked
against the model, the checkpoint to resume (and what a resume may change), the model, optimizers and
schedulers prepared, the data stream positioned and the trackers started.

Every check a user's mistake can fail happens in `plan_start`, before anything but the lock is written; the
loop in train.py then only steps, logs, evaluates and saves. `build_run` gives it all as one `Run`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, TorchDynamoPlugin, set_seed

from accel_train.checkpointing.checkpoint import (BEST, check_layout, checkpoints_root, finish_bookkeeping,
                                                  launch_layout, list_checkpoints, load_state, read_trainer_state,
                                                  resolve_resume)
from accel_train.checkpointing.resume import check_resumable, check_same_data
from accel_train.checkpointing.run_lock import RunLock
from accel_train.checkpointing.trainer_state import TrainerState
from accel_train.checkpointing.trained_model import TrainedModel
from accel_train.config import TrainConfig
from accel_train.data.documents import masking_separator
from accel_train.data.folder import DataFolder
from accel_train.data.mixture import Mixture
from accel_train.data.stream import WindowStream
from accel_train.data.token_scan import largest_id
from accel_train.data.tokenizer import TOKENIZER_FILE, encodes_like, load_tokenizer
from accel_train.data.tokens import train_loader
from accel_train.distributed.collective import on_every_process, on_main_process, warn_on_main_process_only
from accel_train.distributed.launcher import (check_fsdp, check_launch, check_lone_process, check_process_count,
                                              die_with_launcher, fsdp_requested, outlive_lost_output)
from accel_train.errors import UserError, first_line
from accel_train.models.flops import flops_per_token, peak_tflops
from accel_train.planning.preflight import plan_this_run
from accel_train.models.build import training_model
from accel_train.models.hf import hf_model_config, hf_state_dict
from accel_train.evaluation.multiple_choice import TaskScorer, read_tasks, task_scorer
from accel_train.training.hardware import resolve_hardware, set_activation_memory_budget, switch_on
from accel_train.training.loss_spikes import SpikeGuard
from accel_train.training.micro_batch import StepPlan, plan_step
from accel_train.training.optim import (OptimizerHyperparameters, Optimizers, build_optimizers, check_distributed,
                                        group_hyperparameters, restore_group_hyperparameters)
from accel_train.training.schedule import LrSchedule, Schedule
from accel_train.training.tracking import (METRICS_FILE, MetricsLog, check_tracker_installed, has_rows, new_run_id,
                                           start_tracker, watch_model)

@dataclasses.dataclass
class Run:
    """What the loop needs, built by `build_run`: the prepared objects, the trainer state it advances and saves,
    and the per-run constants its metrics rows and checkpoints are made of."""
    cfg: TrainConfig
    accelerator: Accelerator
    step_plan: StepPlan
    model: torch.nn.Module
    optimizer: Optimizers
    schedulers: list  # one per optimizer, each prepared: the rate of the coming step
    batches: Iterator
    trainer_state: TrainerState
    resume_from: Path | None
    metrics: MetricsLog
    start_step: int
    first_batch: int
    batches_per_step: int  # loader batches per optimizer step, all processes together
    tokens_per_step: int  # all processes together
    flops_per_token: float
    peak_tflops: float | None
    mixture: Mixture  # the sources trained on, each folder opened once and shared by stream and evaluation
    stream: WindowStream
    lock: RunLock  # held by the main process: confirmed before each write to out_dir
    spikes: SpikeGuard | None  # with spike_sigma: decides which updates are skipped; its history is saved
    scorer: TaskScorer | None  # with tasks: the multiple-choice tasks, encoded
    masked: bool  # a source has a loss mask (conversations): a step's loss is the mean over its trained targets


def build_run(cfg: TrainConfig, lock: RunLock) -> Run:
    """Everything before the first step: the Accelerator, out_dir taken and checked, the step plan,
    the model and optimizers (loaded from the checkpoint when resuming), the data stream and the trackers."""
    accelerator = make_accelerator(cfg)
    warn_on_main_process_only(accelerator)
    if cfg.init_from:  # the model takes the initial weights' shape: a new config, the caller's stays as it is
        shape, initial_weights = init_weights(cfg.init_from)
        cfg = dataclasses.replace(cfg, model=shape).validate()
    mixture = cfg.mixture()
    resume_from, trainer_state = on_main_process(accelerator, lambda: plan_start(
        cfg, mixture, accelerator.num_processes, lock, launch_layout(accelerator)))
    memory_plan = plan_this_run(cfg, accelerator, lambda: new_model(cfg, mixture))  # refuses what cannot fit
    step_plan = plan_step(cfg, accelerator, lambda: new_model(cfg, mixture), memory_plan.largest_micro_batch)
    accelerator.print(memory_plan.start_line(step_plan.micro_batch))
    accelerator.gradient_accumulation_steps = step_plan.micro_steps  # the same sequences per step
    set_seed(cfg.seed)  # the same initial weights whatever the number of processes
    model = new_model(cfg, mixture)
    if cfg.init_from and resume_from is None:
        model.load_state_dict(initial_weights())
        accelerator.print(f"starting from the weights of {cfg.init_from}")
    optimizers = build_optimizers(model, OptimizerHyperparameters.of(cfg), fused=step_plan.fused_adamw,
                                  mixed_precision=accelerator.mixed_precision)
    world = accelerator.num_processes
    batches_per_step, tokens_per_step = cfg.gradient_accumulation_steps * world, cfg.tokens_per_step * world
    first_batch = trainer_state.next_batch
    counts = mixture.counts_at(first_batch, cfg.batch_size, (trainer_state.mixture or {}).get("counts"))
    stream = on_every_process(accelerator, lambda: WindowStream(
        mixture.sources, cfg.block_size, cfg.batch_size, cfg.seed, cfg.sampling, cfg.window_start, first_batch,
        counts))
    loader = train_loader(stream, first_batch=first_batch, pin_memory=not step_plan.cpu,
                          num_batches=first_batch + (cfg.max_iters - trainer_state.step) * batches_per_step,
                          micro_batch=step_plan.micro_batch)
    schedule = LrSchedule.of(cfg)
    schedulers = [Schedule(optimizer, schedule) for optimizer in optimizers]  # one each: Muon's keeps its own scale
    model, *prepared, loader = accelerator.prepare(model, *optimizers, *schedulers, loader)  # saved one by one
    optimizer, schedulers = Optimizers(prepared[:len(optimizers)]), prepared[len(optimizers):]
    start_from(cfg, accelerator, optimizer, resume_from, trainer_state.step)
    on_main_process(accelerator, lambda: start_tracker(accelerator, cfg, trainer_state.run_id))
    watch_model(accelerator, model, cfg.watch_interval)
    metrics = MetricsLog(cfg.out_dir, accelerator.is_main_process)
    if resume_from:  # rows past the checkpoint are written again; so is the row of a step that owes evaluations
        last_kept = trainer_state.step - 1 if trainer_state.owes_evaluation else trainer_state.step
        on_main_process(accelerator, lambda: metrics.keep_until(last_kept))
    accelerator.print(f"model: {accelerator.unwrap_model(model).num_params() / 1e6:.2f}M non-embedding parameters; "
                      f"{world} process(es), {tokens_per_step:,} tokens per optimizer step "
                      f"in {step_plan.micro_steps} micro-batch(es) of {step_plan.micro_batch} per process")
    return Run(cfg, accelerator, step_plan, model, optimizer, schedulers, iter(loader), trainer_state, resume_from,
               metrics, start_step=trainer_state.step, first_batch=first_batch, batches_per_step=batches_per_step,
               tokens_per_step=tokens_per_step, flops_per_token=flops_per_token(cfg.model, cfg.block_size),
               peak_tflops=peak_tflops(accelerator.device, cfg.peak_tflops), mixture=mixture, stream=stream, lock=lock,
               spikes=SpikeGuard(cfg.spike_sigma, cfg.spike_window, trainer_state.spike_history)
               if cfg.spike_sigma else None,
               scorer=task_scorer(cfg.tasks, mixture.first.folder.tokenizer(), cfg.block_size, cfg.batch_size)
               if cfg.tasks else None, masked=has_loss_mask(mixture))


def set_up_process(cfg: TrainConfig) -> tuple[bool, str]:
    """What this process does to itself before its Accelerator exists, each step owned by its module; returns
    (run on the CPU?, Accelerate's mixed precision) for this machine."""
    die_with_launcher()  # first: a trainer whose launcher is gone must not wait for its peers, or train on alone
    outlive_lost_output()
    cpu, mixed_precision = resolve_hardware(cfg.device, cfg.dtype)
    check_launch(cpu)
    check_lone_process()
    set_activation_memory_budget(cfg.activation_memory_budget)
    check_tracker_installed(cfg.tracker)  # before out_dir is touched: a run must not go on without its tracker
    return cpu, mixed_precision


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """The run's Accelerator, in a process set up for it (set_up_process), once it can run this launch."""
    cpu, mixed_precision = set_up_process(cfg)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=None if cfg.tracker == "none" else cfg.tracker,
        project_dir=cfg.out_dir,
        dataloader_config=DataLoaderConfiguration(non_blocking=not cpu),
        step_scheduler_with_optimizer=False,  # one scheduler step per optimizer step, whatever the process count
        # prepare() compiles the model, loss included; one static shape per micro-batch. Under FSDP each decoder
        # layer compiles alone: whole, the model's forward breaks at FSDP's per-layer hooks and runs eagerly
        dynamo_plugin=TorchDynamoPlugin(backend="inductor" if switch_on(cfg.compile, not cpu) else "no",
                                        mode=cfg.compile_mode, dynamic=False,
                                        use_regional_compilation=fsdp_requested()),
    )
    check_process_count(accelerator.num_processes)  # before anything is written
    check_fsdp(accelerator.distributed_type)
    check_distributed(cfg.optimizer, accelerator.distributed_type)
    return accelerator


def plan_start(cfg: TrainConfig, mixture: Mixture, processes: int, lock: RunLock,
               layout: str) -> tuple[Path | None, TrainerState]:
    """Take out_dir for this run, then the checkpoint to resume (or None) and the trainer state to start from, the
    data (`mixture`) checked;
    `layout` is how this launch saves weights (checkpoint.LAYOUTS). Every check a user's mistake can fail
    happens here, before anything but the lock is written."""
    lock.acquire()
    resume_from = resolve_resume(cfg.resume, cfg.out_dir)
    trainer_state = (TrainerState(new_run_id(), cfg.to_dict(), processes) if resume_from is None
             else read_trainer_state(resume_from))
    if resume_from is not None:
        check_layout(resume_from, layout)
        check_resumable(resume_from, trainer_state, cfg, mixture, processes)
    check_data(cfg, mixture)
    data = mixture.identity()
    if cfg.tasks:
        read_tasks(cfg.tasks)  # a bad task file is refused now, not at the first evaluation
        mixture.first.folder.tokenizer()
    if resume_from is not None:
        check_same_data(resume_from, trainer_state, mixture, data, cfg.accept_data_change)
    # the next checkpoint is this run's
    trainer_state.config, trainer_state.processes, trainer_state.data = cfg.to_dict(), processes, data
    prepare_out_dir(cfg, resuming=resume_from is not None)
    if resume_from is not None:
        finish_bookkeeping(cfg.out_dir, cfg.keep_last, resume_from)
    return resume_from, trainer_state


def check_data(cfg: TrainConfig, mixture: Mixture) -> None:
    """Make the demo corpus if asked, then check every source's folder (see check_folder) and, for a mixture,
    that their token ids mean the same."""
    if cfg.demo_data and not mixture.per_source:
        from accel_train.data.demo_corpus import ensure_demo_data

        ensure_demo_data(Path(mixture.first.data_dir))
    folders = [source.folder for source in mixture.sources]  # a missing folder or bad meta.json is named first
    masking_separator(cfg.document_mask, folders[0])  # document_mask on without a separator: refused here
    mixture.check_compatible()
    for folder in folders:
        check_folder(cfg, folder)


def check_folder(cfg: TrainConfig, folder: DataFolder) -> None:
    """Check both splits of `folder` and its meta.json against the model, down to every token id: one beyond the
    vocabulary would crash the run mid-way, or train an id no tokenizer has."""
    data_dir, meta = folder.path, folder.meta
    splits = [folder.split(split) for split in ("train", "val")]  # a missing file is named
    if meta.vocab_size > cfg.model.vocab_size:
        fix = (f"prepare the data with the tokenizer of {cfg.init_from}" if cfg.init_from
               else "raise model.vocab_size")
        raise UserError(f"{data_dir}/meta.json has a vocabulary of {meta.vocab_size} tokens but the model has "
                        f"model.vocab_size = {cfg.model.vocab_size}; {fix}")
    if cfg.init_from and is_hf_folder(cfg.init_from):
        check_init_tokenizer(data_dir, Path(cfg.init_from))
    elif cfg.init_from:  # our checkpoint: its data's tokenizer, by fingerprint (and chat template, where both have one)
        TrainedModel(cfg.init_from).check_tokenizer(data_dir)
    for split, data in zip(("train", "val"), splits):
        expected = meta.tokens.get(split)
        if expected is not None and expected != data.num_tokens:
            shards = len(data.paths)
            where = data.paths[0] if shards == 1 else f"the {split} split of {data_dir} ({shards} shards)"
            raise UserError(f"{where} holds {data.num_tokens:,} {meta.dtype} tokens but {data_dir}/meta.json says "
                            f"{expected:,}: a file is truncated or meta.json describes other data")
        data.num_windows(cfg.block_size)
    if cfg.window_start == "document":
        folder.document_boundary("window_start document")
    vocab = (f"vocab_size {meta.vocab_size:,} of {data_dir}/meta.json" if meta.found
             else f"{meta.vocab_size:,}, GPT-2's vocabulary, assumed without a meta.json")
    for path in (path for data in splits for path in data.paths):  # the cheap checks first: this reads every token
        largest = largest_id(path, meta.dtype)  # once, see token_scan
        if largest >= meta.vocab_size:
            misread = largest > 0xFFFF and meta.dtype == "uint32"  # how a uint16 file read as uint32 looks
            cause = ("if the file holds uint16 tokens, meta.json's dtype uint32 is wrong" if misread
                     else "the data was made with a larger vocabulary than that")
            raise UserError(f"{path} holds token id {largest:,}, but ids must be below {vocab}; {cause}")


def is_hf_folder(init_from) -> bool:
    """Whether init_from names a HuggingFace folder (or nothing at all: refused as one) rather than a checkpoint
    of ours or a run's out_dir."""
    return (Path(init_from) / "config.json").is_file() or not Path(init_from).is_dir()


def init_weights(init_from) -> tuple:
    """(model shape, a function that gives the weights) of init_from: a HuggingFace Gemma 3 folder, or a checkpoint
    of ours (a checkpoint folder or a run's out_dir: its newest), as fine-tuning starts from a pretraining run."""
    if is_hf_folder(init_from):
        return hf_model_config(init_from), lambda: hf_state_dict(init_from)
    trained = TrainedModel(init_from)
    return trained.cfg.model, trained.model.state_dict


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


def has_loss_mask(mixture: Mixture) -> bool:
    """Whether a source has a loss mask (conversations): a step's loss is then the mean over its trained targets."""
    return any(source.folder.meta.loss_mask is not None for source in mixture.sources)


def new_model(cfg: TrainConfig, mixture: Mixture) -> torch.nn.Module:
    """The model to train on `mixture`, initialized: documents masked at its separator as document_mask says, the
    loss over the trained targets where a source has a loss mask. A shape too large for memory is a UserError
    rather than the allocator's traceback (valid shapes have no other upper bound: that depends on the machine)."""
    try:
        return training_model(cfg, masking_separator(cfg.document_mask, mixture.first.folder),
                              masked_loss=has_loss_mask(mixture))
    except (RuntimeError, MemoryError) as err:  # torch's allocators raise RuntimeError (OutOfMemoryError on a GPU)
        raise UserError(f"cannot allocate the model of this config's model.* shape: {first_line(err)}; "
                        "choose a smaller model") from None


def start_from(cfg: TrainConfig, accelerator: Accelerator, optimizer: Optimizers, resume_from: Path | None,
               step: int) -> None:
    """Load the checkpoint being resumed into the prepared objects; or, starting afresh, seed the evaluation
    batches per process."""
    if resume_from:
        hyperparameters = group_hyperparameters(optimizer)
        on_every_process(accelerator, lambda: load_state(accelerator, resume_from))
        # this config's weight decay and betas, not the checkpoint's; the rate is this config's schedule at `step`:
        # the schedulers loaded their step count alone
        restore_group_hyperparameters(optimizer, hyperparameters)
        accelerator.step = 0  # a checkpoint lies between optimizer steps, whatever micro-batch count it saved
        accelerator.print(f"resuming from {resume_from} at step {step}")
    else:
        if cfg.resume == "auto":
            accelerator.print(f"no checkpoint in {cfg.out_dir} yet: starting from step 0")
        set_seed(cfg.seed, device_specific=True)  # each process draws its own evaluation batches

