"""scripts/gpu_check.py, the one script a GPU session runs, works end to end on its tiny model here,
so that a session's few minutes of device time are not lost to a broken script."""

import json
import os
import sys

from helpers import run


def test_gpu_check_tiny_writes_its_figures(tmp_path):
    result = run([sys.executable, "scripts/gpu_check.py", "--tiny", "--only", "bench", "--only", "vocab"],
                 env={"OUT": str(tmp_path), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    bench, vocab = summary["results"]["bench"], summary["results"]["vocab"]
    assert bench["ok"] and bench["speedup"] == bench["ours"]["tokens_per_s"] / bench["baseline"]["tokens_per_s"]
    assert bench["profile"] and (tmp_path / "bench_gemma3_270m.profile.txt").exists()
    assert list(vocab["rows"]) == ["as configured"] and vocab["ok"]  # no peak on a CPU: the first way counts
    markdown = (tmp_path / "summary.md").read_text()
    for label in ("bench: baseline", "bench: ours", "bench: ratio", "bench: profile", "vocab: as configured"):
        assert f"| {label} |" in markdown
