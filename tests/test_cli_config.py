"""The trainer's command line, `--help` and the README's configuration table, all generated from the config's fields.

The CLI cases run as real processes, as users type them.
"""

import re
import subprocess
import sys
import tomllib

import pytest

from accel_train.config import TrainConfig, _keys, load_config, markdown_table
from accel_train.errors import UserError
from helpers import REPO, TRAIN, run

MARKERS = re.compile(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", re.S)


@pytest.mark.parametrize("cmd", [[TRAIN], ["-m", "accel_train.train"]])
def test_help_lists_every_key_with_type_default_and_meaning(cmd):
    result = run([sys.executable, *cmd, "--help"], env={"COLUMNS": "10000"})  # one line per key
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for key, (field, tp) in _keys().items():
        assert f"--{key} " in text
        assert " ".join(field.metadata["help"].split()) in text, key
    assert "--max_iters int optimizer steps in all (default: 150000)" in text
    assert "--dtype {auto,float32,bfloat16,float16}" in text
    assert "--model.tie_word_embeddings bool" in text and "--config FILE" in text


def test_readme_table_is_the_generated_one():
    """Another change may move the table into docs/; wherever the markers are, the block must be current."""
    blocks = [m.group(1) for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))] if path.exists()
              for m in MARKERS.finditer(path.read_text())]
    assert blocks == [markdown_table()]
    printed = run([sys.executable, "-m", "accel_train.config", "--markdown"])
    assert printed.returncode == 0 and printed.stdout == markdown_table() + "\n"
    assert "| `model.hidden_size` | int | `640` |" in blocks[0]
    assert "one of `auto`, `float32`, `bfloat16`, `float16`" in blocks[0]


def test_enumerated_keys_are_validated_from_their_field_choices():
    enumerated = {key: field.metadata["choices"] for key, (field, _) in _keys().items() if field.metadata["choices"]}
    assert {"device", "dtype", "tracker", "optimizer", "lr_schedule", "compile_mode"} <= enumerated.keys()
    for key, choices in enumerated.items():
        assert getattr(load_config([f"--{key}", choices[-1]]), key) == choices[-1]
        with pytest.raises(UserError, match=f"config key '{key}' must be one of {', '.join(choices)}"):
            load_config([f"--{key}", "nonsense"])


def test_command_line_forms(tmp_path):
    config = tmp_path / "run.json"
    config.write_text('{"eval_iters": 9, "plot": false, "model": {"hidden_size": 96}}')
    cfg = load_config(["--eval_iters=3", "--plot", "yes", "--config", str(config), "--fused_loss=0"])
    assert (cfg.eval_iters, cfg.plot, cfg.fused_loss, cfg.model.hidden_size) == (3, True, False, 96)
    assert isinstance(cfg, TrainConfig)
    with pytest.raises(UserError, match="^--max_iters needs a value$"):
        load_config(["--max_iters", "--eval_iters", "3"])
    with pytest.raises(UserError, match="^unknown config key 'max_iter'; did you mean 'max_iters'\\?$"):
        load_config(["--max_iter=5"])  # no abbreviations: a near miss is a mistake, never another key
    with pytest.raises(UserError, match="'learning_rate' must be positive, got -0.001"):
        load_config(["--learning_rate", "-1e-3"])  # a negative number is a value, not an option


def test_console_scripts_answer_help():
    """Each [project.scripts] target as `pip install` calls it: imported, then called with sys.argv set."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"accel-train", "accel-prepare", "accel-sample", "accel-export", "accel-plot",
                            "accel-bench"}
    procs = {}
    for name, target in scripts.items():
        module, function = target.split(":")
        code = f"import sys; from {module} import {function}; sys.argv = [{name!r}, '--help']; {function}()"
        procs[name] = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and stdout.startswith("usage: "), (name, stderr)


def test_console_script_mistake_is_one_error_line():
    code = "import sys; from accel_train.cli import train; sys.argv = ['accel-train', '--max_iter', '5']; train()"
    result = run([sys.executable, "-c", code])
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: unknown config key 'max_iter'; did you mean 'max_iters'?"]
