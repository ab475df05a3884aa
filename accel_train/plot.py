"""Draw a run's `metrics.jsonl` into one PNG: loss (and val_bpb), learning rate, gradient norm and throughput.

    python -m accel_train.plot out/demo            # writes out/demo/metrics.png

The training loop writes the same picture at the end of every run. matplotlib is an optional
extra (`pip install -e ".[plot]"`) and draws off-screen (Agg), so it works on a headless server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accel_train.errors import Parser, UserError, run_cli
from accel_train.tracking import METRICS_FILE, read_metrics

PLOT_FILE = "metrics.png"


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of the rows that hold `key` (val_loss is only on evaluation steps)."""
    rows = [r for r in records if r.get(key) is not None]
    return [r["step"] for r in rows], [r[key] for r in rows]


def draw(records: list[dict], title: str = ""):
    """A 2 x 2 matplotlib Figure of the metrics rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    (loss, lr), (grad, speed) = axes
    loss.plot(*series(records, "loss"), label="train (step mean)", color="tab:blue", alpha=0.7)
    loss.plot(*series(records, "val_loss"), "o-", label="validation", color="tab:orange")
    loss.set(ylabel="loss (nats/token)", title="loss")
    loss.legend()
    if any("val_bpb" in r for r in records):  # bits per byte of text: comparable across tokenizers
        bpb = loss.twinx()
        bpb.plot(*series(records, "val_bpb"), "s--", label="validation (bits/byte)", color="tab:brown", alpha=0.8)
        bpb.set(ylabel="bits per byte")
        bpb.legend(loc="center right")
    lr.plot(*series(records, "lr"), color="tab:green")
    lr.set(ylabel="learning rate", title="learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    grad.plot(*series(records, "grad_norm"), color="tab:red")
    grad.set(ylabel="norm before clipping", title="gradient norm", xlabel="optimizer step")
    speed.plot(*series(records, "tokens_per_s"), color="tab:purple")
    speed.set(ylabel="tokens/s", title="throughput", xlabel="optimizer step")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_plot(out_dir, path=None) -> Path:
    """Draw out_dir's metrics into `path` (default out_dir/metrics.png) and return it."""
    out_dir = Path(out_dir)
    if not (out_dir / METRICS_FILE).is_file():
        raise UserError(f"{out_dir} holds no {METRICS_FILE}; point at a run's out_dir")
    records = read_metrics(out_dir)
    if not records:
        raise UserError(f"{out_dir / METRICS_FILE} has no rows yet")
    try:
        fig = draw(records, title=str(out_dir))
    except ImportError:
        raise UserError("plots need matplotlib: pip install -e \".[plot]\"") from None
    path = Path(path) if path else out_dir / PLOT_FILE
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m accel_train.plot", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="a run's out_dir, holding metrics.jsonl")
    parser.add_argument("--out", default=None, help=f"the PNG to write (default: OUT_DIR/{PLOT_FILE})")
    args = parser.parse_args(argv)
    target = Path(args.out or Path(args.out_dir) / PLOT_FILE)
    try:
        print(f"wrote {write_plot(args.out_dir, target)}")
    except json.JSONDecodeError as err:
        raise UserError(f"{Path(args.out_dir) / METRICS_FILE} is not JSON Lines: {err.msg}") from None
    except (OSError, ValueError) as err:  # unwritable, or a file type matplotlib does not know
        raise UserError(f"cannot write {target}: {getattr(err, 'strerror', None) or err}") from None


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
