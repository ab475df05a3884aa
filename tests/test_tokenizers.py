"""Any HuggingFace tokenizer (a tokenizer.json, or a folder that holds one), built here from local files:
GPT-2's with `tokenizers`, id for id as tiktoken's, and one over 65,535 tokens."""

import json

import pytest

from accel_train.errors import UserError
from accel_train.data.tokenizer import gpt2_tokenizer, hf_tokenizer, load_tokenizer
from helpers import gpt2_backend, tinystories


@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory):
    """GPT-2's tokenizer as a bare tokenizer.json: nothing beside it names its end-of-text token."""
    path = tmp_path_factory.mktemp("gpt2_hf") / "tokenizer.json"
    gpt2_backend().save(str(path))
    return path


def test_gpt2_built_with_tokenizers_gives_tiktokens_ids(gpt2_file):
    ours = hf_tokenizer(gpt2_file, eot_token="<|endoftext|>")
    assert (ours.vocab_size, ours.eot_token) == (50257, 50256)
    stories = tinystories()
    assert [ours.encode(s) for s in stories] == gpt2_tokenizer().encoding.encode_ordinary_batch(stories)
    ids = ours.encode("Once upon a time") + [50256]
    assert ids == [7454, 2402, 257, 640, 50256] and ours.decode(ids) == "Once upon a time<|endoftext|>"


def test_special_tokens_in_a_text_are_text(gpt2_file):
    """As with tiktoken's encode_ordinary: a document that quotes end-of-text does not end there."""
    ours = hf_tokenizer(gpt2_file, eot_token="<|endoftext|>")
    text = "a <|endoftext|> b"
    assert ours.encode(text) == gpt2_tokenizer().encode(text) and 50256 not in ours.encode(text)


def test_a_folder_names_its_eos_and_the_data_keeps_it(gpt2_file, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(gpt2_file.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"},
                                                              "model_max_length": 1024}))
    ours = hf_tokenizer(folder)
    assert ours.eot_token == 50256 and ours.config["model_max_length"] == 1024
    data = tmp_path / "data"
    data.mkdir()
    ours.save(data)
    (data / "meta.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 50257, "tokenizer": "hf"}))
    again = load_tokenizer(data)
    assert (again.name, again.eot_token, again.vocab_size) == ("hf", 50256, 50257)
    assert again.encode("Once upon a time") == [7454, 2402, 257, 640]


def test_added_tokens_count_and_trailing_special_ones_do_not(tmp_path):
    backend = gpt2_backend()
    backend.add_tokens([f"<extra_{i}>" for i in range(20_000)])  # ordinary added tokens: text can hold them
    backend.add_special_tokens(["<image_soft_token>"])  # like Gemma 3's last token: never in a document
    ours = hf_tokenizer(_saved(backend, tmp_path), eot_token="<|endoftext|>")
    assert backend.get_vocab_size() == 70_258 and ours.vocab_size == 70_257
    assert ours.encode("x <extra_19999>")[-1] == 70_256


def test_unusable_tokenizers_are_named(gpt2_file, tmp_path):
    with pytest.raises(UserError, match="no tokenizer at"):
        hf_tokenizer(tmp_path)
    with pytest.raises(UserError, match="has no eos_token.*--eot_token"):
        hf_tokenizer(gpt2_file)
    with pytest.raises(UserError, match="'<eos>' is not a token"):
        hf_tokenizer(gpt2_file, eot_token="<eos>")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load the tokenizer"):
        hf_tokenizer(tmp_path)


def _saved(backend, folder):
    path = folder / "tokenizer.json"
    backend.save(str(path))
    return path


def test_a_tokenizer_is_its_fingerprint_and_the_data_keeps_its_own(gpt2_file, tmp_path):
    """Fingerprints tell apart two BPEs of one size (and the byte, GPT-2 and HuggingFace tokenizers), survive a save
    and a load, and are recorded by prepare: a tokenizer.json replaced beside the data is refused in one line,
    while a folder prepared before fingerprints loads as before."""
    import shutil

    from accel_train.data.tokenizer import ByteTokenizer, train_bpe
    from accel_train.data.dataset import write_dataset

    stories = tinystories()
    first, second = train_bpe(stories[0::2], 300), train_bpe(stories[1::2], 300)
    assert first.vocab_size == second.vocab_size
    meta = write_dataset(tmp_path / "first", stories[:40], first, source={"input": "stories"}, val_fraction=0.2)
    write_dataset(tmp_path / "second", stories[:40], second, source={"input": "stories"}, val_fraction=0.2)
    assert meta.tokenizer_fingerprint == first.fingerprint() == load_tokenizer(tmp_path / "first").fingerprint()
    prints = {first.fingerprint(), second.fingerprint(), ByteTokenizer().fingerprint(), gpt2_tokenizer().fingerprint(),
              hf_tokenizer(gpt2_file, "<|endoftext|>").fingerprint()}
    assert len(prints) == 5
    shutil.copy(tmp_path / "second" / "tokenizer.json", tmp_path / "first" / "tokenizer.json")
    with pytest.raises(UserError, match="not the one its data was prepared with"):
        load_tokenizer(tmp_path / "first")
    old = json.loads((tmp_path / "second" / "meta.json").read_text())
    del old["tokenizer_fingerprint"]
    (tmp_path / "second" / "meta.json").write_text(json.dumps(old))
    assert load_tokenizer(tmp_path / "second").encode(stories[0]) == second.encode(stories[0])
