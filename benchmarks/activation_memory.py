"""Activation memory per token of a config's model, measured on the CPU, to predict GPU memory.

    python benchmarks/activation_memory.py [--config configs/gemma3_270m.json] [--layers 6]

Counts the bytes a bf16-autocast forward pass keeps for the backward pass (weights aside) at two
batch sizes, so the difference is per token. Eager, and as torch.compile's partitioner keeps them
(backend aot_eager_decomp_partition: the same recompute choices as inductor, without code
generation) at several `activation_memory_budget`s, with and without checkpoint_layers. A compiled
model is compiled before counting: compiling while the counting hooks are active gives another
graph. Then the predicted peak at a micro-batch: the fp32 weights, gradients and AdamW moments plus
the activations (loss buffers and the allocator's slack are not in it).
"""

from __future__ import annotations

import argparse

import torch
from torch._functorch import config as functorch_config

from accel_train.models.activation_memory import saved_activation_bytes
from accel_train.config import load_config
from accel_train.models.build import build_model

BATCHES = (4, 8)  # per-token figures from these two agree with 8 and 16 within 5%
WAYS = [  # (name, backend, checkpoint_layers, activation_memory_budget)
    ("eager", "eager", False, 1.0),
    ("compiled", "aot_eager_decomp_partition", False, 1.0),
    ("compiled, budget 0.5", "aot_eager_decomp_partition", False, 0.5),
    ("compiled, budget 0.2", "aot_eager_decomp_partition", False, 0.2),
    ("eager, checkpoint_layers", "eager", True, 1.0),
    ("compiled, checkpoint_layers", "aot_eager_decomp_partition", True, 1.0),
]


def kept_bytes(cfg, backend: str, checkpoint_layers: bool, batch: int) -> int:
    """Bytes kept for the backward pass by a fresh model (compiled first, outside the count)."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = build_model(cfg.model, checkpoint_layers=checkpoint_layers)
    forward = model if backend == "eager" else torch.compile(model, backend=backend, dynamic=False)
    idx = torch.randint(cfg.model.vocab_size, (batch, cfg.block_size + 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if backend != "eager":
            forward(idx[:, :-1], idx[:, 1:])[1].backward()
        return saved_activation_bytes(model, lambda: forward(idx[:, :-1], idx[:, 1:]))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/gemma3_270m.json")
    parser.add_argument("--layers", type=int, default=6, help="layers of the measured copy (per-layer cost scales)")
    parser.add_argument("--micro_batch", type=int, default=256)
    parser.add_argument("--vocab_size", type=int, default=262_144, help="vocabulary for the predicted peak")
    args = parser.parse_args()
    # The measured copy has a small vocabulary: the vocabulary sizes only the loss's fixed buffers, not what
    # a token keeps, and at these small batches large fixed buffers would skew the partitioner's budget.
    cfg = load_config(["--config", args.config, "--model.num_hidden_layers", str(args.layers),
                       "--model.vocab_size", "4096"])
    full = load_config(["--config", args.config, "--model.vocab_size", str(args.vocab_size)])
    with torch.device("meta"):
        state = build_model(full.model).num_params(non_embedding=False) * 4 * 4  # weights, grads, 2 moments, fp32
    tokens = args.micro_batch * cfg.block_size
    print(f"{args.config}: fp32 weights, gradients and AdamW state {state / 2**30:.2f} GiB "
          f"(vocabulary {args.vocab_size:,}); micro-batch {args.micro_batch} x {cfg.block_size}")
    small, large = BATCHES
    for name, backend, checkpoint_layers, budget in WAYS:
        functorch_config.activation_memory_budget = budget
        per_token = (kept_bytes(cfg, backend, checkpoint_layers, large)
                     - kept_bytes(cfg, backend, checkpoint_layers, small)) / ((large - small) * cfg.block_size)
        per_token_layer = per_token / args.layers
        activations = per_token_layer * full.model.num_hidden_layers * tokens
        print(f"  {name:<28} {per_token_layer / 1024:6.1f} KiB per token per layer -> {activations / 2**30:6.2f} GiB; "
              f"predicted peak {(state + activations) / 2**30:6.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
