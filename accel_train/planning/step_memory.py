"""What one process holds over a training step, attributed by torch's MemTracker (FSDPMemTracker under FSDP2) to
parameters, gradients, optimizer state, activations and temporary buffers.

The step is the trainer's (loop.train_step): a micro-batch's forward pass under the run's autocast, its backward
pass, gradient clipping over every parameter, the optimizers' step and zero_grad. It is measured after a first step
that made the optimizer state, and at the point of an accumulation window where most is held (FakeRun). Run on
fake tensors it allocates nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.distributed._tools.mem_tracker import MemTracker

# MemTracker's and FSDPMemTracker's categories, by the part of the plan they belong to (anything else, such as
# FSDP's unsharded parameters and communication buffers, inputs and temporaries, is a temporary buffer)
PARTS = {"Parameter": "parameters", "Sharded Param": "parameters", "Buffer": "parameters",
         "Gradient": "gradients", "Sharded Grad": "gradients", "Optstate": "optimizer", "OptState": "optimizer",
         "Activation": "activations"}
ORDER = ("parameters", "gradients", "optimizer", "activations", "temporary")


@dataclass(frozen=True)
class StepMemory:
    """Bytes on one process: `held`, each part at its largest (read after each forward pass, backward pass and
    optimizer step); `at_peak`, the parts live at the step's peak, which add up to `peak`."""
    held: dict[str, int]
    at_peak: dict[str, int]
    peak: int

    def plus_temporary(self, extra: int) -> StepMemory:
        """This memory with `extra` bytes held as a temporary buffer for the whole step (DDP's gradient buckets)."""
        held = {**self.held, "temporary": self.held["temporary"] + extra}
        return StepMemory(held, {**self.at_peak, "temporary": self.at_peak["temporary"] + extra}, self.peak + extra)


def by_part(snapshot: dict) -> dict[str, int]:
    """A MemTracker snapshot of one device ({category: bytes}, with a Total) summed into ORDER's parts."""
    parts = dict.fromkeys(ORDER, 0)
    for category, size in snapshot.items():
        name = getattr(category, "value", category)
        if name != "Total":
            parts[PARTS.get(name, "temporary")] += size
    return parts


def one_device(snapshot: dict) -> dict:
    """The one device's entry of a tracker snapshot ({} before anything is tracked)."""
    return next(iter(snapshot.values()), {})


class PeakOnly:
    """A tracker that keeps the process's peak and not each module's: MemTracker otherwise walks every module it
    has seen at every operation, which makes a plan of 18 layers take minutes."""

    def _update_peak_stats(self, peak_state) -> None:
        for device, snapshot in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < snapshot["Total"]:
                self._peak_mem[device] = snapshot["Total"]
                self._peak_mem_snap[device] = dict(snapshot)


class Tracker(PeakOnly, MemTracker):
    pass


def tracker_for(model: torch.nn.Module, optimizers: list) -> MemTracker:
    """FSDPMemTracker for a model FSDP2 wrapped (it names unsharded parameters and communication buffers), else
    MemTracker (both PeakOnly), already tracking the model and its optimizers' state."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

        (optimizer,) = optimizers  # FSDP runs AdamW alone (optim.OPTIMIZERS)
        tracker = type("FSDPTracker", (PeakOnly, FSDPMemTracker), {})(model, optimizer)
    else:
        tracker = Tracker()
    tracker.track_external(model, *optimizers)
    return tracker


class FakeRun:
    """A run's model and optimizers (built over its parameters, as the run builds them) after a first optimizer step,
    so that the optimizer state exists; `measure` then takes a step at any micro-batch (see the module's docstring).

    With accumulation (micro-batches smaller than `sequences_per_step`), each measured step is the last micro-batch
    of an optimizer step, its forward pass beside the gradients so far: under FSDP2, made by one sequence that goes
    first unsynchronized, as Accelerate's `accumulate` leaves all but the last micro-batch (FSDP2 then keeps whole
    unsharded gradients); otherwise, as zeros."""

    def __init__(self, model: torch.nn.Module, optimizers: list, block_size: int, vocab_size: int,
                 sequences_per_step: int, autocast_dtype: torch.dtype | None, grad_clip: float):
        self.model, self.optimizers, self.sequences_per_step = model, optimizers, sequences_per_step
        self.block_size, self.vocab_size, self.grad_clip = block_size, vocab_size, grad_clip
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sharded = hasattr(model, "set_requires_gradient_sync")  # FSDP2
        self.zero_gradients()  # a first update, on zero gradients, makes the optimizer state
        self.optimizer_step()

    def zero_gradients(self) -> None:
        """Gradients of zeros, as a backward pass leaves them (in place of one: each pass takes seconds)."""
        for p in self.params:
            p.grad = torch.zeros_like(p)

    def micro_batch(self, size: int, sync: bool, scale: float, after=lambda: None) -> None:
        """Forward and backward passes of `size` sequences, the loss times `scale`; `after()` after each."""
        if self.sharded:
            self.model.set_requires_gradient_sync(sync)
        idx = torch.randint(self.vocab_size, (size, self.block_size), device=self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            _, loss = self.model(idx, idx)
        after()
        (loss * scale).backward()
        after()

    def optimizer_step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or float("inf"))
        for optimizer in self.optimizers:
            optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def measure(self, micro_batch: int) -> StepMemory:
        """The memory of an optimizer step's last micro-batch of `micro_batch` sequences and its update."""
        micro_steps = self.sequences_per_step // micro_batch
        earlier = [(1, False)] if micro_steps > 1 and self.sharded else []  # FSDP2 keeps them unsharded: made so
        if micro_steps > 1 and not self.sharded:
            self.zero_gradients()  # the earlier micro-batches' gradients
        tracker = tracker_for(self.model, self.optimizers)
        held = dict.fromkeys(ORDER, 0)

        def note() -> None:
            for part, size in by_part(one_device(tracker.get_tracker_snapshot("current"))).items():
                held[part] = max(held[part], size)

        with tracker:  # FSDP2's unsharded gradients are tracked from their making
            for size, sync in earlier + [(micro_batch, True)]:
                tracker.reset_mod_stats()  # the trackers follow one forward pass of a module at a time
                self.micro_batch(size, sync, 1.0 / micro_steps, after=note)
            self.optimizer_step()
        note()
        peak = one_device(tracker.get_tracker_snapshot("peak"))
        return StepMemory(held, by_part(peak), peak.get("Total", 0))
