"""Training throughput and MFU of a config, beside the nanoGPT-style baseline on the same model and data.

    python -m accel_train.bench --config configs/gemma3_270m.json [--steps 10] [--baseline_steps 2]
        [--baseline off] [--profile_steps 3] [--json FILE] [--key value ...]

Ours is `train.train()` itself: `steps` optimizer steps to warm up (compilation, allocator), then
`steps` timed ones, whose tokens/s and MFU are the run's metrics row at the end of them. With
`--profile_steps N`, torch.profiler then records N more steps (after one of its own warm-up), and
the operations taking the most time are printed and kept (the full table beside the JSON). The
baseline is the seed's nanoGPT-style loop, written here as its document describes it (bf16 autocast,
GradScaler, loss / accumulation, a scheduler step per micro-batch, its memmap-per-call get_batch,
micro-batch = batch_size) and timed in the same process on a fresh model of the same shape. Without data in the config's
data_dir, both read the built-in demo corpus (speed does not depend on the text).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.autograd import DeviceType

from accel_train.config import TrainConfig, read_command_line
from accel_train.data.demo_corpus import is_demo_folder, write_demo_data
from accel_train.data.meta import META_FILE
from accel_train.data.folder import open_split
from accel_train.errors import UserError, run_cli
from accel_train.models.flops import flops_per_token, mfu, peak_tflops
from accel_train.planning.preflight import plan_this_run
from accel_train.training.micro_batch import StepPlan, plan_step
from accel_train.models.build import build_model
from accel_train.declarations import declare
from accel_train.training.tracking import read_metrics
from accel_train.training.loop import train
from accel_train.training.start import make_accelerator, new_model

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def baseline_get_batch(path: Path, block_size: int, batch_size: int, dtype=np.uint16):
    """The baseline's get_batch, on the CPU: a fresh memmap per call, a Python loop of slices, two stacks."""
    data = np.memmap(path, dtype=dtype, mode="r")
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
    return x, y


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    """Return cached blocks and start a new peak, so the next measurement is its own."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def baseline_loop(cfg: TrainConfig, plan: StepPlan, device: torch.device, optimizer_steps: int) -> dict:
    """The nanoGPT-style baseline loop for one warm-up and `optimizer_steps` timed optimizer steps."""
    mixed_precision = plan.mixed_precision
    ctx = (torch.autocast(device.type, dtype=AUTOCAST[mixed_precision]) if mixed_precision in AUTOCAST
           else contextlib.nullcontext())
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, fused_loss=False).to(device)  # the baseline's model: full logits, then cross-entropy
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, total_iters=cfg.warmup_steps)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.max_iters - cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[cfg.warmup_steps])
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision == "fp16")
    train = open_split(str(cfg.data_dir), "train")  # the baseline reads one file, as nanoGPT does: the largest shard
    path, dtype = max(train.paths, key=lambda p: p.stat().st_size), train.dtype
    accum = cfg.gradient_accumulation_steps

    def micro_batch(epoch: int) -> torch.Tensor:
        X, y = baseline_get_batch(path, cfg.block_size, cfg.batch_size, dtype)
        if device.type == "cuda":
            X, y = X.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        with ctx:
            logits, loss = model(X, y)
            loss = loss / accum
        scaler.scale(loss).backward()
        if (epoch + 1) % accum == 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return loss

    for epoch in range(accum):  # warm-up
        micro_batch(epoch)
    synchronize(device)
    start = time.perf_counter()
    for epoch in range(accum, accum * (1 + optimizer_steps)):
        loss = micro_batch(epoch)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"tokens_per_s": optimizer_steps * cfg.tokens_per_step / elapsed, "step_time_s": elapsed / optimizer_steps,
            "micro_batch": cfg.batch_size, "loss": loss.item() * accum, "peak_memory_gib": peak_memory_gib(device)}


def has_data(cfg: TrainConfig) -> bool:
    """Whether training finds data in the config's data_dir (or writes the demo corpus there itself)."""
    found = any((Path(cfg.data_dir) / name).exists() for name in ("train.bin", META_FILE))
    return found or (cfg.demo_data and is_demo_folder(cfg.data_dir))


def bench_config(cfg: TrainConfig, steps: int, work: Path, profile_steps: int = 0) -> TrainConfig:
    """A new config, `cfg` as the benchmark runs it: 2 x steps optimizer steps into a scratch folder (and the
    profiled ones after them), one row per `steps`, one evaluation batch at the end of the timed steps
    and at the end of the run, one checkpoint at the end, nothing drawn or sampled."""
    data_dir = cfg.data_dir
    if not has_data(cfg):
        print(f"bench: no data in {data_dir}: using the built-in demo corpus")
        data_dir = str(work / "data")
        write_demo_data(data_dir)
    return dataclasses.replace(
        cfg, data_dir=data_dir, out_dir=str(work / "run"), resume="", tracker="none",
        max_iters=2 * steps + (1 + profile_steps if profile_steps else 0), log_interval=steps,
        eval_interval=2 * steps, eval_iters=1, warmup_steps=min(cfg.warmup_steps, steps), checkpoint_interval=0,
        plot=False, sample_tokens=0).validate()


def top_operations(profiler: torch.profiler.profile, on_cuda: bool, key: str, steps: int,
                   count: int = 12) -> list[dict]:
    """The operations that took the most self time (`key`), per optimizer step. On a GPU these are its kernels
    (the operators that launched them carry the same time, and are left out, as torch's table total does)."""
    events = profiler.key_averages()
    if on_cuda:
        events = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:count]
    return [{"name": e.key, "ms_per_step": getattr(e, key) / 1e3 / steps, "share": getattr(e, key) / total,
             "calls_per_step": e.count / steps} for e in ranked]


