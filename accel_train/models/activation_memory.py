"""What a forward pass leaves for the backward pass: the bytes autograd keeps, weights aside.

Measured on the CPU, this predicts a GPU run's activation memory (it scales with tokens and layers).
"""

from __future__ import annotations

import torch


def saved_activation_bytes(model: torch.nn.Module, run):
    """(bytes of the distinct storages autograd saves while `run()` executes, excluding `model`'s
    parameters; what `run()` returned)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return sum(kept.values()), result
