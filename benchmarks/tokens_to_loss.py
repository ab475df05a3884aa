"""Tokens to reach AdamW + cosine's loss: AdamW or Muon, cosine or warmup-stable-decay, on real text.

    TIKTOKEN_CACHE_DIR=/work/shared/tiktoken_cache python benchmarks/tokens_to_loss.py \
        [--text /work/shared/data/tinystories_sample.txt] [--work /tmp/tokens_to_loss] [--steps 150] \
        [--adamw_lrs 1e-3,3e-3,1e-2,3e-2,1e-1,3e-1] [--muon_lrs 3e-3,1e-2,3e-2,1e-1] [--original_lr 0.02]

The text is prepared with GPT-2's tokenizer (`python -m accel_train.prepare --tokenizer gpt2`); the
tokens that occur are then renumbered densely (about 7,000 of GPT-2's 50,257 in 2 MB of TinyStories),
so that the output layer, which would cost 7x the rest of this small model on a CPU, covers only them.
Every run is the real trainer (`accel_train/train.py` in a subprocess) on a small Gemma 3 shape, with
the same seed, data stream, steps and evaluation batches; only the optimizer keys and the rates differ.

1. Sweep: each optimizer under cosine at each of its rates (min_lr a tenth of the peak). Muon's runs
   give the hidden matrices `muon_lr` and keep AdamW, at its best rate, for the rest; one more run
   tries PyTorch's "original" update scaling (`--original_lr`) against "match_rms_adamw".
2. The best rate of each optimizer (lowest final validation loss) again under WSD.
3. The target is AdamW + cosine's final validation loss at its best rate; each run's tokens to reach
   it are read off its evaluation curve (linear between evaluations), as a ratio of the run's tokens.

A run whose metrics are already complete in `--work` is not run again, so an interrupted benchmark
continues where it stopped. Prints the sweep, then the four-way table, as Markdown.

`--windows` compares the data streams instead, AdamW + cosine at `--windows_lr` for each: random windows
(`sampling random`), every window once per epoch (`sampling epoch`) and document-aligned windows
(`window_start document`). Every run saves a checkpoint at each evaluation, and each checkpoint is scored
here on one fixed evaluation set, the same for all: every non-overlapping window of the val split. It also
prints the share of training tokens each stream never shows as an input over the run's windows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from accel_train.data.meta import read_meta, write_meta
from accel_train.data.folder import open_split

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the streams and the model, for the --windows comparison
TRAIN = str(REPO / "accel_train" / "train.py")
MODEL = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 64,
         "sliding_window_pattern": 2, "max_position_embeddings": 512}


def prepare(text: Path, work: Path) -> Path:
    """GPT-2 tokens of `text`, renumbered densely (in GPT-2's order) in work/data."""
    data, gpt2 = work / "data", work / "gpt2"
    if (data / "meta.json").exists():
        return data
    if not (gpt2 / "meta.json").exists():
        subprocess.run([sys.executable, "-m", "accel_train.prepare", "--input", str(text), "--separator",
                        "<|endoftext|>", "--tokenizer", "gpt2", "--val_fraction", "0.05", "--out", str(gpt2)],
                       cwd=REPO, check=True)
    meta = read_meta(gpt2)
    splits = {s: open_split(str(gpt2), s).tokens(0) for s in ("train", "val")}
    used = np.unique(np.concatenate(list(splits.values())))
    dense = np.zeros(meta.vocab_size, dtype=np.uint16)
    dense[used] = np.arange(len(used), dtype=np.uint16)
    data.mkdir(parents=True)
    for split, tokens in splits.items():
        dense[tokens].tofile(data / f"{split}.bin")
    # other ids than GPT-2's: no tokenizer reads them, so no fingerprint
    write_meta(data, dataclasses.replace(
        meta, vocab_size=len(used), eot_token=int(dense[meta.eot_token]), dtype="uint16", tokenizer_fingerprint=None,
        tokenizer="gpt2, renumbered densely by benchmarks/tokens_to_loss.py",
        shards={s: [{"file": f"{s}.bin", "tokens": len(tokens)}] for s, tokens in splits.items()}))
    return data


def run(name: str, keys: dict, data: Path, work: Path, args) -> list[dict]:
    """The evaluation rows of one training run (trained now unless work/name already ended)."""
    out = work / name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").exists() else []
    if not rows or rows[-1]["step"] != args.steps:
        vocab = read_meta(data).vocab_size
        settings = {"data_dir": str(data), "out_dir": str(out), "device": "cpu", "dtype": "float32",
                    "max_iters": args.steps, "warmup_steps": args.steps // 10, "batch_size": args.batch_size,
                    "block_size": 128, "gradient_accumulation_steps": 1, "eval_interval": args.steps // 10,
                    "eval_iters": args.eval_iters, "log_interval": args.steps // 10, "checkpoint_interval": 0,
                    "keep_last": 1, "resume": "auto", "plot": False, "sample_tokens": 0, "demo_data": False,
                    **keys, "model": {**MODEL, "vocab_size": vocab}}
        config = work / f"{name}.json"
        config.write_text(json.dumps(settings, indent=1))
        print(f"running {name}: {keys}", flush=True)
        subprocess.run([sys.executable, TRAIN, "--config", str(config)], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "WANDB_MODE": "offline"})
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


