"""`python -m accel_train.prepare`: real files in, token memmaps out, decoded back to the same documents."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from helpers import TINY_MODEL, TINYSTORIES, gpt2_backend, run, tinystories, train

from accel_train.data.demo_corpus import stories, write_demo_data
from accel_train.errors import UserError
from accel_train.prepare import main as prepare
from accel_train.data.tokenizer import EOT_TEXT, gpt2_tokenizer, load_tokenizer

SEP = "<|endoftext|>"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def cli(*args, env=None):
    return run([sys.executable, "-m", "accel_train.prepare", *map(str, args)], env=env)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three kinds of input and the documents they hold: a folder of files (one document each, one of
    them in a subfolder, a hidden one skipped), a file split on a separator, and a JSON Lines file."""
    root = tmp_path_factory.mktemp("corpus")
    texts = [t.replace("a ", "a café ", 1) if i % 3 == 0 else t for i, t in enumerate(stories(120, seed=7))]
    texts[5] += " Snow ☃ and 日本"  # multi-byte characters
    folder = root / "docs"
    (folder / "sub").mkdir(parents=True)
    for i, text in enumerate(texts[:40]):
        (folder / ("sub" if i == 3 else "") / f"{i:03d}.txt").write_text(f"\n{text}\n")
    (folder / ".hidden.txt").write_text("never read")
    (root / "joined.txt").write_text(SEP.join(["  "] + texts[40:80] + ["\n"]))  # empty pieces are skipped
    (root / "lines.jsonl").write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts[80:])))
    return {"root": root, "inputs": [folder, root / "joined.txt", root / "lines.jsonl"], "docs": texts}


def decoded_docs(out, split):
    meta = json.loads((out / "meta.json").read_text())
    ids = np.fromfile(out / f"{split}.bin", dtype=meta["dtype"])
    assert ids[-1] == meta["eot_token"], "every document, the last one too, ends with end-of-text"
    text = load_tokenizer(out).decode(ids.tolist())
    return text.split(EOT_TEXT)[:-1]


