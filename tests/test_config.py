"""Config loading, command-line overrides and every validation error."""

import json
import sys

import pytest
import torch

from accel_train.config import DEFAULT_CONFIG, load_config
from accel_train.errors import UserError
from accel_train.training.hardware import resolve_hardware
from accel_train.training.start import make_accelerator
from helpers import TRAIN, run


def test_default_config_is_demo_and_overrides_apply():
    cfg = load_config(["--max_iters", "7", "--warmup_steps", "2", "--model.hidden_size=48", "--demo_data", "false",
                       "--min_lr", "1e-4"])
    demo = json.loads(DEFAULT_CONFIG.read_text())
    assert cfg.data_dir == demo["data_dir"] and cfg.learning_rate == demo["learning_rate"]
    assert cfg.model.num_hidden_layers == demo["model"]["num_hidden_layers"]
    assert (cfg.max_iters, cfg.model.hidden_size, cfg.demo_data, cfg.min_lr) == (7, 48, False, 1e-4)
    assert isinstance(cfg.min_lr, float) and isinstance(cfg.max_iters, int)


def test_config_file_and_seed_keys(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"learning_rate": 3e-4, "min_lr": 3e-5, "max_iters": 100, "warmup_steps": 10,
                                "eval_interval": 20, "eval_iters": 5, "batch_size": 8, "block_size": 64,
                                "gradient_accumulation_steps": 4, "device": "cpu", "dtype": "float32",
                                "model": {"vocab_size": 300}}))
    cfg = load_config(["--config", str(path), "--eval_iters", "3"])
    assert (cfg.learning_rate, cfg.eval_interval, cfg.eval_iters, cfg.model.vocab_size) == (3e-4, 20, 3, 300)
    assert cfg.tokens_per_step == 8 * 64 * 4


@pytest.mark.parametrize("args, message", [
    (["--learning_rat", "1e-3"], "unknown config key 'learning_rat'; did you mean 'learning_rate'?"),
    (["--model.hiden_size", "8"], "did you mean 'model.hidden_size'?"),
    (["--max_iters", "ten"], "config key 'max_iters' must be int, got 'ten'"),
    (["--demo_data", "maybe"], "config key 'demo_data' must be bool"),
    (["--min_lr", "1e-2", "--learning_rate", "1e-3"], "min_lr (0.01) is above learning_rate (0.001)"),
    (["--warmup_steps", "300", "--max_iters", "300"], "warmup_steps (300) must be below max_iters (300)"),
    (["--block_size", "1024", "--model.max_position_embeddings", "512"],
     "block_size (1024) exceeds the model's context"),
    (["--dtype", "float8"], "config key 'dtype' must be one of"),
    (["--tracker", "mlflow"], "config key 'tracker' must be one of"),
    (["--compile_mode", "fastest"], "config key 'compile_mode' must be one of"),
    (["--activation_memory_budget", "1.5"], "'activation_memory_budget' must lie in [0, 1], got 1.5"),
    (["--batch_size", "0"], "'batch_size' must be at least 1"),
    (["--seed", "-1"], "'seed' must lie in [0, 2147483647], got -1"),  # numpy seeds with seed + each process's rank
    (["--seed", str(2**32)], "'seed' must lie in [0, 2147483647]"),
    (["--model.vocab_size", "100000000000"], "'model.vocab_size' must lie in [1, 4294967296]"),  # 32-bit token ids
    (["--model.hidden_size", "0"], "'model.hidden_size' must be at least 1, got 0"),
    (["--max_iters", str(2**63)], "'max_iters' must be at most 9223372036854775807"),  # beyond torch's int64
    (["--model.num_attention_heads", "3", "--model.num_key_value_heads", "2"], "must be a multiple of"),
    (["--max_iters"], "--max_iters needs a value"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_validation_errors(args, message):
    with pytest.raises(UserError, match=None) as err:
        load_config(args)
    assert message in str(err.value)


def test_json_types_are_checked(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"max_iters": "100"}))
    with pytest.raises(UserError, match="'max_iters' must be int, got '100'"):
        load_config(["--config", str(path)])
    path.write_text(json.dumps({"model": {"tie_word_embeddings": 1}}))
    with pytest.raises(UserError, match="'model.tie_word_embeddings' must be bool"):
        load_config(["--config", str(path)])


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "max_iters": 10,\n  "batch_size": ,\n}\n')
    with pytest.raises(UserError, match=r"broken.json line 3 column 17: malformed JSON"):
        load_config(["--config", str(path)])


def test_config_files_must_be_utf8_json_a_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "run.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"run_name": "caf\u00e9"}).encode())  # as Notepad saves it
    assert load_config(["--config", str(path)]).run_name == "caf\u00e9"
    for text, message in (('{"run_name": "caf\u00e9"}'.encode("latin-1"), "is not UTF-8 text"),
                          (b'{"seed": ' + b"9" * 5000 + b"}", "malformed JSON"),
                          (b'{"seed": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed JSON")):
        path.write_bytes(text)
        with pytest.raises(UserError, match=message):
            load_config(["--config", str(path)])


def test_precision_resolution_on_this_cpu():
    assert resolve_hardware("auto", "auto") == (True, "no")
    assert resolve_hardware("cpu", "bfloat16") == (True, "bf16")
    with pytest.raises(UserError, match="float16 needs a GPU"):
        resolve_hardware("cpu", "float16")
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        resolve_hardware("cuda", "auto")


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("mode, autotunes", [("default", False), ("max-autotune-no-cudagraphs", True)])
def test_compile_mode_reaches_torch_compile(mode, autotunes):
    """The prepared model is compiled with the configured mode (max-autotune benchmarks matmul kernels)."""
    accelerator = make_accelerator(load_config(["--compile", "on", "--compile_mode", mode]))
    model = accelerator.prepare(torch.nn.Linear(4, 4))
    assert model.get_compiler_config()["max_autotune"] is autotunes


def test_cli_error_is_one_line_and_exit_2():
    result = run([sys.executable, TRAIN, "--learning_rat", "1e-3"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown config key 'learning_rat'; did you mean 'learning_rate'?"]
