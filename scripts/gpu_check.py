"""Every GPU check of the speed work in one run, about 8 minutes on one H100 or H200.

    python scripts/gpu_check.py                # the real checks; results under $OUT (else out/gpu_check)
    python scripts/gpu_check.py --tiny         # the same checks on a tiny model: proves the script anywhere
    python scripts/gpu_check.py --only bench   # one check again
    python scripts/gpu_check.py --budget_s 520 # as many checks as fit in one 10-minute device call

Checks, most important first, each a subprocess with its own time limit, so one failure or
timeout still leaves the others' results:
  bench   `python -m accel_train.bench` on configs/gemma3_270m.json beside the nanoGPT-style baseline, then a
          profile of 3 more steps: where the time goes
  vocab   the official 262,144-token vocabulary at micro-batch 256: peak GPU memory under 20 GiB
          (while not, again with activation_memory_budget 0.5, then checkpoint_layers; all kept)
  bf16    a bf16 run of 300 steps, compiled and not (side by side): the loss falls, and both runs'
          losses agree within bf16 noise
  tests   tests/test_cuda.py (no syncs, flash and FlexAttention kernels, the bf16 loss), test_losses.py
          and test_attention.py
  ablate  (only with --only ablate) our loop alone with one setting changed at a time: what each pays
Writes <phase>.log, the benchmarks' JSON, summary.json and summary.md (rows for benchmarks/RESULTS.md),
the summaries after every check. With --budget_s, a check is cut at the budget's end and those after
it are not run (both count as failed, exit status 124).
Exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import torch  # noqa: E402  (after the path set-up)

from accel_train.data.demo_corpus import write_demo_data  # noqa: E402
from accel_train.training.tracking import read_metrics  # noqa: E402
from helpers import TINY_MODEL as TINY  # noqa: E402  (the test suite's tiny model)

VOCAB_LIMIT_GIB = 20.0
LOSS_AGREEMENT = 0.03  # relative: compiled and eager bf16 runs drift apart by rounding, not by more
LOSS_DROP = 0.5  # nats the bf16 run's loss must fall
TIME_SCALE = 1.0  # --tiny on a CPU: slower than a GPU even for a tiny model, so 4x the time limits
AUTOTUNE_TIME = 1.6  # max-autotune compiles take longer: its runs get this multiple of the time limit
DEADLINE = math.inf  # time.monotonic() by which every check must have ended (--budget_s)


def time_limit(seconds: float) -> float:
    """A check's own limit, scaled for --tiny on a CPU and cut to what is left of --budget_s."""
    return min(seconds * TIME_SCALE, DEADLINE - time.monotonic())


