"""The training stream on real data folders: every window once per epoch, document-aligned windows, mixtures'
proportions, and a stream that does not depend on micro_batch or on where a run resumed."""

import json

import numpy as np
import pytest

from accel_train.data import windows
from accel_train.data.tokens import StreamBatches, train_loader
from accel_train.data.mixture import Source, parse_mix
from accel_train.errors import UserError
from accel_train.data.stream import WindowStream

EOT = 999


def folder(path, tokens, **meta):
    """A data folder holding `tokens` as its train split (and a short val split)."""
    path.mkdir()
    np.asarray(tokens, dtype=np.uint32).tofile(path / "train.bin")
    np.arange(64, dtype=np.uint32).tofile(path / "val.bin")
    (path / "meta.json").write_text(json.dumps({"dtype": "uint32", "vocab_size": 1000, "tokenizer": "test",
                                                **meta}))
    return path


def documents(rng, lengths):
    """Token ids of documents of `lengths` (each ending with EOT) and where each one starts."""
    docs = [np.append(rng.integers(0, EOT, n - 1), EOT) for n in lengths]
    return np.concatenate(docs), np.cumsum([0, *lengths[:-1]])


def loader_starts(stream, num_batches, data, micro_batch=0, first_batch=0):
    """The first token position of every window the real loader yields, found in the data: for counting data,
    the first input token is its position."""
    starts = []
    for x, _ in train_loader(stream, num_batches, first_batch, micro_batch=micro_batch):
        starts += [data[int(t)] for t in x[:, 0]]
    return starts


def single(path, sampling="epoch", window_start="any", block_size=16, batch_size=4, first_batch=0):
    return WindowStream.of_folder(path, block_size, batch_size, 7, sampling, window_start, first_batch)


@pytest.fixture
def counting(tmp_path):
    return folder(tmp_path / "counting", np.arange(1000))


def test_every_window_is_seen_exactly_once_per_epoch_in_a_new_order_each_epoch(counting):
    stream = single(counting)
    n = (1000 - 1) // 16  # non-overlapping windows of 17 tokens, one every 16
    starts = loader_starts(stream, num_batches=-(-2 * n // 4), data=np.arange(1000))
    epochs = [starts[:n], starts[n:2 * n]]
    for epoch in epochs:
        assert sorted(epoch) == list(range(0, n * 16, 16))  # every window once, none twice
    assert epochs[0] != epochs[1]


def test_the_stream_is_the_same_whatever_the_micro_batch_and_the_first_batch(counting):
    whole = [item for batch in StreamBatches(single(counting), 12) for item in batch]
    regrouped = [item for batch in StreamBatches(single(counting), 12, micro_batch=2) for item in batch]
    assert regrouped == whole
    assert [item for batch in StreamBatches(single(counting, first_batch=5), 12, first_batch=5) for item in batch] \
        == whole[5 * 4:]


def test_document_aligned_windows_start_at_document_starts_and_cover_long_documents(tmp_path, monkeypatch):
    lengths = [5, 70, 12, 33, 3, 16, 40, 9]  # 70 and 40: longer than a block of 16
    tokens, doc_starts = documents(np.random.default_rng(0), lengths)
    data = folder(tmp_path / "docs", tokens, eot_token=EOT)
    expected = sorted(s + k for s, n in zip(doc_starts, lengths) for k in range(0, n, 16)
                      if s + k <= len(tokens) - 17)
    assert all(doc_starts[1] + k in expected for k in (16, 32, 48, 64))
    monkeypatch.setattr(windows, "SCAN_TOKENS", 7)  # documents cross the scan's chunks
    stream = single(data, window_start="document", batch_size=3)
    n = len(expected)
    found = [int(start) for batch in StreamBatches(stream, -(-n // 3)) for _, start in batch][:n]
    assert sorted(found) == expected  # each window once per epoch, each at a document start or a block into one
    cached = single(data, window_start="document", batch_size=3)  # from .windows/, written by the first
    assert (data / windows.CACHE_DIR).is_dir()
    assert [s for b in StreamBatches(cached, -(-n // 3)) for _, s in b][:n] == found


def test_document_starts_come_from_bos_where_the_data_has_one(tmp_path):
    bos = 998
    tokens = np.array([bos, 1, 2, 3, EOT] * 3 + [bos] + list(range(40)) + [EOT])
    data = folder(tmp_path / "bos", tokens, eot_token=EOT, bos_token=bos)
    stream = single(data, window_start="document", block_size=8, batch_size=1)
    found = {int(s) for batch in StreamBatches(stream, len(stream.window_sets[0])) for _, s in batch}
    assert found == {0, 5, 10, 15, 23, 31, 39, 47}  # each BOS, then every 8 tokens into the long document


def test_document_windows_need_document_boundaries(tmp_path):
    data = folder(tmp_path / "plain", np.arange(100))
    with pytest.raises(UserError, match="eot_token"):
        single(data, window_start="document")


def fed_sources(loader, block_size: int) -> list[list[int]]:
    """The source of each row of each batch that `loader` (prepared by Accelerate, as the trainer feeds the model)
    yields, read from the tokens themselves: source i holds the ids i x 500 .. i x 500 + 499 in order, so a row
    is a window of source i exactly when its ids are consecutive ones of that range."""
    fed = []
    for x, y in loader:
        rows = []
        for inputs, targets in zip(x.tolist(), y.tolist()):
            source = inputs[0] // 500
            assert inputs + targets[-1:] == list(range(inputs[0], inputs[0] + block_size + 1)), inputs
            assert (inputs[-1] + 1) // 500 == source  # inside one source's content
            rows.append(source)
        fed.append(rows)
    return fed


def test_a_mixture_feeds_each_source_its_weight_per_batch_and_over_10000_windows(tmp_path, fresh_accelerate_state):
    from accelerate import Accelerator

    sources = [Source(name, str(folder(tmp_path / name, i * 500 + np.arange(500), vocab_size=1500)), w)
               for i, (name, w) in enumerate((("a", 0.7), ("b", 0.2), ("c", 0.1)))]
    stream = WindowStream(sources, 16, 32, 7, "epoch", "any")
    accelerator = Accelerator(cpu=True)
    fed = fed_sources(accelerator.prepare(train_loader(stream, 313)), 16)
    per_batch = np.array([np.bincount(rows, minlength=3) for rows in fed])
    quota = np.array([0.7, 0.2, 0.1]) * 32
    assert (np.abs(per_batch - quota) < 1).all()  # floor or ceil of its share in every batch
    realized = per_batch.sum(0) / per_batch.sum()
    assert np.abs(realized - [0.7, 0.2, 0.1]).max() < 0.005
    assert stream.counts_at(313) == dict(zip("abc", per_batch.sum(0).tolist()))
    # a run resumed at batch 200 from the counts a checkpoint there records is fed the same windows
    resumed = WindowStream(sources, 16, 32, 7, "epoch", "any", 200, counts=stream.counts_at(200))
    tokens = [x for x, _ in accelerator.prepare(train_loader(stream, 313, 200))]
    assert all((a == b).all() for a, b in zip(tokens, (x for x, _ in accelerator.prepare(
        train_loader(resumed, 313, 200))), strict=True))


def test_mixture_weights_are_checked():
    assert parse_mix("data/a=1,data/b=3") == {"data/a": 1.0, "data/b": 3.0}
    assert parse_mix('{"data/a": 0.5}') == {"data/a": 0.5}
    for bad in ("data/a=0", "data/a=-1", "data/a=x", '{"data/a": true}', "data/a", '{"a": "nan"}'):
        with pytest.raises(UserError, match="data_mix"):
            parse_mix(bad)
