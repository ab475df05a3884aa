"""Running the real trainer in subprocesses, as users do."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import warm_commands
from warm_commands import REPO, subprocess_env

TRAIN = str(REPO / "accel_train" / "train.py")
GPT2_FILES = REPO / "tests" / "fixtures" / "gpt2"  # GPT-2's published encoder.json and vocab.bpe
TINYSTORIES = REPO / "tests" / "fixtures" / "tinystories" / "tinystories_500.txt"  # stories between <|endoftext|> lines

# A model small enough that a few optimizer steps take well under a second on 2 cores.
TINY_MODEL = ["--model.hidden_size", "64", "--model.intermediate_size", "128", "--model.num_hidden_layers", "2",
              "--model.num_attention_heads", "2", "--model.num_key_value_heads", "1", "--model.head_dim", "32",
              "--model.query_pre_attn_scalar", "32", "--model.sliding_window", "32"]


def run(cmd: list[str], timeout: float = 300, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """cmd to its end, by default from the repository's root, its output captured as text (warm_commands.py:
    forked from a Python that has imported torch where that runs alike)."""
    process = start_process(cmd, env, cwd)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(cmd, process.returncode, stdout, stderr)


def command(script: str, args: list[str], processes: int = 1, config_file: str | None = None) -> list[str]:
    """`python script ...` for one process, `accelerate launch --multi_gpu` for several (gloo on CPU), or
    `accelerate launch --config_file` with one of configs/accelerate/ when `config_file` names it (with several
    processes, their number and a free port override the file's)."""
    if config_file:
        several = ["--num_processes", str(processes), "--main_process_port", "0"] if processes > 1 else []
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file, *several, script,
                *args]
    if processes == 1:
        return [sys.executable, script, *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "0",  # a free port: tests running side by side must not collide on 29500
            script, *args]


def start_process(cmd: list[str], env: dict | None = None, cwd: Path = REPO, output=None):
    """cmd started from `cwd` as `run` starts it; read it with `.communicate()`, or find its stdout and stderr in
    the file `output`."""
    return warm_commands.start(cmd, subprocess_env(env), cwd, output)


def launch(script: str, args: list[str], processes: int = 1, **kwargs) -> subprocess.CompletedProcess:
    return run(command(script, args, processes), **kwargs)


def train(args: list[str], processes: int = 1, **kwargs) -> subprocess.CompletedProcess:
    return launch(TRAIN, args, processes, **kwargs)


def run_side_by_side(cases: list[tuple[str, list[str], list[str]]], timeout: float = 300,
                     env: dict | None = None) -> dict:
    """{name: (status, stderr, words)} of each (name, command, words) case, all started at once to save time."""
    procs = [start_process(cmd, env) for _, cmd, _ in cases]
    results = {}
    for (name, _, words), proc in zip(cases, procs):
        _, stderr = proc.communicate(timeout=timeout)
        results[name] = (proc.returncode, stderr, words)
    return results


def assert_one_error_line(status: int, stderr: str, *words: str) -> str:
    """The refusal contract: status 2 and one `error:` line on stderr, holding each of `words`; returns the line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict:
    """sha256 of every file under root, by relative path: compare two to show that nothing on disk changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def max_difference(a: dict, b: dict) -> float:
    """The largest element-wise difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def gpt2_backend():
    """GPT-2's tokenizer built with `tokenizers` from its two published files: a byte-level BPE whose
    `<|endoftext|>` is the vocabulary's last token, 50256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    backend = Tokenizer(models.BPE.from_file(str(GPT2_FILES / "encoder.json"), str(GPT2_FILES / "vocab.bpe")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>"])
    return backend


def tinystories() -> list[str]:
    """The stories of the TinyStories slice that ships with the tests (real English)."""
    return [s.strip() for s in TINYSTORIES.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]


def bf16_losses_and_grads(model_config, idx):
    """[(loss, flat gradients)] of the plain-loss and the fused-loss model, same weights, under bf16
    autocast on idx's device: the two ways of computing the loss compared as training sees them."""
    import torch

    from accel_train.models.gemma3 import Gemma3

    torch.manual_seed(0)
    plain = Gemma3(model_config, fused_loss=False).to(idx.device)
    fused = Gemma3(model_config).to(idx.device)
    fused.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, fused):
        with torch.autocast(idx.device.type, dtype=torch.bfloat16):
            _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    return results


def help_by_key(cmd: list[str]) -> dict[str, str]:
    """{key: its --help entry on one line} of each `--key` that `cmd --help` lists (argparse wraps long ones)."""
    result = run([*cmd, "--help"])
    assert result.returncode == 0, result.stderr
    entries = re.split(r"\n(?=  --)|\n\n", result.stdout)
    return {entry.split()[0][2:]: " ".join(entry.split()) for entry in entries if entry.startswith("  --")}