def run(name: str, cmd: list[str], out: Path, timeout: float, env: dict | None = None) -> tuple[int, float]:
    """Run cmd with its output in out/<name>.log; (exit status, or 124 on timeout; seconds)."""
    timeout = time_limit(timeout)
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        if timeout < 1:
            log.write("not run: --budget_s is spent\n")
            return 124, 0.0
        try:
            status = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                    env={**os.environ, "WANDB_MODE": "offline", **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            status = 124
    return status, time.perf_counter() - start


def bench_phase(args, out: Path, data: Path) -> dict:
    json_path = out / "bench_gemma3_270m.json"
    config = ["--config", "configs/demo.json", *TINY, "--steps", "2", "--baseline_steps", "1"] if args.tiny else \
             ["--config", "configs/gemma3_270m.json", "--steps", "10", "--baseline_steps", "2"]
    cmd = [sys.executable, "-m", "accel_train.bench", *config, "--profile_steps", "3", "--data_dir", str(data),
           "--json", str(json_path)]
    status, seconds = run("bench", cmd, out, timeout=240)
    result = {"status": status, "seconds": seconds, "command": " ".join(cmd[1:])}
    if status == 0:
        bench = json.loads(json_path.read_text())
        result.update(ok=True, device=bench["device"], ours=bench["ours"], baseline=bench["baseline"],
                      speedup=bench["speedup"], profile=bench["profile"])
    return result


def bench_variants(prefix: str, base: list[str], variants: dict[str, list[str]], out: Path, data: Path,
                   timeout: float, enough=None) -> dict:
    """Our loop alone (`accel_train.bench`, no baseline), once per variant's extra arguments, in order;
    stops after the first variant whose `ours` figures satisfy `enough`, if given. Each row keeps its own
    status, time, command and figures."""
    rows, start = {}, time.perf_counter()
    for label, change in variants.items():
        name = f"{prefix}_" + re.sub(r"[^A-Za-z0-9.]+", "_", label)
        json_path = out / f"{name}.json"
        cmd = [sys.executable, "-m", "accel_train.bench", *base, *change, "--baseline", "off",
               "--data_dir", str(data), "--json", str(json_path)]
        autotuned = any("autotune" in arg for arg in change)  # a compile mode that times kernels first
        status, seconds = run(name, cmd, out, timeout=timeout * (AUTOTUNE_TIME if autotuned else 1))
        rows[label] = {"status": status, "seconds": seconds, "command": " ".join(cmd[1:]), "ok": status == 0}
        if status == 0:
            rows[label]["ours"] = ours = json.loads(json_path.read_text())["ours"]
            if enough is not None and enough(ours):
                break
    return {"status": 0, "seconds": time.perf_counter() - start, "command": f"one bench per {prefix} row",
            "rows": rows}


def vocab_phase(args, out: Path, data: Path) -> dict:
    """The official vocabulary at micro-batch 256 as configured, then, while over the memory limit, with
    the compiled model keeping half its activations, then with every layer recomputed."""
    base = ["--config", "configs/demo.json", *TINY, "--model.vocab_size", "4096", "--micro_batch", "8"] if args.tiny \
        else ["--config", "configs/gemma3_270m.json", "--model.vocab_size", "262144", "--micro_batch", "256"]
    ways = {"as configured": [], "activation_memory_budget 0.5": ["--activation_memory_budget", "0.5"],
            "checkpoint_layers": ["--checkpoint_layers", "true"]}

    def under_limit(ours: dict) -> bool:
        return ours["peak_memory_gib"] is None or ours["peak_memory_gib"] < VOCAB_LIMIT_GIB

    result = bench_variants("vocab", [*base, "--steps", "3"], ways, out, data, timeout=180, enough=under_limit)
    for row in result["rows"].values():
        row["ok"] = "ours" in row and under_limit(row["ours"])
    result["ok"] = any(row["ok"] for row in result["rows"].values())
    return result


def bf16_phase(args, out: Path, data: Path) -> dict:
    """The same bf16 run compiled and eager, at once (only their losses are compared, not their speed)."""
    steps, batch = (20, "4") if args.tiny else (300, "16")
    common = [str(REPO / "accel_train" / "train.py"), "--data_dir", str(data), "--dtype", "bfloat16",
              "--max_iters", str(steps), "--warmup_steps", str(steps // 10), "--learning_rate", "3e-3",
              "--min_lr", "3e-4", "--batch_size", batch, "--gradient_accumulation_steps", "2", "--micro_batch", batch,
              "--log_interval", str(max(1, steps // 30)), "--eval_interval", str(steps), "--eval_iters", "5",
              "--checkpoint_interval", "0", "--sample_tokens", "0", "--plot", "false"]
    common += ["--config", "configs/demo.json", *TINY] if args.tiny else ["--config", "configs/gemma3_270m.json"]
    timeout = time_limit(240)
    procs, start = {}, time.perf_counter()
    for mode in ("on", "off"):
        cmd = [sys.executable, *common, "--compile", mode, "--out_dir", str(out / f"bf16_compile_{mode}")]
        with open(out / f"bf16_compile_{mode}.log", "w") as log:  # the child keeps its own copy
            log.write(" ".join(cmd) + "\n\n")
            log.flush()
            procs[mode] = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, "WANDB_MODE": "offline"})
    status = {}
    for mode, proc in procs.items():
        try:
            status[mode] = proc.wait(timeout=max(0.1, timeout - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            status[mode] = 124
    result = {"status": max(status.values()), "seconds": time.perf_counter() - start,
              "command": " ".join(["python", *common, "--compile on|off"])}
    if result["status"] == 0:
        rows = {mode: read_metrics(out / f"bf16_compile_{mode}") for mode in procs}
        tail = {mode: sum(r["loss"] for r in rows[mode][-3:]) / 3 for mode in rows}
        first, last = rows["on"][0]["loss"], rows["on"][-1]["loss"]
        gap = abs(tail["on"] - tail["off"]) / tail["off"]
        result.update(first_loss=first, last_loss=last, compiled_tail_loss=tail["on"], eager_tail_loss=tail["off"],
                      relative_gap=gap, val_loss=rows["on"][-1].get("val_loss"),
                      compiled_tokens_per_s=rows["on"][-1]["tokens_per_s"],
                      ok=last < first - LOSS_DROP and gap < LOSS_AGREEMENT)
    return result


def tests_phase(args, out: Path, data: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py", "tests/test_losses.py",
           "tests/test_attention.py"]
    status, seconds = run("tests", cmd, out, timeout=300)
    return {"status": status, "seconds": seconds, "command": " ".join(cmd[1:]), "ok": status == 0}


def ablations(tiny: bool) -> dict[str, list[str]]:
    """One setting changed at a time, most telling first: a vocabulary padded to a multiple of 64 (what
    aligned output-projection matmuls would gain), a larger and a smaller micro-batch, the plain loss,
    autotuned matmuls."""
    larger, smaller = ("32", "8") if tiny else ("512", "128")
    return {"as configured": [], "vocab 50304": ["--model.vocab_size", "50304"],
            f"micro-batch {larger}": ["--micro_batch", larger], f"micro-batch {smaller}": ["--micro_batch", smaller],
            "plain loss": ["--fused_loss", "false"], "max-autotune": ["--compile_mode", "max-autotune-no-cudagraphs"]}


def ablate_phase(args, out: Path, data: Path) -> dict:
    """The benchmark of our loop alone, once per setting of `ablations`."""
    base = ["--config", "configs/demo.json", *TINY, "--steps", "2"] if args.tiny else \
           ["--config", "configs/gemma3_270m.json", "--steps", "5"]
    result = bench_variants("ablate", base, ablations(args.tiny), out, data, timeout=150)
    result["ok"] = all(r["ok"] for r in result["rows"].values())
    return result


PHASES = {"bench": bench_phase, "vocab": vocab_phase, "bf16": bf16_phase, "tests": tests_phase,
          "ablate": ablate_phase}
DEFAULT_PHASES = ("bench", "vocab", "bf16", "tests")


def summary_markdown(results: dict, card: str, date: str) -> str:
    lines = [f"# GPU check, {card}, {date}", "", "| check | figure | ok | seconds | command |",
             "| --- | --- | --- | --- | --- |"]

    def row(name, figure, r):
        lines.append(f"| {name} | {figure} | {r.get('ok', False)} | {r['seconds']:.0f} | `{r['command']}` |")

    def figure(x: dict) -> str:
        mfu = f"{100 * x['mfu']:.1f}% MFU" if x.get("mfu") is not None else "MFU n/a"
        memory = f", peak {x['peak_memory_gib']:.2f} GiB" if x.get("peak_memory_gib") is not None else ""
        return f"{x['tokens_per_s']:,.0f} tokens/s, {mfu}, micro-batch {x['micro_batch']}{memory}"

    for name, r in results.items():
        if r["status"] != 0:
            row(name, f"exit status {r['status']} (see {name}*.log)", r)
        elif name == "bench":
            for who in ("baseline", "ours"):
                row(f"bench: {who}", figure(r[who]), r)
            row("bench: ratio", f"{r['speedup']:.2f}x", r)
            top = "; ".join(f"{op['name'][:60]} {100 * op['share']:.1f}%" for op in r["profile"][:8])
            row("bench: profile", top, r)
        elif "rows" in r:
            for label, v in r["rows"].items():
                row(f"{name}: {label}", figure(v["ours"]) if "ours" in v else f"exit status {v['status']}", v)
        elif name == "bf16":
            row(name, f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}; compiled {r['compiled_tail_loss']:.4f} "
                f"vs eager {r['eager_tail_loss']:.4f} ({100 * r['relative_gap']:.2f}%)", r)
        else:
            row(name, "passed" if r["ok"] else "failed", r)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny model, to prove the script on any machine")
    parser.add_argument("--only", choices=PHASES, action="append", help="run only this check (repeatable)")
    parser.add_argument("--budget_s", type=float, default=math.inf,
                        help="end every check within this many seconds: a check that is cut short fails")
    args = parser.parse_args()
    global TIME_SCALE, DEADLINE
    TIME_SCALE = 4.0 if args.tiny and not torch.cuda.is_available() else 1.0
    DEADLINE = time.monotonic() + args.budget_s
    out = Path(os.environ.get("OUT") or REPO / "out" / "gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    date = datetime.date.today().isoformat()
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        data = Path(tmp) / "demo"  # every check reads the built-in corpus: speed does not depend on the text
        write_demo_data(data)
        for name in args.only or DEFAULT_PHASES:
            print(f"gpu_check: {name} ...", flush=True)
            results[name] = PHASES[name](args, out, data)
            print(f"gpu_check: {name}: {'ok' if results[name].get('ok') else 'FAILED'} "
                  f"in {results[name]['seconds']:.0f} s", flush=True)
            # after every check, so that a run cut short from outside still leaves what it measured
            (out / "summary.json").write_text(json.dumps({"card": card, "date": date, "tiny": args.tiny,
                                                          "torch": torch.__version__, "results": results},
                                                         indent=2) + "\n")
            markdown = summary_markdown(results, card, date)
            (out / "summary.md").write_text(markdown)
    print(markdown)
    sys.exit(0 if all(r.get("ok") for r in results.values()) else 1)


if __name__ == "__main__":
    main()
