"""The evaluations a training run makes at its evaluation steps: each source's validation losses (and bits per
byte), combined by the mixture's weights, and the multiple-choice task scores, as metrics for the step's row."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch

from accel_train.evaluation.validation import split_losses

if TYPE_CHECKING:
    from accel_train.training.start import Run


def evaluate(run: Run, step: int, stop_requested: Callable[[], bool], print_line) -> dict | None:
    """The evaluations due at step `step` (validation losses, multiple-choice task scores), as metrics to add to
    its row; None if `stop_requested()` (the same answer on every process, asked batch by batch) cut them short.
    They are one unit: cut short, all of them are owed, and the CPU generator that draws their batches is rewound
    to where they began, so that the checkpoint saved next redoes exactly the evaluations an uninterrupted run
    makes. The prepared model autocasts by itself: no extra context.

    A compiled model runs them eagerly (docs/speed.md, "Compile"): under no_grad, and for scoring's logits and
    shapes, each would be a graph of its own, a recompile that costs minutes on a GPU to speed up a few hundred
    forward passes. The stance keeps every wrapper (DDP, FSDP's hooks, autocast) and drops only the compiling."""
    cfg = run.cfg
    rng = torch.get_rng_state()
    per_source = scores = {}
    with torch.compiler.set_stance("force_eager"):
        if cfg.eval_due(step):
            per_source = source_losses(run, stop_requested)
        if per_source is not None and cfg.tasks_due(step):
            scores = score_tasks(run, stop_requested)
    if per_source is None or scores is None:
        torch.set_rng_state(rng)
        return None
    if scores:
        print_line(f"step {step}: " + ", ".join(f"{key} {value:.4f}" for key, value in scores.items()))
    return {**scores, **(validation_metrics(run, step, per_source, print_line) if per_source else {})}


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


def validation_metrics(run: Run, step: int, per_source: list[dict], print_line) -> dict:
    """The validation losses (and bits per byte) as metrics; the best validation loss kept in the state."""
    trainer_state = run.trainer_state
    evaluations = mixed_losses(run, per_source)
    if trainer_state.best_val_loss is None or evaluations["val_loss"] < trainer_state.best_val_loss:
        trainer_state.best_val_loss = evaluations["val_loss"]
    print_line(f"step {step}: train {evaluations['train_eval_loss']:.4f}, val {evaluations['val_loss']:.4f}")
    return evaluations


def source_losses(run: Run, stop_requested) -> list[dict] | None:
    """split_losses of each source in turn ({'train', 'val'} each); None where a stop signal cut one short."""
    cfg, device, per_source = run.cfg, run.accelerator.device, []
    for source in run.mixture.sources:
        losses = split_losses(run.model, source.folder, cfg.eval_iters, cfg.block_size, cfg.batch_size, device,
                              stop_requested=stop_requested)
        if losses is None:
            return None
        per_source.append(losses)
    return per_source


def mixed_losses(run: Run, per_source: list[dict]) -> dict:
    """The metrics of an evaluation: val_loss, train_eval_loss and val_bpb averaged over the sources with the
    mixture's weights (one folder: its own), and for a mixture each source's as val_loss/NAME, val_bpb/NAME."""
    sources = run.mixture.sources
    weights = [source.weight for source in sources]
    per_bytes = [source.folder.meta.tokens_per_byte("val") for source in sources]
    bpb = [losses["val"] / math.log(2) * per_byte if per_byte else None
           for losses, per_byte in zip(per_source, per_bytes)]
    out = {"val_loss": float(sum(w * losses["val"] for w, losses in zip(weights, per_source))),
           "train_eval_loss": float(sum(w * losses["train"] for w, losses in zip(weights, per_source)))}
    if None not in bpb:
        out["val_bpb"] = float(sum(w * b for w, b in zip(weights, bpb)))
    names = run.mixture.metric_names
    out.update({f"val_loss/{name}": losses["val"] for name, losses in zip(names, per_source)})
    out.update({f"val_bpb/{name}": b for name, b in zip(names, bpb) if b is not None})
    return out
