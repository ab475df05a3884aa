"""The cost of the masked loss (fine-tuning on conversations) against the plain loss, per training step.

    python benchmarks/masked_loss.py [--device cpu|cuda] [--repeats 20]

Two measurements, each the median of `--repeats` alternated runs in this process:
- a whole forward and backward pass of the demo's model (configs/demo.json, 16 x 128 tokens, fused loss), built
  with `masked_loss` (half its targets IGNORE, and the step's token weights computed as train_step does) and
  without it, on the same batch;
- the fused loss alone (`linear_cross_entropy`, forward and backward) at the GPT-2 vocabulary, hidden size 640
  and 1,024 tokens, with and without `ignore_index`.
On the CPU the time is `time.process_time` (other programs on the machine count less); on a GPU, wall time
after a synchronization.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from accel_train.config import load_config  # noqa: E402
from accel_train.data.tokens import IGNORE  # noqa: E402
from accel_train.models.build import build_model  # noqa: E402
from accel_train.models.losses import linear_cross_entropy  # noqa: E402


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def median_times(cases: dict, device: torch.device, repeats: int) -> dict:
    """{name: median seconds} of each case's function, the cases alternated so that drift hits them alike."""
    times = {name: [] for name in cases}
    for name, step in cases.items():  # warm up
        step()
    for _ in range(repeats):
        for name, step in cases.items():
            start = clock(device)
            step()
            times[name].append(clock(device) - start)
    return {name: statistics.median(values) for name, values in times.items()}


def model_cases(device: torch.device) -> dict:
    cfg = load_config(["--config", str(REPO / "configs" / "demo.json")])
    torch.manual_seed(0)
    x = torch.randint(0, 257, (cfg.batch_size, cfg.block_size), device=device)
    y = torch.randint(0, 257, (cfg.batch_size, cfg.block_size), device=device)
    masked_y = y.masked_fill(torch.rand(y.shape, device=device) < 0.5, IGNORE)
    plain, masked = (build_model(cfg.model, masked_loss=flag).to(device) for flag in (False, True))
    masked.load_state_dict(plain.state_dict())

    def plain_step():
        plain(x, y)[1].backward()

    def masked_step():
        counts = torch.stack([(masked_y != IGNORE).sum()])  # train_step's token weights, one process
        weight = counts * 1 / counts.sum().clamp(min=1)
        (masked(x, masked_y)[1] * weight[0]).backward()

    return {"model step, plain": plain_step, "model step, masked": masked_step}


def loss_cases(device: torch.device) -> dict:
    torch.manual_seed(0)
    hidden = torch.randn(1024, 640, device=device, requires_grad=True)
    weight = (torch.randn(50257, 640, device=device) * 0.02).requires_grad_()
    targets = torch.randint(0, 50257, (1024,), device=device)
    masked_targets = targets.masked_fill(torch.rand(1024, device=device) < 0.5, IGNORE)
    return {"fused loss, plain": lambda: linear_cross_entropy(hidden, weight, targets).backward(),
            "fused loss, masked": lambda: linear_cross_entropy(hidden, weight, masked_targets,
                                                               ignore_index=IGNORE).backward()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    for cases in (model_cases(device), loss_cases(device)):
        times = median_times(cases, device, args.repeats)
        (plain, plain_s), (masked, masked_s) = times.items()
        print(f"{plain}: {plain_s * 1e3:.1f} ms; {masked}: {masked_s * 1e3:.1f} ms "
              f"({(masked_s / plain_s - 1) * 100:+.1f}%)", flush=True)


if __name__ == "__main__":
    main()
