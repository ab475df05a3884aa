"""Document masking on and off: tokens to the same validation loss, and the CPU cost of the masked attention.

    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken_cache python benchmarks/document_mask.py \
        [--text /work/shared/data/tinystories_sample.txt] [--work /tmp/tokens_to_loss] [--steps 150] [--lr 0.1]

The data, model and runs are those of benchmarks/tokens_to_loss.py (GPT-2 tokens renumbered densely, a 4-layer
Gemma 3 shape, AdamW + cosine at its best rate there, 16 x 128 tokens per step); the two runs differ only in
`document_mask`. Each run's own evaluations (the same windows, each model with its own attention) give the
tokens to reach the unmasked run's final validation loss. Then both final models are evaluated the same way,
on the same fixed validation windows, with and without the mask, and on whole documents alone (each
validation document from its end-of-text token on, cut at 128 tokens), which is what a model sees in use.

Last, the CPU time of a forward and backward pass of the masked model against the plain one, alternated in
this process (`time.process_time`, so other programs on the machine count less), at block 128 and 512.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from tokens_to_loss import MODEL, prepare, run, run_arguments, tokens_to_reach  # noqa: E402

from accel_train.config import load_config  # noqa: E402
from accel_train.data.meta import read_meta  # noqa: E402
from accel_train.data.folder import open_split  # noqa: E402
from accel_train.models.build import build_model  # noqa: E402
from accel_train.models.gemma3 import Gemma3  # noqa: E402
from accel_train.checkpointing.trained_model import load_model  # noqa: E402


@torch.no_grad()
def mean_loss(model: Gemma3, windows: list[np.ndarray], batch: int = 32) -> float:
    """Mean next-token loss over windows, token-weighted; windows of one length go through `batch` at a time."""
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        group = windows[start:start + batch]
        for same in ([group] if len({len(w) for w in group}) == 1 else [[w] for w in group]):
            idx = torch.from_numpy(np.stack(same).astype(np.int64))
            _, loss = model(idx[:, :-1], idx[:, 1:])
            total, count = total + loss.item() * idx[:, 1:].numel(), count + idx[:, 1:].numel()
    return total / count


def evaluation_sets(data: Path, count: int, block: int = 128) -> tuple[dict[str, list[np.ndarray]], int]:
    """Fixed validation windows at evenly spaced positions, the first `count` whole documents, and the
    end-of-text id."""
    meta = read_meta(data)
    val = open_split(str(data), "val").tokens(0)
    starts = np.linspace(0, len(val) - block - 1, count).astype(np.int64)
    eots = np.flatnonzero(val == meta.eot_token)
    docs = [val[a:min(b + 1, a + block + 1)] for a, b in zip(eots[:-1], eots[1:])][:count]
    return {"windows": [val[s:s + block + 1] for s in starts], "documents": docs}, meta.eot_token


def cross_evaluation(work: Path, names: dict, data: Path) -> None:
    """Each final model on the same validation windows, masked and unmasked, and on whole documents."""
    sets, eot = evaluation_sets(data, 128)
    print("\n| trained | evaluated on windows, masked | on windows, unmasked | on whole documents |\n"
          "| --- | --- | --- | --- |")
    for label, name in names.items():
        model, _ = load_model(work / name)
        masked = mean_loss(with_separator(model, eot), sets["windows"])
        plain = mean_loss(with_separator(model, None), sets["windows"])
        whole = mean_loss(with_separator(model, None), sets["documents"])
        print(f"| {label} | {masked:.4f} | {plain:.4f} | {whole:.4f} |")


def with_separator(model: Gemma3, separator: int | None) -> Gemma3:
    model.document_separator = separator
    return model


def cpu_cost(vocab: int, eot: int, block: int, batch: int = 16, repeats: int = 6) -> float:
    """Median CPU time of a masked training forward and backward over the plain one's, alternated."""
    cfg = load_config([f"--model.{k}={v}" for k, v in {**MODEL, "vocab_size": vocab}.items()])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    idx = torch.randint(vocab, (batch, block + 1))
    idx[:, ::100] = eot  # a document boundary every 100 tokens, as in TinyStories (about 200 tokens a story)
    times = {None: [], eot: []}
    for _ in range(repeats):
        for separator in times:
            model.document_separator = separator
            start = time.process_time()
            _, loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
            times[separator].append(time.process_time() - start)
            model.zero_grad(set_to_none=True)
    return float(np.median(times[eot]) / np.median(times[None]))


def main() -> None:
    parser = run_arguments(__doc__)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()
    work = Path(args.work)
    data = prepare(Path(args.text), work)
    keys = {"optimizer": "adamw", "learning_rate": args.lr, "min_lr": args.lr / 10, "lr_schedule": "cosine"}
    names = {mode: f"adamw_cosine_{args.lr:g}_document_mask_{mode}" for mode in ("off", "on")}
    with ThreadPoolExecutor(len(names)) as pool:  # side by side: each run is one process, the machine has more
        futures = {mode: pool.submit(run, name, {**keys, "document_mask": mode}, data, work, args)
                   for mode, name in names.items()}
    runs = {mode: future.result() for mode, future in futures.items()}
    target, total = runs["off"][-1]["val_loss"], runs["off"][-1]["tokens"]
    print(f"\n{args.steps} steps of {args.batch_size} x 128 tokens ({total:,} tokens); target: the unmasked run's "
          f"final validation loss {target:.4f}\n")
    print("| document_mask | val loss at equal tokens | tokens to reach target | ratio |\n| --- | --- | --- | --- |")
    for mode, evals in runs.items():
        reached = tokens_to_reach(evals, target)
        print(f"| {mode} | {evals[-1]['val_loss']:.4f} | {f'{reached:,.0f}' if reached else '-'} | "
              f"{f'{reached / total:.2f}' if reached else 'not reached'} |")
    print("\nvalidation curves (tokens: loss):")
    for mode, evals in runs.items():
        print(f"{mode}: " + ", ".join(f"{r['tokens']}: {r['val_loss']:.3f}" for r in evals))
    cross_evaluation(work, {f"document_mask {mode}": name for mode, name in names.items()}, data)
    meta = read_meta(data)
    for block in (128, 512):
        ratio = cpu_cost(meta.vocab_size, meta.eot_token, block)
        print(f"CPU time of a training forward and backward, masked / plain, block {block}: {ratio:.2f}")


if __name__ == "__main__":
    main()
