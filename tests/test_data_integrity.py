"""Data the trainer must refuse before it starts, down to every token id; the id scan; and data that names
no tokenizer, which must neither be taken for GPT-2's nor fail a finished run.

Trainer cases run as real processes, side by side, as in test_bad_input.py.
"""

import json
import os

import numpy as np
import pytest

from accel_train.errors import UserError
from accel_train.data.token_scan import CACHE_FILE, largest_id
from accel_train.data.tokenizer import load_tokenizer
from helpers import TINY_MODEL, TRAIN, assert_one_error_line, command, run_side_by_side, snapshot, train
from test_bad_input import write_data

BASE = ["--demo_data", "false", "--max_iters", "2", "--warmup_steps", "1", "--batch_size", "2", "--block_size", "32",
        "--eval_iters", "1", *TINY_MODEL, "--plot", "false", "--sample_tokens", "0"]
BYTE_META = {"dtype": "uint16", "vocab_size": 257}


def set_token(path, index, value, dtype=np.uint16):
    tokens = np.fromfile(path, dtype=dtype)
    tokens[index] = value
    tokens.tofile(path)


def setup_cases(root):
    """(name, data folder, words the error line must contain) for each kind of bad data, its files made."""
    def data(name, meta=BYTE_META):
        return write_data(root / name, meta=meta)

    beyond_model = data("beyond_model")
    set_token(beyond_model / "train.bin", 4000, 400)  # the model has 320 ids: an IndexError mid-run
    beyond_meta = data("beyond_meta")
    set_token(beyond_meta / "val.bin", 10, 300)  # the model has room, meta.json's vocabulary does not
    as_uint32 = data("as_uint32", meta={"dtype": "uint32", "vocab_size": 257})  # uint16 files, no token counts
    a_list = data("a_list", meta=[BYTE_META])
    tokens_list = data("tokens_list", meta={**BYTE_META, "tokens": [5000, 1000]})
    tokens_text = data("tokens_text", meta={**BYTE_META, "tokens": "5000"})
    count_text = data("count_text", meta={**BYTE_META, "tokens": {"train": "5000", "val": 1000}})
    dtype_list = data("dtype_list", meta={"dtype": ["uint16"], "vocab_size": 257})
    not_utf8 = data("not_utf8")
    (not_utf8 / "meta.json").write_bytes(b"\xff\xfe{}")
    train_folder = data("train_folder")
    (train_folder / "train.bin").unlink()
    (train_folder / "train.bin").mkdir()
    val_link = data("val_link")
    (val_link / "val.bin").unlink()
    (val_link / "val.bin").symlink_to(root / "nowhere.bin")
    return [
        ("id beyond the model", beyond_model, ["train.bin", "400", "below vocab_size 257", "meta.json"]),
        ("id beyond meta.json", beyond_meta, ["val.bin", "300", "below vocab_size 257", "meta.json"]),
        ("uint16 read as uint32", as_uint32, ["train.bin", "uint32", "uint16 tokens"]),
        ("meta.json a list", a_list, ["meta.json", "JSON object", "list"]),
        ("tokens a list", tokens_list, ["meta.json", "'tokens'"]),
        ("tokens a string", tokens_text, ["meta.json", "'tokens'"]),
        ("a count a string", count_text, ["meta.json", "'tokens'"]),
        ("dtype a list", dtype_list, ["meta.json", "'dtype'"]),
        ("meta.json not UTF-8", not_utf8, ["meta.json", "utf-8"]),
        ("train.bin a folder", train_folder, ["train.bin", "not a regular file"]),
        ("val.bin a broken link", val_link, ["val.bin", "not a regular file"]),
    ]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_data")
    cases = setup_cases(root)
    before = snapshot(root)
    results = run_side_by_side([(name, command(TRAIN, [*BASE, "--model.vocab_size", "320", "--data_dir", str(folder),
                                                       "--out_dir", str(root / f"out_{i}")]), words)
                                for i, (name, folder, words) in enumerate(cases)])
    return results, root, before


CASES = ["id beyond the model", "id beyond meta.json", "uint16 read as uint32", "meta.json a list", "tokens a list",
         "tokens a string", "a count a string", "dtype a list", "meta.json not UTF-8", "train.bin a folder",
         "val.bin a broken link"]


