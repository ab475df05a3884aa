"""HuggingFace export and import: transformers loads the export with the same logits, the tokenizer
comes along, weights survive the round trip, and `--init_from` continues pretraining from it."""

import json
import math
import shutil
import sys

import pytest
import torch
import transformers

from accel_train.errors import UserError
from accel_train.models.hf import (FULL, SLIDING, hf_config, hf_model_config, hf_state_dict, model_config_from_hf,
                                   window_pattern)
from accel_train.models.gemma3 import ModelConfig
from accel_train.checkpointing.trained_model import find_checkpoint, load_model
from accel_train.data.tokenizer import ByteTokenizer
from accel_train.training.tracking import read_metrics
from helpers import assert_one_error_line, run, run_side_by_side, tinystories, train


def export_cli(*args):
    return run([sys.executable, "-m", "accel_train.export", *args])


def export_command(checkpoint, out, data_dir) -> list[str]:
    return [sys.executable, "-m", "accel_train.export", "--checkpoint", str(checkpoint), "--out", str(out),
            "--data_dir", str(data_dir)]


STORIES = [f"{name} and {friend} went to the {place}. The sun was warm; {name} said: \"Look, a {thing}!\""
           for name, friend, place, thing in zip(["Tom", "Lily", "Sam", "Mia"] * 6, ["Ben", "Sue", "Max"] * 8,
                                                 ["park", "lake", "shop", "hill", "zoo"] * 5, ["dog", "ball"] * 12)]


def trained_tokenizer_json(path, special_tokens):
    """A byte-level BPE made with the `tokenizers` library alone, as a user brings one to prepare --tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(STORIES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(path))
    return path


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """{name: data folder} of the stories prepared with a trained BPE, and with a tokenizer.json whose folder
    names no tokenizer_class (with an <unk> token and a tokenizer_config.json beside it, or alone)."""
    from accel_train.data.dataset import write_dataset
    from accel_train.data.tokenizer import EOT_TEXT, hf_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("tokenized")
    with_unk = trained_tokenizer_json(root / "unk" / "tokenizer.json", [EOT_TEXT, "<unk>"])
    (with_unk.parent / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOT_TEXT, "unk_token": "<unk>"}))
    tokenizers = {"bpe": train_bpe(STORIES, 300), "with unk": hf_tokenizer(with_unk.parent),
                  "alone": hf_tokenizer(trained_tokenizer_json(root / "plain.json", [EOT_TEXT]), EOT_TEXT)}
    for name, tokenizer in tokenizers.items():
        write_dataset(root / name, STORIES * 4, tokenizer, source={"input": "stories"}, val_fraction=0.3,
                      block_size=16)
    return {name: root / name for name in tokenizers}


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out_dir, _ = trained_run
    hf_dir = tmp_path_factory.mktemp("export") / "hf"
    result = export_cli("--checkpoint", str(out_dir), "--out", str(hf_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return find_checkpoint(out_dir), hf_dir


def test_transformers_loads_the_export_with_the_same_logits(exported):
    checkpoint, hf_dir = exported
    ours, cfg = load_model(checkpoint)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    assert type(theirs).__name__ == "Gemma3ForCausalLM" and theirs.config.model_type == "gemma3_text"
    assert theirs.dtype == torch.float32
    assert cfg.model.sliding_window < 160  # the sequence runs past the sliding window
    idx = torch.randint(cfg.model.vocab_size, (2, 160), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (ours(idx)[0] - theirs(idx).logits).abs().max().item()
    assert diff < 1e-4


def test_the_export_carries_the_byte_tokenizer(exported):
    _, hf_dir = exported
    theirs = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    ours = ByteTokenizer()
    text = "Lily saw a ☃ near the lake. Ça va?"
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(text)
    ids = ours.encode("The end.") + [ours.eot_token] + ours.encode("Tom ran.")
    assert theirs.decode(ids) == ours.decode(ids) == "The end.<|endoftext|>Tom ran."
    config = transformers.AutoConfig.from_pretrained(str(hf_dir))
    assert theirs.eos_token_id == config.eos_token_id == ours.eot_token


def test_a_round_trip_keeps_every_weight(exported):
    checkpoint, hf_dir = exported
    ours, cfg = load_model(checkpoint)
    assert hf_model_config(hf_dir) == cfg.model
    back = hf_state_dict(hf_dir)
    original = ours.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_init_from_continues_pretraining(exported, demo_data_dir, tmp_path):
    checkpoint, hf_dir = exported
    source_val = read_metrics(checkpoint.parent.parent)[-1]["val_loss"]
    assert source_val < math.log(320) - 1.5  # the source model learned something to carry over
    out = tmp_path / "continued"
    # no model.* flags: the shape comes from the HuggingFace folder
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(out), "--init_from", str(hf_dir),
                    "--max_iters", "2", "--warmup_steps", "1", "--batch_size", "8", "--gradient_accumulation_steps",
                    "1", "--eval_iters", "1", "--log_interval", "1", "--learning_rate", "1e-5", "--min_lr", "1e-6",
                    "--sample_tokens", "0", "--plot", "false"])
    assert result.returncode == 0, result.stderr[-3000:]
    first_loss = read_metrics(out)[0]["loss"]  # the first step's loss is the loaded weights' loss
    assert abs(first_loss - source_val) < 0.3
    _, cfg = load_model(out)
    assert cfg.model == hf_model_config(hf_dir)


def test_the_exported_tokenizer_gives_the_datas_ids(exported, tokenized, tmp_path):
    """Whatever tokenizer made the data, AutoTokenizer on the export's files encodes as it did: a
    tokenizer_config.json without a tokenizer_class used to load as GemmaTokenizer, whose spaces are <unk> (or which
    raises without one). (Export itself refuses these tokenizers for the byte-level trained_run's model.)"""
    from accel_train.data.tokenizer import load_tokenizer
    from accel_train.models.hf import check_tokenizer_files, save_tokenizer

    texts = STORIES + ["Tom and Lily went to the zoo. The sun was warm; Ça va? ☃"]
    for name, data in tokenized.items():  # as export writes and checks them beside a Gemma 3 config.json
        (tmp_path / name).mkdir()
        shutil.copy(exported[1] / "config.json", tmp_path / name)
        ours = load_tokenizer(data)
        assert save_tokenizer(ours, tmp_path / name)
        check_tokenizer_files(ours, tmp_path / name, texts)
        theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / name))
        assert theirs(texts, add_special_tokens=False)["input_ids"] == [ours.encode(text) for text in texts]
        assert theirs.eos_token_id == ours.eot_token