def tokens_to_reach(evals: list[dict], target: float) -> float | None:
    """Tokens at which the validation curve first reaches `target`, linear between evaluations."""
    previous = (0, float("inf"))
    for r in evals:
        if r["val_loss"] <= target:
            t0, l0 = previous
            if l0 == float("inf"):
                return r["tokens"]
            return t0 + (r["tokens"] - t0) * (l0 - target) / (l0 - r["val_loss"])
        previous = (r["tokens"], r["val_loss"])
    return None


def adamw_keys(lr: float, schedule: str = "cosine") -> dict:
    return {"optimizer": "adamw", "learning_rate": lr, "min_lr": lr / 10, "lr_schedule": schedule}


def muon_keys(adamw_lr: float, lr: float, schedule: str = "cosine", adjust: str = "match_rms_adamw") -> dict:
    return {**adamw_keys(adamw_lr, schedule), "optimizer": "muon", "muon_lr": lr, "muon_adjust_lr": adjust}


def fixed_val_loss(checkpoint: Path, data: Path, vocab: int) -> float:
    """Mean loss of the model in `checkpoint` over every non-overlapping window of data's val split."""
    import torch

    from accel_train.checkpointing.checkpoint import load_weights
    from accel_train.models.build import build_model
    from accel_train.models.gemma3 import ModelConfig

    model = build_model(ModelConfig(**MODEL, vocab_size=vocab))
    load_weights(model, checkpoint)
    model.eval()
    tokens = torch.from_numpy(np.fromfile(data / "val.bin", dtype=np.uint16).astype(np.int64))
    n = (len(tokens) - 1) // 128
    x, y = tokens[:n * 128].view(n, 128), tokens[1:n * 128 + 1].view(n, 128)
    with torch.no_grad():
        losses = [model(x[i:i + 64], y[i:i + 64])[1].item() * len(x[i:i + 64]) for i in range(0, n, 64)]
    return sum(losses) / n