@pytest.mark.parametrize("name", CASES)
def test_bad_data_ends_with_one_error_line_and_status_2(outcomes, name):
    status, stderr, words = outcomes[0][name]
    assert_one_error_line(status, stderr, *words)


def test_bad_data_changes_nothing_on_disk(outcomes):
    _, root, before = outcomes
    assert snapshot(root) == before  # no file changed or written, not even a scan cache
    assert not list(root.glob("out_*"))  # refused before the out_dir was made


def write_tokens(path, tokens, dtype=np.uint16):
    np.asarray(tokens, dtype=dtype).tofile(path)
    return path


def test_the_scan_reads_every_chunk_and_remembers_large_files(tmp_path):
    tokens = np.arange(2500) % 200
    tokens[-1] = 999  # in the last, partial chunk
    path = write_tokens(tmp_path / "train.bin", tokens)
    assert largest_id(path, np.uint16, chunk=1000) == 999
    cached = json.loads((tmp_path / CACHE_FILE).read_text())["train.bin"]
    assert cached["largest"] == 999 and cached["bytes"] == 5000
    stat = path.stat()
    set_token(path, -1, 7)  # same size and inode; with the old modification time the cache still answers
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert largest_id(path, np.uint16, chunk=1000) == 999
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # any change of the file is seen
    assert largest_id(path, np.uint16, chunk=1000) == 199
    assert largest_id(path, np.uint32, chunk=1000) == 199 * 65536 + 198  # the dtype is part of the key


def test_a_file_of_one_chunk_leaves_nothing_behind(tmp_path):
    path = write_tokens(tmp_path / "val.bin", [3, 9, 4])
    assert largest_id(path, np.uint16) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["val.bin"]


def test_a_cache_that_cannot_be_written_only_costs_a_scan(tmp_path):
    path = write_tokens(tmp_path / "train.bin", np.arange(3000) % 300)
    (tmp_path / CACHE_FILE).mkdir()  # stands in for a read-only folder (root may write anywhere)
    assert largest_id(path, np.uint16, chunk=1000) == 299
    assert largest_id(path, np.uint16, chunk=1000) == 299
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_FILE, "train.bin"]  # no temporary file left


def test_gpt2_is_assumed_only_for_gpt2_sized_vocabularies(tmp_path):
    byte_sized = write_data(tmp_path / "byte_sized", meta={"dtype": "uint16", "vocab_size": 257})
    with pytest.raises(UserError, match="meta.json names no tokenizer and its vocab_size 257 is not GPT-2's"):
        load_tokenizer(byte_sized)
    gpt2_sized = write_data(tmp_path / "gpt2_sized", meta={"dtype": "uint16", "vocab_size": 50257})
    assert load_tokenizer(gpt2_sized).name == "gpt2"
    seed_layout = tmp_path / "seed_layout"  # the seed's data: no meta.json at all
    seed_layout.mkdir()
    with pytest.warns(UserWarning, match="assuming uint16 tokens of the GPT-2 vocabulary"):
        assert load_tokenizer(seed_layout).name == "gpt2"


@pytest.mark.parametrize("vocab_size, note", [(50257, "tiktoken's gpt2 encoding"), (257, "names no tokenizer")])
def test_a_finished_run_succeeds_offline_when_the_sample_cannot_be_decoded(tmp_path, vocab_size, note):
    data = write_data(tmp_path / "data", meta={"dtype": "uint16", "vocab_size": vocab_size})  # no tokenizer key
    empty_cache = tmp_path / "tiktoken_cache"
    empty_cache.mkdir()
    offline = {"TIKTOKEN_CACHE_DIR": str(empty_cache), "HTTPS_PROXY": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
    out = tmp_path / "out"
    result = train([*BASE, "--model.vocab_size", str(vocab_size), "--sample_tokens", "5", "--data_dir", str(data),
                    "--out_dir", str(out)], env=offline)
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("note: no sample")]
    assert len(notes) == 1 and note in notes[0], result.stdout
    assert (out / "checkpoints" / "step_2" / "model.safetensors").is_file()
    assert not list(empty_cache.iterdir())  # nothing was downloaded