def test_export_refuses_a_tokenizer_transformers_reads_otherwise(exported, tokenized, tmp_path):
    """A tokenizer_config.json that names a class that rebuilds the tokenizer differently is refused by the export's
    check of its own files."""
    from accel_train.data.tokenizer import load_tokenizer
    from accel_train.errors import UserError
    from accel_train.models.hf import check_tokenizer_files, save_tokenizer

    gemma_class, hf_dir = tmp_path / "gemma class", tmp_path / "hf"
    shutil.copytree(tokenized["with unk"], gemma_class)
    config = json.loads((gemma_class / "tokenizer_config.json").read_text())
    (gemma_class / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GemmaTokenizer"}))
    shutil.copytree(exported[1], hf_dir)
    tokenizer = load_tokenizer(gemma_class)
    assert save_tokenizer(tokenizer, hf_dir)
    with pytest.raises(UserError, match="as GemmaTokenizer, which encodes"):
        check_tokenizer_files(tokenizer, hf_dir, STORIES[:2])


def test_a_checkpoint_meets_only_the_tokenizer_it_was_trained_with(exported, tokenized, demo_data_dir, tmp_path):
    """sample, score and export of a byte-level model with the --data_dir of another tokenizer (GPT-2's, beyond its
    320 embeddings; a BPE that fits them), a --data_dir that does not exist, and score of a HuggingFace folder
    with a --block_size beyond its positions or a tokenizer beyond its embeddings: one error line each, no export
    folder (an existing empty one stays empty). A folder prepared before fingerprints is compared by what its
    meta.json records, so the run's own tokenizer in one still samples."""
    from accel_train.data.tokenizer import gpt2_tokenizer
    from accel_train.models.hf import save_tokenizer
    from accel_train.data.dataset import write_dataset

    checkpoint, hf_dir = exported
    write_dataset(tmp_path / "gpt2", STORIES, gpt2_tokenizer(), source={"input": "stories"}, val_fraction=0.3)
    gpt2_hf = tmp_path / "gpt2 hf"
    shutil.copytree(hf_dir, gpt2_hf)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (gpt2_hf / name).unlink(missing_ok=True)
    save_tokenizer(gpt2_tokenizer(), gpt2_hf)
    old = tmp_path / "old"  # the demo data's meta.json as written before fingerprints
    old.mkdir()
    meta = json.loads((demo_data_dir / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "tokenizer_fingerprint"}))
    (tmp_path / "empty").mkdir()

    def tool(name, *args):
        return [sys.executable, "-m", f"accel_train.{name}", "--checkpoint", str(checkpoint), *map(str, args)]

    task = ["--task", "story_endings"]
    cases = [("sample gpt2", tool("sample", "--data_dir", tmp_path / "gpt2", "--max_new_tokens", "2"),
              ["gpt2", "byte", "tokenizer", str(checkpoint)]),
             ("export gpt2", export_command(checkpoint, tmp_path / "new", tmp_path / "gpt2"), ["gpt2", "byte"]),
             ("score bpe", tool("score", *task, "--data_dir", tokenized["bpe"]),
              ["tokenizer is byte there, bpe here", "tokenizer_fingerprint"]),
             ("export bpe", export_command(checkpoint, tmp_path / "empty", tokenized["bpe"]), ["bpe", "byte"]),
             ("typo", export_command(checkpoint, tmp_path / "typo", tmp_path / "dta"), [f"{tmp_path}/dta not found"]),
             ("positions", [sys.executable, "-m", "accel_train.score", "--checkpoint", str(hf_dir), *task,
                            "--block_size", "100000"], ["--block_size 100000", "512", "max_position_embeddings"]),
             ("hf gpt2", [sys.executable, "-m", "accel_train.score", "--checkpoint", str(gpt2_hf), *task],
              ["50257 tokens", "320", "not this model's tokenizer"]),
             ("old", tool("sample", "--data_dir", old, "--max_new_tokens", "2"), None)]
    for name, (status, stderr, words) in run_side_by_side(cases).items():
        if words is None:
            assert status == 0, stderr[-3000:]
        else:
            assert_one_error_line(status, stderr, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "gpt2", "gpt2 hf", "old"]
    assert not list((tmp_path / "empty").iterdir())