def assert_round_trip(out, docs):
    """The splits decode to the input documents, each exactly once, and meta.json counts them."""
    meta = json.loads((out / "meta.json").read_text())
    train_docs, val_docs = decoded_docs(out, "train"), decoded_docs(out, "val")
    assert sorted(train_docs + val_docs) == sorted(docs)
    assert train_docs and val_docs and not set(train_docs) & set(val_docs)
    assert meta["documents"] == {"train": len(train_docs), "val": len(val_docs)}
    itemsize = np.dtype(meta["dtype"]).itemsize
    assert meta["tokens"] == {s: (out / f"{s}.bin").stat().st_size // itemsize for s in ("train", "val")}
    return meta


@pytest.fixture(scope="module")
def byte_out(corpus):
    out = corpus["root"] / "byte"
    result = cli("--input", *corpus["inputs"], "--separator", SEP, "--tokenizer", "byte", "--out", out,
                 "--val_fraction", "0.2", "--block_size", "64", "--workers", "2")
    assert result.returncode == 0, result.stderr
    return out


def test_byte_tokenizer_round_trip(corpus, byte_out):
    meta = assert_round_trip(byte_out, corpus["docs"])
    assert meta | {"tokenizer": "byte", "vocab_size": 257, "eot_token": 256, "dtype": "uint16"} == meta
    assert meta["source"]["files"] == 42  # 40 documents, the joined file and the JSON Lines file
    assert sorted(p.name for p in byte_out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert not list(corpus["root"].glob(".byte*")), "no temporary folder is left behind"


def test_split_is_deterministic_whatever_the_worker_count(corpus, byte_out, tmp_path):
    args = ["--input", *map(str, corpus["inputs"]), "--separator", SEP, "--tokenizer", "byte",
            "--val_fraction", "0.2", "--block_size", "64"]
    prepare([*args, "--out", str(tmp_path / "one"), "--workers", "1"])
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "one" / split).read_bytes() == (byte_out / split).read_bytes()
    prepare([*args, "--out", str(tmp_path / "seeded"), "--seed", "1"])
    assert (tmp_path / "seeded" / "val.bin").read_bytes() != (byte_out / "val.bin").read_bytes()


def test_bpe_is_trained_saved_and_decodes(corpus, tmp_path):
    out = tmp_path / "bpe"
    result = cli("--input", *corpus["inputs"], "--separator", SEP, "--tokenizer", "bpe", "--vocab_size", "600",
                 "--out", out, "--val_fraction", "0.2", "--block_size", "32")
    assert result.returncode == 0, result.stderr
    meta = assert_round_trip(out, corpus["docs"])
    assert (out / "tokenizer.json").exists() and meta["tokenizer"] == "bpe" and meta["dtype"] == "uint16"
    assert 300 < meta["vocab_size"] <= 600
    byte_tokens = sum(len(d.encode()) + 1 for d in corpus["docs"])
    assert sum(meta["tokens"].values()) < byte_tokens / 2, "a trained BPE compresses its own corpus"


def test_gpt2_is_the_real_encoding():
    gpt2 = gpt2_tokenizer()
    assert gpt2.encode("Once upon a time") == [7454, 2402, 257, 640]
    assert (gpt2.vocab_size, gpt2.eot_token) == (50257, 50256)
    assert gpt2.decode([7454, 2402, 257, 640, 50256, 464]) == "Once upon a time<|endoftext|>The"


def test_gpt2_prepares_real_text(tmp_path):
    """The TinyStories sample, split into stories: each split holds tiktoken's ids of its stories."""
    stories = tinystories()
    out = tmp_path / "gpt2"
    result = cli("--input", TINYSTORIES, "--separator", SEP, "--tokenizer", "gpt2", "--out", out,
                 "--val_fraction", "0.1", "--workers", "2")
    assert result.returncode == 0, result.stderr
    meta = assert_round_trip(out, stories)
    assert meta | {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256, "dtype": "uint16"} == meta
    encoding = gpt2_tokenizer().encoding
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")]).tolist()
    assert sorted(ids) == sorted(sum((e + [50256] for e in encoding.encode_ordinary_batch(stories)), []))


def test_a_missing_data_folder_is_named_not_taken_for_the_seeds_gpt2_data(tmp_path):
    """A folder without meta.json is the seed's GPT-2 data; no folder at all is a mistake to report."""
    with pytest.raises(UserError, match="nowhere not found"):
        load_tokenizer(tmp_path / "nowhere")


def test_huggingface_dataset_from_a_local_folder(tmp_path):
    folder = tmp_path / "hub_like"
    folder.mkdir()
    docs = list(stories(60, seed=3))
    (folder / "train.jsonl").write_text("".join(json.dumps({"story": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    out = tmp_path / "out"
    result = cli("--dataset", folder, "--text_field", "story", "--tokenizer", "byte", "--out", out,
                 "--val_fraction", "0.25", env=OFFLINE)
    assert result.returncode == 0, result.stderr
    meta = assert_round_trip(out, docs)
    assert meta["source"] == {"dataset": str(folder), "config": None, "split": "train"}
    result = cli("--dataset", folder, "--tokenizer", "byte", "--out", tmp_path / "x", env=OFFLINE)
    assert result.returncode == 2 and "no column 'text'" in result.stderr


@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory):
    """GPT-2's tokenizer built with `tokenizers` as a bare tokenizer.json (nothing beside it names its eos)."""
    path = tmp_path_factory.mktemp("gpt2_hf") / "tokenizer.json"
    gpt2_backend().save(str(path))
    return path


def test_a_huggingface_tokenizer_prepares_what_tiktoken_does(corpus, gpt2_file, tmp_path):
    args = ["--input", *corpus["inputs"], "--separator", SEP, "--val_fraction", "0.2", "--workers", "2"]
    result = cli(*args, "--tokenizer", gpt2_file, "--out", tmp_path / "hf")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--eot_token" in result.stderr
    assert not (tmp_path / "hf").exists()
    result = cli(*args, "--tokenizer", gpt2_file, "--eot_token", EOT_TEXT, "--out", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    meta = assert_round_trip(tmp_path / "hf", corpus["docs"])
    assert meta | {"tokenizer": "hf", "vocab_size": 50257, "eot_token": 50256, "dtype": "uint16"} == meta
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == gpt2_file.read_text()
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text()) == {"eos_token": EOT_TEXT}
    prepare([*map(str, args), "--tokenizer", "gpt2", "--out", str(tmp_path / "gpt2")])
    for split in ("train.bin", "val.bin"):
        assert (tmp_path / "hf" / split).read_bytes() == (tmp_path / "gpt2" / split).read_bytes()


def test_meta_counts_the_text_bytes_of_each_split(byte_out):
    meta = json.loads((byte_out / "meta.json").read_text())
    assert meta["bytes"] == {s: sum(len(d.encode()) for d in decoded_docs(byte_out, s)) for s in ("train", "val")}
    assert meta["bytes"]["val"] == meta["tokens"]["val"] - meta["documents"]["val"]  # bytes, less end-of-text


def test_uint32_where_the_vocabulary_needs_it(corpus, tmp_path):
    backend = gpt2_backend()
    backend.add_tokens([f"<extra_{i}>" for i in range(20_000)])  # added tokens count: 70,257 in all
    backend.save(str(tmp_path / "tokenizer.json"))
    docs = corpus["docs"][80:]
    docs[0] += " <extra_19999>"
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "big"
    meta = prepare(["--input", str(tmp_path / "docs.jsonl"), "--out", str(out), "--val_fraction", "0.3",
                    "--block_size", "16", "--workers", "1", "--tokenizer", str(tmp_path), "--eot_token", EOT_TEXT])
    assert meta.dtype == "uint32" and meta.vocab_size == 70_257 and meta.eot_token == 50256
    assert 70_256 in np.fromfile(out / "train.bin", dtype=np.uint32).tolist() + np.fromfile(
        out / "val.bin", dtype=np.uint32).tolist()
    assert_round_trip(out, docs)
    with pytest.raises(UserError, match="does not fit uint16"):
        prepare(["--input", str(tmp_path / "docs.jsonl"), "--out", str(tmp_path / "b2"), "--dtype", "uint16",
                 "--tokenizer", str(tmp_path), "--eot_token", EOT_TEXT])


def test_existing_output_is_kept_unless_overwrite(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bin").write_bytes(b"old data")
    args = ["--input", str(corpus["root"] / "joined.txt"), "--separator", SEP, "--tokenizer", "byte",
            "--out", str(out), "--val_fraction", "0.3"]
    result = cli(*args)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "--overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (out / "train.bin").read_bytes() == b"old data"
    with pytest.raises(UserError, match="fewer than one block"):  # a failed overwrite loses nothing either
        prepare([*args, "--overwrite", "--block_size", "100000"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "train.bin").read_bytes() == b"old data"
    prepare([*args, "--overwrite"])
    assert_round_trip(out, corpus["docs"][40:80])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("files, extra, message", [
    ({"a.txt": "  \n", "b.txt": ""}, [], "the input is empty"),
    ({"a.txt": "fine text", "b.txt": b"\xff\xfe\x00broken"}, [], "b.txt is not UTF-8 text"),
    ({"a.jsonl": '{"text": "ok"}\n{"text": 3}\n'}, [], "a.jsonl line 2: expected a JSON object"),
    ({"a.txt": "x" * 500}, ["--tokenizer", "bpe", "--vocab_size", "70000", "--dtype", "uint16"], "does not fit uint16"),
    ({"a.txt": "fine text"}, ["--tokenizer", "no/such/folder"], "no tokenizer at no/such/folder"),
    ({"a.txt": "fine text"}, ["--tokenizer", "gpt2", "--eot_token", "<eos>"], "--eot_token is for a --tokenizer PATH"),
])
def test_bad_input_is_a_clear_error(tmp_path, files, extra, message):
    src = tmp_path / "src"
    src.mkdir()
    for name, content in files.items():
        (src / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message):
        prepare(["--input", str(src), "--out", str(tmp_path / "out"), "--tokenizer", "byte", *extra])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"], "no output and no temporary folder"


@pytest.mark.parametrize("documents, extra, remedy, wrong", [
    (1, ["--val_fraction", "0.5"], "--separator", "--val_fraction"),  # one document: no fraction fills both splits
    (3, ["--val_fraction", "0.999"], "a smaller --val_fraction", "--block_size"),  # train empty: no block fits
    (3, ["--val_fraction", "0.001"], "a larger --val_fraction", "--block_size"),  # val empty
    (20, ["--val_fraction", "0.3", "--block_size", "5000"], "a smaller --block_size", "--separator"),
])
def test_a_short_split_names_the_remedy_that_lengthens_it(tmp_path, documents, extra, remedy, wrong):
    """Each document goes whole to one split: --val_fraction moves documents (down to fill train, up to fill val),
    --block_size helps a split that holds some tokens, and one document needs splitting whatever the fraction."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(documents):
        (src / f"{i}.txt").write_text(f"document {i} " * 40)
    with pytest.raises(UserError) as refused:
        prepare(["--input", str(src), "--out", str(tmp_path / "out"), "--tokenizer", "byte", "--block_size", "64",
                 *extra])
    assert "fewer than one block" in str(refused.value) and remedy in str(refused.value), refused.value
    assert wrong not in str(refused.value), refused.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"], "no output and no temporary folder"


def test_trainer_checks_the_vocabulary_before_training(corpus, byte_out, tmp_path):
    common = ["--data_dir", str(byte_out), *TINY_MODEL, "--block_size", "32", "--batch_size", "2",
              "--gradient_accumulation_steps", "1", "--max_iters", "2", "--warmup_steps", "1", "--eval_interval", "2",
              "--eval_iters", "1", "--demo_data", "false"]
    result = train([*common, "--out_dir", str(tmp_path / "small"), "--model.vocab_size", "200"])
    assert result.returncode == 2 and "vocabulary of 257 tokens" in result.stderr, result.stderr
    assert not (tmp_path / "small" / "checkpoints").exists() or not any((tmp_path / "small" / "checkpoints").iterdir())
    result = train([*common, "--out_dir", str(tmp_path / "ok"), "--model.vocab_size", "257"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ok" / "checkpoints" / "step_2" / "model.safetensors").exists()


def test_demo_corpus_is_seeded_well_formed_and_written_like_any_corpus(tmp_path):
    first, again, other = list(stories(400, seed=1)), list(stories(400, seed=1)), list(stories(400, seed=2))
    assert first == again and first != other
    assert len(set(first)) == len(first), "no story repeats"
    text = "".join(first)
    assert "{" not in text and "}" not in text, "every slot of the grammar is filled"
    assert text.count('"') % 2 == 0 and all(s.count('"') % 2 == 0 for s in first), "quotes are closed"
    meta = write_demo_data(tmp_path / "demo", num_stories=400, seed=1)
    assert (meta.tokenizer, meta.vocab_size, meta.eot_token, meta.dtype) == ("byte", 257, 256, "uint16")
    assert_round_trip(tmp_path / "demo", first)


def test_an_older_demo_corpus_is_rewritten_and_other_data_left_alone(byte_out, tmp_path, monkeypatch):
    """The demo's folder (data/demo, under the working directory) gets the demo corpus when it has none or an
    older version; no other folder is ever written, with data or without."""
    import accel_train.data.demo_corpus as demo

    monkeypatch.chdir(tmp_path)
    old = tmp_path / "data" / "demo"
    old.mkdir(parents=True)
    (old / "train.bin").write_bytes(b"\x01\x00" * 500)
    (old / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 257, "source": "demo-stories"}))
    demo.ensure_demo_data("data/demo")
    assert json.loads((old / "meta.json").read_text())["source"]["version"] == demo.VERSION
    current = old.stat().st_ino  # a rewrite would rename a new folder into place
    demo.ensure_demo_data(old)
    assert old.stat().st_ino == current, "the current version stays as it is"
    before = {p.name: p.read_bytes() for p in byte_out.iterdir()}
    demo.ensure_demo_data(byte_out)  # somebody's own data is never replaced
    assert {p.name: p.read_bytes() for p in byte_out.iterdir()} == before
    demo.ensure_demo_data(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    shutil.rmtree(old)
    demo.ensure_demo_data("data/demo")
    assert (old / "val.bin").exists()
