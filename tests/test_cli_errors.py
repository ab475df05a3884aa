"""The tools beside the trainer (sample, export, prepare, plot): a mistake on their command line or a path they
cannot write ends with one `error:` line and exit status 2, never a traceback, and costs nothing on disk."""

import subprocess
import sys

import pytest
import torch

from accel_train import export, plot, prepare, sample
from accel_train.errors import UserError
from helpers import REPO, subprocess_env

TOOLS = {"sample": sample, "export": export, "prepare": prepare, "plot": plot}


def run_all(commands: dict) -> dict:
    """{name: (status, stderr)} of `python -m accel_train.TOOL ARGS...` for each name, run side by side."""
    procs = {name: subprocess.Popen([sys.executable, "-m", f"accel_train.{tool}", *map(str, args)], cwd=REPO,
                                    env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (tool, *args) in commands.items()}
    return {name: (proc.wait(timeout=300), proc.communicate()[1]) for name, proc in procs.items()}


def assert_one_error_line(status: int, stderr: str, *words: str) -> None:
    lines = stderr.splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert all(word in lines[0] for word in words), (words, lines[0])


def test_argument_mistakes_are_one_error_line():
    outcomes = run_all({
        "sample without --checkpoint": ["sample"],
        "sample temperature nan": ["sample", "--checkpoint", "nowhere", "--temperature", "nan"],
        "export unknown option": ["export", "--checkpoint", "x", "--out", "y", "--bogus", "1"],
        "prepare without --out": ["prepare", "--input", "x"],
        "plot without out_dir": ["plot"],
    })
    assert_one_error_line(*outcomes["sample without --checkpoint"], "--checkpoint", "--help")
    assert_one_error_line(*outcomes["sample temperature nan"], "--temperature", "nan")
    assert_one_error_line(*outcomes["export unknown option"], "--bogus")
    assert_one_error_line(*outcomes["prepare without --out"], "--out")
    assert_one_error_line(*outcomes["plot without out_dir"], "out_dir")


@pytest.mark.parametrize("tool", TOOLS)
def test_help_still_works(tool, capsys):
    with pytest.raises(SystemExit) as stop:
        TOOLS[tool].main(["--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-1"), ("--max_new_tokens", "-1"),
    ("--max_new_tokens", "0"), ("--top_k", "-1"), ("--num_samples", "0"), ("--num_samples", "-1"), ("--seed", "-1"),
    ("--seed", str(2**64)), ("--top_k", "2.5"),
])
def test_sample_refuses_meaningless_numbers_before_loading_anything(option, value):
    with pytest.raises(UserError, match=f"argument {option}: .*{value}"):
        sample.main(["--checkpoint", "nowhere", option, value])


@pytest.mark.parametrize("option, value", [
    ("--val_fraction", "nan"), ("--val_fraction", "0"), ("--val_fraction", "1"), ("--val_fraction", "inf"),
    ("--workers", "0"), ("--workers", "-1"), ("--block_size", "0"), ("--block_size", "-5"), ("--seed", "-1"),
    ("--vocab_size", "-1"), ("--vocab_size", "256"), ("--vocab_size", str(2**40)),
])
def test_prepare_refuses_meaningless_numbers(option, value):
    with pytest.raises(UserError, match=f"argument {option}: .*{value}"):
        prepare.parse_args(["--input", "x", "--out", "y", "--tokenizer", "bpe", option, value])


def test_a_tiny_temperature_samples_the_likeliest_token():
    """Logits over a tiny temperature overflow to inf (or divide by a float32 zero); the sample must still be a
    token: the likeliest."""
    logits = torch.tensor([10.0, 30.0, 20.0, -10.0])
    for temperature in (2e-38, 1e-45, 5e-324):
        assert sample.next_token(logits, temperature, 0, torch.Generator().manual_seed(0)) == 1
