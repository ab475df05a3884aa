"""The trainer's command line, `--help` and the README's configuration table, all generated from the config's fields.

The CLI cases run as real processes, as users type them.
"""

import json
import re
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from accel_train.config import TrainConfig, _keys, load_config, markdown_table
from accel_train.errors import UserError
from helpers import REPO, TRAIN, assert_one_error_line, help_by_key, run, subprocess_env

MARKERS = re.compile(r"<!-- config-table:start -->\n(.*?)\n<!-- config-table:end -->", re.S)


@pytest.mark.parametrize("cmd", [[TRAIN], ["-m", "accel_train.train"]])
def test_help_lists_every_key_with_type_default_and_meaning(cmd):
    result = run([sys.executable, *cmd, "--help"], env={"COLUMNS": "10000"})  # one line per key
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for key, (field, tp) in _keys().items():
        assert f"--{key} " in text
        assert " ".join(field.metadata["help"].split()) in text, key
    assert "--dtype {auto,float32,bfloat16,float16}" in text
    assert "--model.tie_word_embeddings bool" in text and "--config FILE" in text


def test_readme_table_is_the_generated_one():
    """Another change may move the table into docs/; wherever the markers are, the block must be current."""
    blocks = [m.group(1) for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))] if path.exists()
              for m in MARKERS.finditer(path.read_text())]
    assert blocks == [markdown_table()]
    printed = run([sys.executable, "-m", "accel_train.config", "--markdown"])
    assert printed.returncode == 0 and printed.stdout == markdown_table() + "\n"
    assert "| `model.hidden_size` | int | `128` | `640` |" in blocks[0]  # the demo's, then the field's
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
                            "accel-bench", "accel-score", "accel-plan"}
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


def shown_defaults(*args) -> dict:
    """{key: value} of each key's `(default: ...)` in the trainer's --help with these arguments."""
    entries = help_by_key([sys.executable, TRAIN, *args])
    entries.pop("config")
    assert set(entries) == set(_keys()), set(_keys()) ^ set(entries)
    return {key: json.loads(re.search(r"\(default: (.*)\)$", entry).group(1)) for key, entry in entries.items()}


def flat(config: dict) -> dict:
    model = {f"model.{k}": v for k, v in config["model"].items()}
    return {**{k: v for k, v in config.items() if k != "model"}, **model}


def test_help_of_a_bare_run_shows_the_values_a_bare_run_uses(tmp_path):
    """A bare `python accel_train/train.py`, stopped after its first steps: the config its checkpoint records is,
    key by key, what --help showed."""
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, TRAIN], cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        shown = shown_defaults()
        while not re.search(r"\b1/\d+ ", log.read_text()) and proc.poll() is None:  # a step done: signals are caught
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # stops after the step in hand, with a checkpoint
        assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
    finally:
        proc.kill()
    state = next((tmp_path / "out" / "demo" / "checkpoints").glob("step_*/trainer_state.json"))
    used = flat(json.loads(state.read_text())["config"])
    assert shown == used
    assert shown["max_iters"] != TrainConfig().max_iters  # the demo's, not the field's


def test_help_with_a_config_file_shows_that_files_values(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"max_iters": 77, "warmup_steps": 7, "learning_rate": 0.25,
                                  "model": {"hidden_size": 96}}))
    shown = shown_defaults("--config", str(config))
    assert (shown["max_iters"], shown["learning_rate"], shown["model.hidden_size"]) == (77, 0.25, 96)
    cfg = load_config(["--config", str(config)])
    assert shown == flat(cfg.to_dict())  # the keys the file leaves out: the fields' own, as the run gets them
    (tmp_path / "typo.json").write_text('{"max_iter": 5}')
    for bad, words in (("nowhere.json", ["nowhere.json"]), ("typo.json", ["max_iter", "did you mean 'max_iters'"])):
        result = run([sys.executable, TRAIN, "--config", str(tmp_path / bad), "--help"])
        assert_one_error_line(result.returncode, result.stderr, *words)