def profiled_train(cfg: TrainConfig, on_cuda: bool, timed_until: int, profile_steps: int,
                   table_path: Path) -> list[dict]:
    """train(cfg) with torch.profiler recording the `profile_steps` steps after `timed_until` + 1; the
    table of every operation goes to `table_path`, the top ones are returned."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])
    schedule = torch.profiler.schedule(wait=timed_until, warmup=1, active=profile_steps, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule) as profiler:
        train(cfg, after_step=profiler.step)
    key = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    table_path.write_text(profiler.key_averages().table(sort_by=key, row_limit=60) + "\n")
    return top_operations(profiler, on_cuda, key, profile_steps)


def run_bench(cfg: TrainConfig, steps: int, baseline_steps: int, with_baseline: bool, command: str,
              profile_steps: int = 0, profile_table: Path | None = None) -> dict:
    accelerator = make_accelerator(cfg)
    if accelerator.num_processes > 1:
        raise UserError("the benchmark measures one device: run it with python, not accelerate launch")
    device = accelerator.device
    mixture = cfg.mixture()
    memory_plan = plan_this_run(cfg, accelerator, lambda: new_model(cfg, mixture))
    plan = plan_step(cfg, accelerator, lambda: new_model(cfg, mixture), memory_plan.largest_micro_batch)
    cfg = dataclasses.replace(cfg, micro_batch=plan.micro_batch)  # train() takes it as given: no second search
    flops_tok, peak = flops_per_token(cfg.model, cfg.block_size), peak_tflops(device, cfg.peak_tflops)
    result = {"date": datetime.date.today().isoformat(), "command": command,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "flops_per_token": flops_tok, "peak_tflops": peak}
    if with_baseline:
        reset_memory(device)
        baseline = baseline_loop(cfg, plan, device, baseline_steps)
        baseline["mfu"] = mfu(baseline["tokens_per_s"], flops_tok, peak) if peak else None
        result["baseline"] = baseline
    reset_memory(device)
    if profile_steps:
        result["profile"] = profiled_train(cfg, device.type == "cuda", 2 * steps, profile_steps, profile_table)
    else:
        train(cfg)
    row = next(r for r in read_metrics(cfg.out_dir) if r["step"] == 2 * steps)  # the timed window's row
    result["config"] = cfg.to_dict()
    result["ours"] = {"tokens_per_s": row["tokens_per_s"], "mfu": row.get("mfu"),
                      "step_time_s": cfg.tokens_per_step / row["tokens_per_s"], "micro_batch": plan.micro_batch,
                      "micro_steps": plan.micro_steps, "compile": plan.compile,
                      "fused_adamw": plan.fused_adamw, "fused_loss": cfg.fused_loss, "loss": row["loss"],
                      "peak_memory_gib": peak_memory_gib(device)}
    if with_baseline:
        result["speedup"] = result["ours"]["tokens_per_s"] / result["baseline"]["tokens_per_s"]
    return result


def describe(name: str, r: dict) -> str:
    mfu_text = f"MFU {100 * r['mfu']:5.1f}%" if r.get("mfu") is not None else "MFU n/a (no peak known)"
    memory = f"peak {r['peak_memory_gib']:.2f} GiB" if r.get("peak_memory_gib") is not None else "peak n/a (CPU)"
    return (f"  {name:<8} {r['tokens_per_s']:12,.0f} tokens/s  {mfu_text}  step {r['step_time_s'] * 1000:9.1f} ms  "
            f"micro-batch {r['micro_batch']}  {memory}  loss {r['loss']:.4f}")


@dataclass
class BenchOptions:
    """The benchmark's own keys, declared as the config's are: parsed, checked and listed by the same code."""
    steps: int = declare(10, "warm-up optimizer steps, then as many timed ones", low=1)
    baseline_steps: int = declare(2, "timed optimizer steps of the nanoGPT-style baseline", low=1)
    baseline: str = declare("on", "time the baseline too", ("on", "off"))
    profile_steps: int = declare(0, "optimizer steps to profile after the timed ones", low=0)
    json: str = declare("", "where to write the results (empty: out/bench/<config>.json)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = read_command_line(argv, BenchOptions, "python -m accel_train.bench", __doc__)
    cfg, args = command.config, command.options
    if "data_dir" in command.typed and not has_data(cfg):  # typed, so not a fallback
        raise UserError(f"--data_dir {cfg.data_dir} holds no train.bin; prepare data there, or leave --data_dir out "
                        "to time the built-in demo corpus")
    json_path = Path(args.json or f"out/bench/{command.config_file.stem}.json")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="accel_train_bench_") as work:
        result = run_bench(bench_config(cfg, args.steps, Path(work), args.profile_steps), args.steps,
                           args.baseline_steps, args.baseline == "on", " ".join(["python -m accel_train.bench", *argv]),
                           args.profile_steps, json_path.with_suffix(".profile.txt"))
    print(f"bench: {result['device']}, {result['flops_per_token'] / 1e6:.1f} MFLOP per token, "
          f"{cfg.tokens_per_step:,} tokens per optimizer step")
    if "baseline" in result:
        print(describe("baseline", result["baseline"]))
    print(describe("ours", result["ours"]))
    if "speedup" in result:
        print(f"  ratio  {result['speedup']:.2f}x the baseline's tokens/s")
    if "profile" in result:
        print(f"  profile of {args.profile_steps} steps (self time per optimizer step; all operations in "
              f"{json_path.with_suffix('.profile.txt')}):")
        for op in result["profile"]:
            print(f"    {100 * op['share']:5.1f}%  {op['ms_per_step']:9.2f} ms  {op['name'][:90]}")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"bench: results in {json_path}")


if __name__ == "__main__":
    run_cli(main)
