"""Draw a run's `metrics.jsonl` into one PNG: loss (and val_bpb; each source's too for a mixture), learning rate,
gradient norm and throughput.

    python -m accel_train.plot out/demo            # writes out/demo/metrics.png

The training loop writes the same picture at the end of every run. matplotlib is an optional
extra (`pip install -e ".[plot]"`) and draws off-screen (Agg), so it works on a headless server.
"""

from __future__ import annotations

import sys

from accel_train.errors import Parser, run_cli
from accel_train.training.metrics_plot import PLOT_FILE, write_plot


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="python -m accel_train.plot", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="a run's out_dir, holding metrics.jsonl")
    parser.add_argument("--out", default=None,
                        help=f"the image to write, in the format of its extension (default: OUT_DIR/{PLOT_FILE})")
    args = parser.parse_args(argv)
    print(f"wrote {write_plot(args.out_dir, args.out)}")


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
