"""Resuming with another process count or batch shape: exact where the data stream is the same, refused where not.

Global batch b is drawn from (seed, b) alone and an optimizer step takes accumulation x processes
of them, so 2 processes with accumulation 1 and 1 process with accumulation 2 are the same run:
a run started one way and finished the other must end where an uninterrupted run ends; so must one
whose micro_batch (sequences per forward pass) changed on resume, as the automatic one may on another
GPU. A change of batch_size, block_size, seed or accumulation x processes would change the data
mid-run and must be refused before anything is written.
"""

import json
import shutil

import pytest
from safetensors.torch import load_file

from accel_train.checkpointing.checkpoint import write_manifest
from accel_train.checkpointing.trainer_state import FORMAT_VERSION
from helpers import TINY_MODEL, TRAIN, command, max_difference, snapshot, start_process, train

MAX_ITERS, FIRST_PART = 6, 3  # odd: 3 micro-batches, which is not a whole number of accumulation windows of 2
RUN = ["--warmup_steps", "1", "--learning_rate", "3e-3", "--min_lr", "3e-4", "--batch_size", "4", "--block_size", "32",
       "--eval_interval", "3", "--eval_iters", "1", "--log_interval", "1", "--checkpoint_interval", str(FIRST_PART),
       "--keep_last", "0", "--dtype", "float32", "--device", "cpu", "--demo_data", "false", "--plot", "false",
       "--sample_tokens", "0", *TINY_MODEL]
ONE_PROCESS = {"OMP_NUM_THREADS": "1"}  # as accelerate launch sets it for each of several processes


def args(data_dir, out_dir, accumulation, *extra):
    return ["--data_dir", str(data_dir), "--out_dir", str(out_dir), *RUN, "--max_iters", str(MAX_ITERS),
            "--gradient_accumulation_steps", str(accumulation), *extra]


def weights(out_dir, step=MAX_ITERS):
    return load_file(out_dir / "checkpoints" / f"step_{step}" / "model.safetensors")


@pytest.fixture(scope="module")
def runs(demo_data_dir, tmp_path_factory):
    """out_dirs of: one uninterrupted process with accumulation 2 ("reference"); two processes with
    accumulation 1 ("two_processes"); one process taking both sequence groups of a step in one forward pass
    ("micro_batch_8"); each taken back to its mid-run checkpoint and finished another way ("to_one_process":
    on one process with accumulation 2; "to_two_processes": the reverse; "to_micro_batch_4": two forward
    passes per step, as a resume on a GPU with less memory would choose)."""
    root = tmp_path_factory.mktemp("resume_shape")
    out = {name: root / name for name in ("reference", "two_processes", "micro_batch_8", "to_one_process",
                                          "to_two_processes", "to_micro_batch_4")}
    for name, accumulation, processes, extra in (("reference", 2, 1, []), ("two_processes", 1, 2, []),
                                                 ("micro_batch_8", 2, 1, ["--micro_batch", "8"])):
        result = train(args(demo_data_dir, out[name], accumulation, *extra), processes=processes, env=ONE_PROCESS)
        assert result.returncode == 0, result.stderr[-3000:]
    for source, switched, processes, accumulation in (("two_processes", "to_one_process", 1, 2),
                                                      ("reference", "to_two_processes", 2, 1),
                                                      ("micro_batch_8", "to_micro_batch_4", 1, 2)):
        shutil.copytree(out[source], out[switched])
        shutil.rmtree(out[switched] / "checkpoints" / f"step_{MAX_ITERS}")
        result = train(args(demo_data_dir, out[switched], accumulation, "--resume", "auto"), processes=processes,
                       env=ONE_PROCESS)
        assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("switched, tolerance", [("to_one_process", 1e-6), ("to_two_processes", 1e-6),
                                                ("micro_batch_8", 1e-4), ("to_micro_batch_4", 1e-4)])
def test_a_run_regrouped_or_resumed_regrouped_matches_an_uninterrupted_run(runs, switched, tolerance):
    """Processes traded for accumulation, or sequences regrouped into forward passes (micro_batch).

    Trading processes keeps every forward pass as it was. Regrouping does not: one matmul over 8 sequences
    rounds differently from two over 4 on CPUs whose kernels block by batch size (3e-5 after 6 steps on an
    AVX-512 Xeon, 0 on the AMD EPYC this was first run on), which is far below the 1.9e-3 that syncing on
    the wrong micro-batch gave."""
    assert max_difference(weights(runs[switched]), weights(runs["reference"])) < tolerance
    # the resumed steps were real, so agreeing within 1e-6 means something
    assert max_difference(weights(runs["reference"], FIRST_PART), weights(runs["reference"])) > 1e-3


