"""The metrics plot: a finished run draws it, the CLI redraws it, and its curves are the logged values."""

import sys

import matplotlib.image as image
import pytest

from accel_train.errors import UserError
from accel_train.training.metrics_plot import draw, write_plot
from accel_train.training.tracking import read_metrics
from helpers import run


def test_a_finished_run_writes_the_png(trained_run):
    out_dir, stdout = trained_run
    png = out_dir / "metrics.png"
    assert f"plot: {png}" in stdout
    height, width, _ = image.imread(png).shape
    assert (width, height) == (1100, 700)


def test_the_curves_are_the_logged_values(trained_run):
    out_dir, _ = trained_run
    records = read_metrics(out_dir)
    evaluated = [r for r in records if "val_loss" in r]
    assert len(evaluated) == 2 and len(records) > len(evaluated)  # val_loss only on some rows
    fig = draw(records)
    (loss, lr), (grad, speed), (bpb,) = fig.axes[:2], fig.axes[2:4], fig.axes[4:]

    def curves(ax):
        return [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]

    steps = [r["step"] for r in records]
    assert curves(loss) == [(steps, [r["loss"] for r in records]),
                            ([r["step"] for r in evaluated], [r["val_loss"] for r in evaluated])]
    assert curves(lr) == [(steps, [r["lr"] for r in records])]
    assert curves(grad) == [(steps, [r["grad_norm"] for r in records])]
    assert curves(speed) == [(steps, [r["tokens_per_s"] for r in records])]
    assert curves(bpb) == [([r["step"] for r in evaluated], [r["val_bpb"] for r in evaluated])]  # beside val_loss
    assert len(draw([{k: v for k, v in r.items() if k != "val_bpb"} for r in records]).axes) == 4


def test_the_cli_redraws_into_any_file(trained_run, tmp_path):
    out_dir, _ = trained_run
    target = tmp_path / "again.png"
    result = run([sys.executable, "-m", "accel_train.plot", str(out_dir), "--out", str(target)])
    assert result.returncode == 0, result.stderr
    assert image.imread(target).shape[:2] == (700, 1100)


def test_a_folder_without_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="metrics.jsonl"):
        write_plot(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no rows"):
        write_plot(tmp_path)
    assert not (tmp_path / "metrics.png").exists()
