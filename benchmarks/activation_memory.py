"""Activation memory per token of a config's model, measured on the CPU, to predict GPU memory.

    python benchmarks/activation_memory.py [--config configs/gemma3_270m.json] [--layers 6]

Counts the bytes a bf16-autocast forward pass keeps for the backward pass (weights aside) at two
batch sizes, so the difference is per token. Eager, and as torch.compile's partitioner would keep
them (backend aot_eager_decomp_partition: the same recompute choices as inductor, without code
generation), with and without checkpoint_layers. Then the predicted peak at a micro-batch: the
fp32 weights, gradients and AdamW moments plus the activations (loss buffers and the allocator's
slack are not in it).
"""

from __future__ import annotations

import argparse

import torch

from accel_train.activation_memory import saved_activation_bytes
from accel_train.config import load_config
from accel_train.model import Gemma3


def kept_bytes(model, forward, batch: int, block: int) -> int:
    idx = torch.randint(model.config.vocab_size, (batch, block + 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return saved_activation_bytes(model, lambda: forward(idx[:, :-1], idx[:, 1:]))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gemma3_270m.json")
    parser.add_argument("--layers", type=int, default=6, help="layers of the measured copy (per-layer cost scales)")
    parser.add_argument("--micro_batch", type=int, default=256)
    parser.add_argument("--vocab_size", type=int, default=262_144, help="vocabulary for the predicted peak")
    args = parser.parse_args()
    cfg = load_config(["--config", args.config, "--model.num_hidden_layers", str(args.layers)])
    full = load_config(["--config", args.config, "--model.vocab_size", str(args.vocab_size)])
    with torch.device("meta"):
        state = Gemma3(full.model).num_params(non_embedding=False) * 4 * 4  # weights, grads, 2 moments, fp32
    tokens = args.micro_batch * cfg.block_size
    print(f"{args.config}: fp32 weights, gradients and AdamW state {state / 2**30:.2f} GiB "
          f"(vocabulary {args.vocab_size:,}); micro-batch {args.micro_batch} x {cfg.block_size}")
    for checkpoint_layers in (False, True):
        for backend in ("eager", "aot_eager_decomp_partition"):
            torch.manual_seed(0)
            model = Gemma3(cfg.model, checkpoint_layers=checkpoint_layers)
            forward = model if backend == "eager" else torch.compile(model, backend=backend, dynamic=False)
            per_token = (kept_bytes(model, forward, 4, cfg.block_size) - kept_bytes(model, forward, 2, cfg.block_size))
            per_token_layer = per_token / (2 * cfg.block_size) / args.layers
            activations = per_token_layer * full.model.num_hidden_layers * tokens
            print(f"  {backend:<27} checkpoint_layers={checkpoint_layers!s:<5} {per_token_layer / 1024:6.1f} KiB "
                  f"per token per layer -> {activations / 2**30:6.2f} GiB; predicted peak "
                  f"{(state + activations) / 2**30:6.2f} GiB")


if __name__ == "__main__":
    main()
