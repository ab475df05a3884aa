"""A run's `metrics.jsonl` drawn into one picture: loss (and val_bpb; each source's too for a mixture), learning
rate, gradient norm and throughput. `python -m accel_train.plot` draws it on demand, the train command at the end
of every run. matplotlib is an optional extra (`pip install -e ".[plot]"`) and draws off-screen (Agg), so it
works on a headless server.
"""

from __future__ import annotations

import json
from pathlib import Path

from accel_train.atomic import replaced_file
from accel_train.errors import UserError, first_line
from accel_train.training.tracking import METRICS_FILE

PLOT_FILE = "metrics.png"


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of the rows that hold `key` (val_loss is only on evaluation steps)."""
    rows = [r for r in records if r.get(key) is not None]
    return [r["step"] for r in rows], [r[key] for r in rows]


def source_keys(records: list[dict], prefix: str) -> list[str]:
    """The per-source keys under `prefix` (val_loss/NAME of a mixture), in the order they first appear."""
    return list(dict.fromkeys(key for r in records for key in r if key.startswith(prefix)))


def task_scores(records: list[dict]) -> list[str]:
    """The multiple-choice scores the rows hold (`<task>/acc`, `<task>/acc_norm`), in the order they appear."""
    return list(dict.fromkeys(k for r in records for k in r if k.endswith(("/acc", "/acc_norm"))))


def draw(records: list[dict], title: str = ""):
    """A 2 x 2 matplotlib Figure of the metrics rows, with a third row of task scores where they have any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = task_scores(records)
    fig, axes = plt.subplots(3 if scores else 2, 2, figsize=(11, 10 if scores else 7), sharex=True)
    (loss, lr), (grad, speed) = axes[:2]
    if scores:
        for ax, kind in zip(axes[2], ("/acc", "/acc_norm")):
            for key in (k for k in scores if k.endswith(kind)):
                ax.plot(*series(records, key), "o-", label=key)
            ax.set(ylabel="accuracy", title=f"multiple choice: {kind[1:]}", xlabel="optimizer step")
            ax.legend()
    loss.plot(*series(records, "loss"), label="train (step mean)", color="tab:blue", alpha=0.7)
    loss.plot(*series(records, "val_loss"), "o-", label="validation", color="tab:orange")
    for key in source_keys(records, "val_loss/"):  # a mixture: each source's validation loss
        loss.plot(*series(records, key), ".:", label=f"validation, {key.partition('/')[2]}", alpha=0.8)
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


PLOTTED = ("loss", "val_loss", "val_bpb", "lr", "grad_norm", "tokens_per_s")


def read_rows(out_dir: Path) -> list[dict]:
    """The rows of out_dir's metrics.jsonl, each an object with a numeric step (and numbers where it has the keys
    drawn); a row that is not is a UserError naming its line. A torn last row (a run killed mid-write) is left out."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        raise UserError(f"{out_dir} holds no {METRICS_FILE}; point at a run's out_dir")
    try:
        lines = [(n, line) for n, line in enumerate(path.read_bytes().split(b"\n"), 1) if line.strip()]
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None
    rows = [_row(path, n, line, last=n == lines[-1][0]) for n, line in lines]
    return [row for row in rows if row is not None]


def _row(path: Path, n: int, line: bytes, last: bool) -> dict | None:
    """Line `n` of a metrics file as a row; None for a torn last line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} line {n} is not UTF-8 text") from None
    try:
        row = json.loads(text)
    except ValueError as err:
        if last:
            return None
        raise UserError(f"{path} line {n} is not JSON: {first_line(err)}") from None
    if not (isinstance(row, dict) and _is_number(row.get("step"))
            and all(row.get(key) is None or _is_number(row[key]) for key in PLOTTED)):
        raise UserError(f"{path} line {n} is not a metrics row (an object with a numeric step, and numbers for "
                        f"{', '.join(PLOTTED)}): {text[:80]}")
    return row


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_plot(out_dir, path=None) -> Path:
    """Draw out_dir's metrics into `path` (default out_dir/metrics.png), exactly that file, and return it. Its
    format follows its extension (PNG where it has none); a failed write leaves no partial file behind."""
    out_dir = Path(out_dir)
    records = read_rows(out_dir)
    if not records:
        raise UserError(f"{out_dir / METRICS_FILE} has no rows yet")
    path = Path(path) if path else out_dir / PLOT_FILE
    try:
        fig = draw(records, title=str(out_dir))
    except ImportError:
        raise UserError("plots need matplotlib: pip install -e \".[plot]\"") from None
    import matplotlib.pyplot as plt

    try:
        save(fig, path)
    finally:
        plt.close(fig)
    return path


def save(fig, path: Path) -> None:
    """Write `fig` to exactly `path` (matplotlib alone would add .png to a name without an extension), whole."""
    kinds = fig.canvas.get_supported_filetypes()
    kind = path.suffix[1:].lower() or "png"
    if kind not in kinds:
        raise UserError(f"cannot write {path}: matplotlib writes {', '.join('.' + k for k in kinds)}, "
                        f"not .{kind}")
    try:
        with replaced_file(path) as tmp:
            fig.savefig(tmp, dpi=100, format=kind)
    except OSError as err:
        raise UserError(f"cannot write {path}: {err.strerror or err}") from None
