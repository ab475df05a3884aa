"""The tools beside the trainer (sample, export, prepare, plot): a mistake on their command line or a path they
cannot write ends with one `error:` line and exit status 2, never a traceback, and costs nothing on disk."""

import json
import resource
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TINY_MODEL, TRAIN, assert_one_error_line, run, run_side_by_side, snapshot, subprocess_env

from accel_train import export, plot, prepare, sample
from accel_train.data.demo_corpus import stories
from accel_train.errors import UserError
from accel_train.models.generation import next_token

TOOLS = {"sample": sample, "export": export, "prepare": prepare, "plot": plot}
SEP = "<|endoftext|>"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def command(tool: str, *args) -> list[str]:
    return [sys.executable, "-m", f"accel_train.{tool}", *map(str, args)]


def run_all(commands: dict) -> dict:
    """{name: (status, stderr)} of `python -m accel_train.TOOL ARGS...` for each name, run side by side."""
    outcomes = run_side_by_side([(name, command(*args), []) for name, args in commands.items()], env=OFFLINE)
    return {name: (status, stderr) for name, (status, stderr, _) in outcomes.items()}


def with_file_size_limit(nbytes: int, cmd: list[str]) -> subprocess.CompletedProcess:
    """Run cmd where no file may grow past nbytes, as on a full disk (a write fails with EFBIG: Python ignores
    SIGXFSZ)."""
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes)))


def leftovers(root) -> list[str]:
    """Staging folders left anywhere under root (relative paths): hidden, and named after the output."""
    return [str(p.relative_to(root)) for p in root.rglob(".*") if ".tmp" in p.name]


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
        assert next_token(logits, temperature, 0, torch.Generator().manual_seed(0)) == 1


def test_outputs_that_cannot_be_written_are_one_error_line(tmp_path):
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "raw.txt").write_text(SEP.join(stories(60)))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0,
                                                                "tokens_per_s": 100.0}) + "\n")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text('{"step": 1, "loss": \n{"step": 2, "loss": 1.0}\n')
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "train.jsonl").write_text('{"text": "a story"}\n' * 50 + '{"text": broken\n')
    byte = ["--tokenizer", "byte", "--separator", SEP, "--val_fraction", "0.2", "--block_size", "16"]
    prep = ["prepare", "--input", tmp_path / "raw.txt", *byte]
    before = snapshot(tmp_path)
    outcomes = run_all({
        "prepare under a file": [*prep, "--out", tmp_path / "afile" / "out"],
        "prepare onto a file": [*prep, "--out", tmp_path / "afile", "--overwrite"],
        "prepare in /proc": [*prep, "--out", "/proc/accel_train_test/out"],
        "prepare a malformed dataset": ["prepare", "--dataset", tmp_path / "dataset", "--out", tmp_path / "d", *byte],
        "export under a file": ["export", "--checkpoint", "nowhere", "--out", tmp_path / "afile" / "hf"],
        "export into the current folder": ["export", "--checkpoint", "nowhere", "--out", "."],
        "plot under a file": ["plot", tmp_path / "run", "--out", tmp_path / "afile" / "m.png"],
        "plot to an unknown file type": ["plot", tmp_path / "run", "--out", tmp_path / "m.unknown"],
        "plot malformed metrics": ["plot", tmp_path / "broken"],
    })
    assert_one_error_line(*outcomes["prepare under a file"], "afile", "not a folder")
    assert_one_error_line(*outcomes["prepare onto a file"], "afile", "not a folder")
    assert_one_error_line(*outcomes["prepare in /proc"], "/proc/accel_train_test/out")
    assert_one_error_line(*outcomes["prepare a malformed dataset"], "cannot read dataset")
    assert_one_error_line(*outcomes["export under a file"], "afile", "not a folder")
    assert_one_error_line(*outcomes["export into the current folder"], str(REPO), "holds files")
    assert_one_error_line(*outcomes["plot under a file"], "m.png")
    assert_one_error_line(*outcomes["plot to an unknown file type"], "m.unknown")
    assert_one_error_line(*outcomes["plot malformed metrics"], "metrics.jsonl", "JSON")
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("tokenizer, limit", [("byte", 50_000), ("bpe", 10_000)])
@pytest.mark.parametrize("earlier_output", [False, True])
def test_prepare_on_a_full_disk_is_one_error_line_and_costs_nothing(tmp_path, tokenizer, limit, earlier_output):
    """byte: train.bin outgrows the limit; bpe: tokenizer.json does, written by `tokenizers` before the tokens.
    An --overwrite that fails leaves the earlier output as it was."""
    (tmp_path / "raw.txt").write_text(SEP.join(stories(300)))
    out = tmp_path / "out"
    if earlier_output:
        out.mkdir()
        (out / "train.bin").write_bytes(b"earlier tokens")
        (out / "NOTES.md").write_text("mine")
    before = snapshot(tmp_path)
    args = ["--input", tmp_path / "raw.txt", "--out", out, "--overwrite", "--separator", SEP]
    result = with_file_size_limit(limit, command("prepare", *args, "--tokenizer", tokenizer, "--vocab_size", "2000"))
    assert_one_error_line(result.returncode, result.stderr, "cannot write", "out", "File too large")
    assert snapshot(tmp_path) == before and not leftovers(tmp_path) and out.exists() == earlier_output


