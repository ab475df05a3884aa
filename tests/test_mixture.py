"""Weighted mixtures of data folders through the real trainer: weights changed on resume after a SIGKILL, per-source
validation rows, one process against two on document-aligned windows, and folders that cannot be mixed."""

import json
import shutil
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from accel_train.checkpointing.checkpoint import STATE_FILE
from accel_train.data.tokenizer import train_bpe
from accel_train.data.dataset import write_dataset
from accel_train.training.metrics_plot import draw
from accel_train.training.tracking import read_metrics
from helpers import (REPO, TINY_MODEL, TINYSTORIES, assert_one_error_line, max_difference, run_side_by_side,
                     start_process, train)
from interrupt import comparable_rows, kill_all, start, wait_until

RUN = [*TINY_MODEL, "--model.vocab_size", "320", "--batch_size", "4", "--block_size", "32",
       "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3", "--min_lr", "1e-3", "--warmup_steps", "0",
       "--eval_interval", "4", "--eval_iters", "1", "--log_interval", "1", "--checkpoint_interval", "4",
       "--keep_last", "0", "--device", "cpu", "--dtype", "float32", "--plot", "false", "--sample_tokens", "0"]
NAMES = ("books", "code", "web")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Three byte-tokenized folders (a third of the TinyStories fixture each) and one made with GPT-2's tokenizer."""
    root = tmp_path_factory.mktemp("mixture")
    stories = TINYSTORIES.read_text(encoding="utf-8").split("<|endoftext|>")
    jobs = {}
    for i, name in enumerate((*NAMES, "gpt2")):
        text = root / f"{name}.txt"
        text.write_text("<|endoftext|>".join(stories[i::4]), encoding="utf-8")
        tokenizer = "gpt2" if name == "gpt2" else "byte"
        jobs[name] = start_process([sys.executable, "-m", "accel_train.prepare", "--input", str(text),
                                    "--separator", "<|endoftext|>", "--tokenizer", tokenizer, "--val_fraction",
                                    "0.1", "--out", str(root / name)])
    for name, job in jobs.items():
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr
    return root


def mix(root, weights):
    return ",".join(f"{root / name}={w}" for name, w in zip(NAMES, weights))


W1, W2 = (0.25, 0.25, 0.5), (0.5, 0.25, 0.25)  # whole windows per batch of 4: each batch shows them exactly


def state(out, step):
    return json.loads((out / "checkpoints" / f"step_{step}" / STATE_FILE).read_text())


def test_weights_changed_on_resume_after_a_sigkill_continue_exactly(folders, tmp_path):
    # the reference: 4 steps with W1, ended cleanly, then resumed with W2 to step 8
    reference = tmp_path / "reference"
    for steps, weights in ((4, W1), (8, W2)):
        result = train([*RUN, "--out_dir", str(reference), "--resume", "auto", "--max_iters", str(steps),
                        "--data_mix", mix(folders, weights)])
        assert result.returncode == 0, result.stderr[-3000:]
    # the same, killed (SIGKILL) once its step-4 checkpoint is complete, in a run planned far longer
    killed, log = tmp_path / "killed", tmp_path / "log.txt"
    proc = start([*RUN, "--out_dir", str(killed), "--max_iters", "10000", "--data_mix", mix(folders, W1)], 1, log)
    try:
        assert wait_until(proc, lambda: (killed / "checkpoints" / "step_4").is_dir()), log.read_text()[-3000:]
    finally:
        kill_all(proc)
    for later in (killed / "checkpoints").glob("step_*"):  # resume at step 4, whatever the run reached
        if int(later.name[5:]) > 4:
            shutil.rmtree(later)
    result = train([*RUN, "--out_dir", str(killed), "--resume", "auto", "--max_iters", "8",
                    "--data_mix", mix(folders, W2)])
    assert result.returncode == 0, result.stderr[-3000:]

    final = "checkpoints/step_8/model.safetensors"
    assert (killed / final).read_bytes() == (reference / final).read_bytes()
    assert comparable_rows(killed) == comparable_rows(reference)
    assert state(killed, 8)["mixture"] == state(reference, 8)["mixture"]
    # the realized proportions: 16 windows before the change, 16 after, each in its weights
    before = state(killed, 4)["mixture"]["counts"]
    after = state(killed, 8)["mixture"]["counts"]
    assert [before[n] for n in NAMES] == [16 * w for w in W1]
    assert [after[n] - before[n] for n in NAMES] == [16 * w for w in W2]
    assert state(killed, 8)["mixture"]["weights"] == dict(zip(NAMES, W2))

    evaluations = [r for r in read_metrics(reference) if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [4, 8]
    for row, weights in zip(evaluations, (W1, W2)):  # each source's figures, and their weighted mean
        assert {f"val_loss/{n}" for n in NAMES} | {f"val_bpb/{n}" for n in NAMES} <= row.keys()
        assert row["val_loss"] == pytest.approx(sum(w * row[f"val_loss/{n}"] for n, w in zip(NAMES, weights)))
        assert row["val_bpb"] == pytest.approx(sum(w * row[f"val_bpb/{n}"] for n, w in zip(NAMES, weights)))
    lines = draw(read_metrics(reference)).axes[0].get_lines()  # the plot: a validation line per source
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in lines[2:]] == \
        [([4, 8], [r[f"val_loss/{n}"] for r in evaluations]) for n in NAMES]

    # a source is its folder's name: moved elsewhere, web goes on from its count; renamed, it is refused, as its
    # windows would start over
    shutil.copytree(folders / "web", tmp_path / "moved" / "web")
    shutil.copytree(folders / "web", tmp_path / "renamed" / "web2")
    moved = ",".join(f"{folders / n}={w}" for n, w in zip(NAMES[:2], W2[:2])) + f",{tmp_path / 'moved' / 'web'}=0.25"
    renamed = moved.replace(str(tmp_path / "moved" / "web"), str(tmp_path / "renamed" / "web2"))
    results = run_side_by_side([(out.name, [sys.executable, str(REPO / "accel_train" / "train.py"), *RUN, "--out_dir",
                                            str(out), "--resume", "auto", "--max_iters", "9", "--data_mix", data_mix],
                                 None) for out, data_mix in ((killed, moved), (reference, renamed))])
    status, stderr, _ = results["killed"]
    assert status == 0, stderr[-3000:]
    assert state(killed, 9)["mixture"]["counts"]["web"] == after["web"] + 1  # its quarter of a batch of 4
    status, stderr, _ = results["reference"]
    assert_one_error_line(status, stderr, "web2", "web", "renamed")
    assert not (reference / "checkpoints" / "step_9").exists()