def never_seen(keys: dict, data: Path, windows: int, batch_size: int) -> float:
    """The share of training tokens that `windows` windows of the stream `keys` name never show as an input."""
    from accel_train.data.stream import WindowStream

    stream = WindowStream.of_folder(data, 128, batch_size, 1337, keys.get("sampling", "epoch"),
                                    keys.get("window_start", "any"))
    seen = np.zeros(stream.splits[0].num_tokens, dtype=bool)
    for b in range(windows // batch_size):
        for _, start in stream.batch(b):
            seen[start:start + 128] = True
    return 1 - seen.mean()


def compare_windows(data: Path, work: Path, args) -> None:
    """The --windows comparison (see the module's docstring), printed as Markdown."""
    vocab = read_meta(data).vocab_size
    streams = {"random windows": {"sampling": "random"}, "every window once per epoch": {"sampling": "epoch"},
               "document-aligned, once per epoch": {"sampling": "epoch", "window_start": "document"}}
    print("| stream | keys | train tokens never an input | fixed-set val loss by tokens |\n| --- | --- | --- | --- |")
    curves = {}
    for label, keys in streams.items():
        name = f"windows_{keys.get('sampling')}_{keys.get('window_start', 'any')}"
        run(name, {**adamw_keys(args.windows_lr), **keys, "checkpoint_interval": args.steps // 10, "keep_last": 0},
            data, work, args)
        folders = sorted((work / name / "checkpoints").glob("step_*"), key=lambda p: int(p.name[5:]))
        curves[label] = [(int(p.name[5:]) * args.batch_size * 128, fixed_val_loss(p, data, vocab)) for p in folders]
        unseen = never_seen(keys, data, args.steps * args.batch_size, args.batch_size)
        print(f"| {label} | `{json.dumps(keys)}` | {unseen:.1%} | "
              + ", ".join(f"{t:,}: {loss:.3f}" for t, loss in curves[label]) + " |", flush=True)
    target = curves["random windows"][-1][1]
    print(f"\ntarget: random windows' final fixed-set loss {target:.4f}\n\n| stream | final loss | tokens to target |"
          "\n| --- | --- | --- |")
    for label, curve in curves.items():
        reached = tokens_to_reach([{"tokens": t, "val_loss": loss} for t, loss in curve], target)
        print(f"| {label} | {curve[-1][1]:.4f} | {f'{reached:,.0f}' if reached is not None else 'not reached'} |")


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The options of the text, the work folder and the runs, shared with benchmarks/document_mask.py."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default="/work/shared/data/tinystories_sample.txt")
    parser.add_argument("--work", default="/tmp/tokens_to_loss")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--eval_iters", type=int, default=4)
    return parser


def main() -> None:
    parser = run_arguments(__doc__)
    parser.add_argument("--adamw_lrs", default="1e-3,3e-3,1e-2,3e-2,1e-1,3e-1")
    parser.add_argument("--muon_lrs", default="3e-3,1e-2,3e-2,1e-1")
    parser.add_argument("--original_lr", type=float, default=0.02)
    parser.add_argument("--windows", action="store_true", help="compare the data streams (see above)")
    parser.add_argument("--windows_lr", type=float, default=0.1)
    args = parser.parse_args()
    work = Path(args.work)
    data = prepare(Path(args.text), work)
    if args.windows:
        return compare_windows(data, work, args)
    runs = {}  # name -> (keys, evaluation rows)

    def do(name: str, keys: dict) -> list[dict]:
        runs[name] = (keys, run(name, keys, data, work, args))
        return runs[name][1]

    adamw = {lr: do(f"adamw_cosine_{lr:g}", adamw_keys(lr)) for lr in map(float, args.adamw_lrs.split(","))}
    adamw_lr = min(adamw, key=lambda lr: adamw[lr][-1]["val_loss"])
    muon = {lr: do(f"muon_cosine_{lr:g}_adamw_{adamw_lr:g}", muon_keys(adamw_lr, lr))
            for lr in map(float, args.muon_lrs.split(","))}
    muon_lr = min(muon, key=lambda lr: muon[lr][-1]["val_loss"])
    if args.original_lr:
        do(f"muon_original_cosine_{args.original_lr:g}_adamw_{adamw_lr:g}",
           muon_keys(adamw_lr, args.original_lr, adjust="original"))
    four = {"AdamW + cosine": f"adamw_cosine_{adamw_lr:g}",
            "Muon + cosine": f"muon_cosine_{muon_lr:g}_adamw_{adamw_lr:g}"}
    do(four.setdefault("AdamW + WSD", f"adamw_wsd_{adamw_lr:g}"), adamw_keys(adamw_lr, "wsd"))
    do(four.setdefault("Muon + WSD", f"muon_wsd_{muon_lr:g}_adamw_{adamw_lr:g}"), muon_keys(adamw_lr, muon_lr, "wsd"))

    target = runs[four["AdamW + cosine"]][1][-1]["val_loss"]
    total = runs[four["AdamW + cosine"]][1][-1]["tokens"]
    print(f"\n{args.steps} steps of {args.batch_size} x 128 tokens ({total:,} tokens); target: AdamW + cosine's "
          f"final validation loss {target:.4f}\n")
    print("| run | optimizer keys | final val loss |\n| --- | --- | --- |")
    for name, (keys, evals) in runs.items():
        shown = {k: v for k, v in keys.items() if k not in ("min_lr",)}
        print(f"| {name} | `{json.dumps(shown)}` | {evals[-1]['val_loss']:.4f} |")
    print("\n| optimizer + schedule | run | val loss at equal tokens | tokens to reach target | ratio |\n"
          "| --- | --- | --- | --- | --- |")
    for label, name in four.items():
        evals = runs[name][1]
        reached = tokens_to_reach(evals, target)
        ratio = f"{reached / total:.2f}" if reached is not None else "not reached"
        print(f"| {label} | {name} | {evals[-1]['val_loss']:.4f} | "
              f"{f'{reached:,.0f}' if reached is not None else '-'} | {ratio} |")
    print("\nvalidation curves (tokens: loss):")
    for name, (_, evals) in runs.items():
        print(f"{name}: " + ", ".join(f"{r['tokens']}: {r['val_loss']:.3f}" for r in evals))


if __name__ == "__main__":
    main()