def test_the_process_count_is_saved_with_each_checkpoint(runs):
    def saved(name, step):
        state = json.loads((runs[name] / "checkpoints" / f"step_{step}" / "trainer_state.json").read_text())
        return state["processes"], state["config"]["gradient_accumulation_steps"]

    assert saved("two_processes", MAX_ITERS) == (2, 1)
    assert saved("to_one_process", MAX_ITERS) == (1, 2)  # a resumed run records its own shape, not the checkpoint's
    assert saved("to_two_processes", MAX_ITERS) == (2, 1)


def in_format(out_dir, version):
    """An out_dir whose checkpoints say they are in format `version` (None: no format_version at all, as those
    written before checkpoints had one), their manifests rewritten so that they still verify."""
    for folder in (out_dir / "checkpoints").glob("step_*"):
        state = json.loads((folder / "trainer_state.json").read_text())
        state.pop("format_version")
        if version is not None:
            state["format_version"] = version
        (folder / "trainer_state.json").write_text(json.dumps(state))
        (folder / "manifest.json").unlink()
        write_manifest(folder)
    return out_dir


# (name, the run to copy, trainer arguments, words the error line must contain)
REFUSED = [
    ("batch_size", "reference", ["--batch_size", "8"], ["batch_size is 4 there, 8 here", "8 sequences", "16",
                                                        "--batch_size 4"]),
    ("block_size", "reference", ["--block_size", "64"], ["block_size is 32 there, 64 here", "--block_size 32"]),
    ("seed", "reference", ["--seed", "7"], ["seed is 1337 there, 7 here", "--seed 1337"]),
    ("accumulation", "reference", ["--gradient_accumulation_steps", "1"],
     ["2 x 1 process there, 1 x 1 process here", "8 sequences", "4 sequences",
      "--gradient_accumulation_steps 2 with 1 process"]),
    ("processes", "two_processes", ["--gradient_accumulation_steps", "1"],
     ["1 x 2 processes there, 1 x 1 process here", "--gradient_accumulation_steps 2 with 1 process"]),
]
# checkpoints this version cannot read: (name, the format_version they claim, words the error line must contain)
OTHER_FORMATS = [("no format_version", None, ["has no format_version", f"reads format_version {FORMAT_VERSION}"]),
                 ("a later format", FORMAT_VERSION + 1, [f"has format_version {FORMAT_VERSION + 1}",
                                                         f"reads format_version {FORMAT_VERSION} only"])]


@pytest.fixture(scope="module")
def refusals(runs, demo_data_dir, tmp_path_factory):
    """{name: (exit status, stderr, snapshot before, snapshot after)}: each change tried on its own copy,
    all side by side."""
    root = tmp_path_factory.mktemp("refused")
    cases = {}
    formats = {name: version for name, version, _ in OTHER_FORMATS}  # only these are rewritten in another format
    for name, source, extra in [*((name, source, extra) for name, source, extra, _ in REFUSED),
                                *((name, "reference", []) for name in formats)]:
        out = shutil.copytree(runs[source], root / name.replace(" ", "_"))
        if name in formats:
            in_format(out, formats[name])
        accumulation = 1 if source == "two_processes" else 2
        more = ["--max_iters", str(MAX_ITERS + 3)]  # room to train, were the resume not refused
        cases[name] = (out, snapshot(out), start_process(
            command(TRAIN, args(demo_data_dir, out, accumulation, "--resume", "auto", *more, *extra)),
            ONE_PROCESS))
    results = {}
    for name, (out, before, proc) in cases.items():
        _, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stderr, before, snapshot(out))
    return results


@pytest.mark.parametrize("name, words", [(name, words) for name, _, _, words in REFUSED],
                         ids=[name for name, *_ in REFUSED])
def test_a_changed_data_stream_is_refused_with_one_line_and_nothing_written(refusals, name, words):
    check_refused(refusals[name], words)


@pytest.mark.parametrize("name, words", [(name, words) for name, _, words in OTHER_FORMATS],
                         ids=[name for name, *_ in OTHER_FORMATS])
def test_a_checkpoint_of_another_format_is_refused_with_one_line_and_nothing_written(refusals, name, words):
    """No reader of older layouts: a checkpoint whose format_version is not this version's is refused whole."""
    check_refused(refusals[name], words)


def check_refused(refusal, words):
    returncode, stderr, before, after = refusal
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "start a new out_dir" in lines[0]
    assert after == before