def test_two_processes_train_a_document_aligned_mixture_as_one_does(folders, tmp_path):
    outs = {}
    for processes, accumulation in ((1, 2), (2, 1)):
        outs[processes] = tmp_path / f"p{processes}"
        result = train([*RUN, "--out_dir", str(outs[processes]), "--max_iters", "4", "--window_start", "document",
                        "--gradient_accumulation_steps", str(accumulation), "--data_mix", mix(folders, (1, 1, 2))],
                       processes=processes, env={"OMP_NUM_THREADS": "1"})
        assert result.returncode == 0, result.stderr[-3000:]
    assert state(outs[1], 4)["mixture"] == state(outs[2], 4)["mixture"]
    weights = [load_file(outs[p] / "checkpoints" / "step_4" / "model.safetensors") for p in (1, 2)]
    assert max_difference(*weights) < 1e-6
    losses = [[r["loss"] for r in read_metrics(outs[p])] for p in (1, 2)]
    assert np.allclose(losses[0], losses[1], rtol=1e-6)


def two_bpe_folders(root) -> list:
    """Two folders, each made with a BPE of 300 tokens trained on its own stories: one name, one size, one
    end-of-text id, but other ids for the same text."""
    stories = TINYSTORIES.read_text(encoding="utf-8").split("<|endoftext|>")
    tokenizers = [train_bpe(stories[i::2], 300) for i in (0, 1)]
    assert tokenizers[0].encode(stories[0]) != tokenizers[1].encode(stories[0])
    assert tokenizers[0].vocab_size == tokenizers[1].vocab_size
    return [write_dataset(root / f"bpe{i}", stories[i::2], tokenizer, source={"input": "stories"}, val_fraction=0.2)
            and root / f"bpe{i}" for i, tokenizer in enumerate(tokenizers)]


def test_folders_that_cannot_be_mixed_are_refused_in_one_line(folders, tmp_path):
    base = [sys.executable, str(REPO / "accel_train" / "train.py"), *RUN, "--max_iters", "2"]
    bpe = two_bpe_folders(tmp_path)
    cases = [("tokenizer", [*base, "--out_dir", str(tmp_path / "a"), "--model.vocab_size", "50257", "--data_mix",
                            f"{folders / 'web'}=1,{folders / 'gpt2'}=1"], ["gpt2", "tokenizer", "data_mix"]),
             ("missing", [*base, "--out_dir", str(tmp_path / "b"), "--data_mix",
                          f"{folders / 'web'}=1,{folders / 'nowhere'}=1"], ["nowhere", "does not exist"]),
             ("weight", [*base, "--out_dir", str(tmp_path / "c"), "--data_mix", f"{folders / 'web'}=-1"],
              ["data_mix", "positive"]),
             # one folder by two paths is one source: two weights for it would leave one unused
             ("repeated", [*base, "--out_dir", str(tmp_path / "d"), "--data_mix",
                           f"{folders / 'web'}=0.3,{folders / 'books'}=0.4,{folders}/./web=0.3"],
              ["data_mix", str(folders / "web"), "twice"]),
             ("bpe", [*base, "--out_dir", str(tmp_path / "e"), "--data_mix", f"{bpe[0]}=1,{bpe[1]}=1"],
              ["data_mix", "tokenizer_fingerprint", "one tokenizer"])]
    for name, (status, stderr, words) in run_side_by_side(cases).items():
        assert_one_error_line(status, stderr, *words)
    assert not any((tmp_path / name).exists() for name in "abcde")  # refused before anything was written
