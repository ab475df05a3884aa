"""get_batch and the training data stream: shapes, shift by one, bounds, reproducibility, memory."""

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from accel_train.data.tokens import RandomWindowBatches, get_batch, open_split, train_loader
from accel_train.errors import UserError


def write_split(folder, name, tokens, dtype="uint32", vocab_size=None):
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(tokens, dtype=dtype).tofile(folder / name)
    meta = {"dtype": dtype, "vocab_size": vocab_size or int(np.max(tokens)) + 1}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture()
def counting_data(tmp_path):
    """Token i is i, so every window shows where it starts; uint32 because it passes 65,535."""
    folder = tmp_path / "count"
    write_split(folder, "train.bin", np.arange(100_000))
    write_split(folder, "validation.bin", np.arange(300))  # the seed's name for the val split
    return folder


def test_get_batch_shapes_shift_and_contiguity(counting_data):
    x, y = get_batch("train", 16, 8, "cpu", "cpu", data_dir=counting_data)
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one token
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # each row is one contiguous window


def test_get_batch_reads_validation_bin_and_stays_in_bounds(counting_data):
    torch.manual_seed(0)
    block = 290  # 300 tokens leave exactly 10 window starts
    starts = torch.cat([get_batch("val", block, 64, "cpu", "cpu", data_dir=counting_data)[0][:, 0]
                        for _ in range(10)])
    assert starts.min() >= 0 and starts.max() + block + 1 <= 300
    assert set(starts.tolist()) == set(range(10))  # every start is reachable, the last one included


def test_get_batch_is_reproducible_from_the_seed(counting_data):
    torch.manual_seed(3)
    a = get_batch("train", 32, 4, "cpu", "cpu", data_dir=counting_data)[0]
    torch.manual_seed(3)
    b = get_batch("train", 32, 4, "cpu", "cpu", data_dir=counting_data)[0]
    c = get_batch("train", 32, 4, "cpu", "cpu", data_dir=counting_data)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def private_memory_mb() -> float:
    """Anonymous resident memory: what a leak grows (file pages of a memmap are the kernel's cache)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def test_memory_stays_flat_over_a_long_run(tmp_path):
    folder = tmp_path / "big"
    write_split(folder, "val.bin", np.arange(10), dtype="uint16")
    with open(folder / "train.bin", "wb") as f:  # 80 MB written in pieces, never held in memory at once
        for piece in range(8):
            np.random.default_rng(piece).integers(0, 50_000, 5_000_000, dtype=np.uint16).tofile(f)
    for _ in range(300):  # warm up allocator and imports
        get_batch("train", 128, 32, "cpu", "cpu", data_dir=folder)
    before = private_memory_mb()
    for _ in range(5000):  # 160,000 windows: 160 MB of batches pass through
        get_batch("train", 128, 32, "cpu", "cpu", data_dir=folder)
    grown = private_memory_mb() - before
    assert grown < 8, f"private memory grew by {grown:.0f} MB"


def test_bad_splits_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        get_batch("train", 8, 2, "cpu", "cpu", data_dir=tmp_path / "nowhere")
    folder = write_split(tmp_path / "odd", "train.bin", np.arange(10), dtype="uint16")
    with pytest.raises(UserError, match=r"no val split .*val.bin or validation.bin"):
        get_batch("val", 4, 2, "cpu", "cpu", data_dir=folder)
    (folder / "val.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(UserError, match="not a whole number of uint16 tokens"):
        get_batch("val", 4, 2, "cpu", "cpu", data_dir=folder)
    with pytest.raises(UserError, match="fewer than one block of 11"):
        get_batch("train", 10, 2, "cpu", "cpu", data_dir=folder)


def test_window_stream_is_a_function_of_seed_and_batch_index():
    full = list(RandomWindowBatches(1000, 4, seed=7, num_batches=10))
    assert full == list(RandomWindowBatches(1000, 4, seed=7, num_batches=10))
    assert list(RandomWindowBatches(1000, 4, seed=7, num_batches=10, first_batch=6)) == full[6:]
    assert full != list(RandomWindowBatches(1000, 4, seed=8, num_batches=10))
    assert all(0 <= s < 1000 for batch in full for s in batch)


def test_prepared_loader_yields_the_stream(counting_data):
    loader = train_loader(counting_data, block_size=16, batch_size=4, seed=5, num_batches=6)
    prepared = Accelerator(cpu=True).prepare(loader)
    expected = list(RandomWindowBatches(open_split(str(counting_data), "train").num_windows(16), 4, 5, 6))
    got = [x[:, 0].tolist() for x, _ in prepared]  # token i is i: the first token is the start
    assert got == expected