def test_export_keeps_an_existing_folder(trained_run, tmp_path):
    out_dir, _ = trained_run
    (tmp_path / "notes.txt").write_text("mine")
    result = export_cli("--checkpoint", str(out_dir), "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_the_270m_shape_maps_both_ways():
    cfg = ModelConfig()  # Gemma 3 270M: 18 layers, every 6th global
    hf = hf_config(cfg, eot_token=50256)
    assert hf.layer_types.count(FULL) == 3 and hf.layer_types[5] == FULL and hf.layer_types[0] == SLIDING
    assert hf.rope_parameters[FULL]["rope_theta"] == cfg.rope_theta
    assert hf.rope_parameters[SLIDING]["rope_theta"] == cfg.rope_local_base_freq
    assert model_config_from_hf(hf) == cfg


def test_import_refuses_what_the_model_lacks(tmp_path):
    assert window_pattern([SLIDING, SLIDING, FULL] * 2) == 3
    assert window_pattern([SLIDING] * 4) == 5  # no global layer at all
    with pytest.raises(UserError, match="sliding_window_pattern"):
        window_pattern([SLIDING, FULL, FULL])
    softcapped = hf_config(ModelConfig(num_hidden_layers=2))
    softcapped.final_logit_softcapping = 30.0
    with pytest.raises(UserError, match="final logit softcapping"):
        model_config_from_hf(softcapped)
    with pytest.raises(UserError, match="cannot read a HuggingFace config"):
        hf_model_config(tmp_path)


@pytest.fixture(params=["bpe", "gpt2"])
def other_tokenizer(request):
    from accel_train.data.tokenizer import gpt2_tokenizer, train_bpe

    if request.param == "gpt2":
        return gpt2_tokenizer()
    texts = ["Tom and Lily went to the park. The sun was warm.", "The dog ran and ran; the end!"] * 20
    return train_bpe(texts, vocab_size=300)


def test_bpe_and_gpt2_tokenizers_export_too(other_tokenizer, tmp_path):
    from accel_train.models.hf import save_tokenizer

    save_tokenizer(other_tokenizer, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "The dog and the cat ran to the park. Ça va ☃"
    ids = other_tokenizer.encode(text)
    assert theirs.encode(text, add_special_tokens=False) == ids
    assert theirs.decode(ids + [other_tokenizer.eot_token]) == text + "<|endoftext|>"
    assert theirs.eos_token_id == other_tokenizer.eot_token


def test_the_exported_gpt2_tokenizer_gives_tiktokens_ids_on_real_text(tmp_path):
    """Every story of the TinyStories sample: transformers' tokenizer from the export, id for id as tiktoken."""
    from accel_train.models.hf import save_tokenizer
    from accel_train.data.tokenizer import gpt2_tokenizer

    stories = tinystories()
    gpt2 = gpt2_tokenizer()
    save_tokenizer(gpt2, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert theirs(stories, add_special_tokens=False)["input_ids"] == gpt2.encoding.encode_ordinary_batch(stories)
    assert theirs.eos_token_id == gpt2.eot_token == 50256 and len(theirs) == 50257