def test_export_that_cannot_write_is_one_error_line_and_leaves_nothing(trained_run, tmp_path):
    out_dir, _ = trained_run
    result = with_file_size_limit(50_000, command("export", "--checkpoint", out_dir, "--out", tmp_path / "hf"))
    assert_one_error_line(result.returncode, result.stderr, "cannot write", "hf", "File too large")
    assert not list(tmp_path.iterdir())
    result = run(command("export", "--checkpoint", out_dir, "--out", "/proc/accel_train_test/hf"))
    assert_one_error_line(result.returncode, result.stderr, "cannot write", "/proc/accel_train_test/hf")


def test_the_trainer_names_its_own_remedy_when_the_demo_corpus_cannot_go_into_data_dir(tmp_path):
    """The trainer writes the demo corpus (only into data/demo) with prepare's code; the way out it names is
    the trainer's, not prepare's --overwrite."""
    data = tmp_path / "data" / "demo"
    data.mkdir(parents=True)
    (data / "NOTES.md").write_text("mine")
    cmd = [sys.executable, TRAIN, *["--data_dir", "data/demo", "--out_dir", "out", "--demo_data", "true", *TINY_MODEL,
                              "--max_iters", "2", "--warmup_steps", "1", "--plot", "false", "--sample_tokens", "0"]]
    result = run(cmd, cwd=tmp_path)
    assert_one_error_line(result.returncode, result.stderr, "data/demo", "--data_dir")
    assert "--overwrite" not in result.stderr and [p.name for p in data.iterdir()] == ["NOTES.md"]


def word_level_tokenizer(folder, eos_token):
    """A WordLevel tokenizer of three words and no unknown token: it cannot encode any other word."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel(vocab={"once": 0, "upon": 1, "<eos>": 2}))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token}))
    return folder


def test_tokenizers_prepare_cannot_use_are_one_error_line_and_leave_nothing(tmp_path):
    """An eos_token that is no token's text (a number, a list), and a tokenizer that cannot encode the text."""
    (tmp_path / "raw.txt").write_text(SEP.join(stories(20)))
    prep = ["prepare", "--input", tmp_path / "raw.txt", "--separator", SEP, "--val_fraction", "0.2",
            "--block_size", "4", "--workers", "2"]
    cases = {"number": 2, "list": ["<eos>"], "cannot encode": {"content": "<eos>"}}
    folders = {name: word_level_tokenizer(tmp_path / name.replace(" ", "_"), eos) for name, eos in cases.items()}
    before = snapshot(tmp_path)
    outcomes = run_all({name: [*prep, "--tokenizer", folder, "--out", tmp_path / f"out_{folder.name}"]
                        for name, folder in folders.items()})
    assert_one_error_line(*outcomes["number"], "eos_token", "2", "--eot_token")
    assert_one_error_line(*outcomes["list"], "eos_token", "['<eos>']", "--eot_token")
    assert_one_error_line(*outcomes["cannot encode"], "cannot encode", "Missing [UNK] token")
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)
    assert not list(tmp_path.glob("out_*"))


def test_sample_refuses_devices_that_cannot_compute_and_prompts_that_are_not_utf8(trained_run):
    checkpoint = ["sample", "--checkpoint", trained_run[0], "--max_new_tokens", "5"]
    outcomes = run_all({
        "meta": [*checkpoint, "--device", "meta"],
        "nonsense": [*checkpoint, "--device", "toaster"],
        "empty": [*checkpoint, "--device", ""],
        "absent GPU": [*checkpoint, "--device", f"cuda:{torch.cuda.device_count()}"],  # one past the last GPU
        "prompt": [*checkpoint, "--prompt", "Once \udcff"],  # the byte 0xff, as a shell passes it from argv
    })
    for name in ("meta", "nonsense", "empty", "absent GPU"):
        assert_one_error_line(*outcomes[name], "--device")
    assert_one_error_line(*outcomes["prompt"], "prompt", "not UTF-8")


def test_output_cut_off_by_a_closed_pipe_ends_quietly(trained_run):
    """`sample ... | head`: the reader is gone before the first line; status 141, as SIGPIPE would end it."""
    proc = subprocess.Popen(command("sample", "--checkpoint", trained_run[0], "--max_new_tokens", "5"), cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 141 and stderr == "", stderr


def test_plot_writes_exactly_the_file_it_names(trained_run, tmp_path):
    outcomes = run_all({"no extension": ["plot", trained_run[0], "--out", tmp_path / "curves"],
                        "svg": ["plot", trained_run[0], "--out", tmp_path / "curves.svg"]})
    assert outcomes["no extension"][0] == 0 and outcomes["svg"][0] == 0, outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves", "curves.svg"]
    assert (tmp_path / "curves").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (tmp_path / "curves.svg").read_bytes()[:1000]


@pytest.mark.parametrize("row, words", [
    (b"[1, 2]", ["not a metrics row"]),
    (b'{"loss": 1.0}', ["not a metrics row"]),
    (b'{"step": "3", "loss": 1.0}', ["not a metrics row"]),
    (b'{"step": 3, "loss": [1.0]}', ["not a metrics row"]),
    (b'{"step": 3, "loss": 1.0, "note": "\xff"}', ["not UTF-8"]),
])
def test_plot_names_the_line_of_a_metrics_row_it_cannot_draw(tmp_path, row, words):
    good = json.dumps({"step": 1, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 100.0}).encode()
    (tmp_path / "metrics.jsonl").write_bytes(good + b"\n" + row + b"\n" + good + b"\n")
    result = run(command("plot", tmp_path))
    assert_one_error_line(result.returncode, result.stderr, "metrics.jsonl line 2", *words)
    assert not (tmp_path / "metrics.png").exists()
