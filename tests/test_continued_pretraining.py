"""The README's continued-pretraining recipe for google/gemma-3-270m, run on a local tiny Gemma 3 folder:
prepare with the folder's tokenizer, train --init_from the folder, export, and load the export in transformers."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
import transformers

from accel_train.data.tokens import train_loader
from accel_train.models.hf import hf_config
from accel_train.models.gemma3 import ModelConfig
from accel_train.data.stream import WindowStream
from accel_train.data.tokenizer import load_tokenizer
from accel_train.training.tracking import read_metrics
from helpers import REPO, TINYSTORIES, run, tinystories, train

CONFIG = str(REPO / "configs" / "gemma3_270m_continue.json")
SMALL = ["--device", "cpu", "--dtype", "float32", "--max_iters", "2", "--warmup_steps", "1", "--batch_size", "4",
         "--block_size", "32", "--gradient_accumulation_steps", "1", "--eval_interval", "2", "--eval_iters", "1",
         "--log_interval", "1", "--sample_tokens", "8", "--plot", "false"]  # the config's run, shrunk to a CPU test


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    """A stand-in for a downloaded google/gemma-3-270m: a tiny Gemma3ForCausalLM with Gemma's special tokens
    (<pad> 0, <eos> 1, <bos> 2), like Gemma 3's a post-processor that starts every text with <bos>, and one
    trailing special token beyond the model's vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>", "<bos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(tinystories()[:300], trainer)
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    vocab_size = backend.get_vocab_size()
    backend.add_special_tokens(["<image_soft_token>"])
    folder = tmp_path_factory.mktemp("models") / "gemma-3-tiny"
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", bos_token="<bos>",
                                         pad_token="<pad>").save_pretrained(str(folder))
    shape = ModelConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
                        sliding_window=16, sliding_window_pattern=2, max_position_embeddings=256)
    config = hf_config(shape, eot_token=1)
    config.bos_token_id, config.pad_token_id = 2, 0
    torch.manual_seed(0)
    transformers.Gemma3ForCausalLM(config).save_pretrained(str(folder))
    return folder


def module(name, *args):
    return run([sys.executable, "-m", f"accel_train.{name}", *map(str, args)])


def test_the_readme_recipe_continues_gemma_pretraining(gemma_folder, tmp_path):
    data, out, hf = tmp_path / "data", tmp_path / "out", tmp_path / "hf"
    result = module("prepare", "--input", TINYSTORIES, "--separator", "<|endoftext|>", "--tokenizer", gemma_folder,
                    "--out", data, "--val_fraction", "0.05")
    assert result.returncode == 0, result.stderr
    result = train(["--config", CONFIG, "--init_from", str(gemma_folder), "--data_dir", str(data),
                    "--out_dir", str(out), *SMALL])
    assert result.returncode == 0, result.stderr[-3000:]

    # the first step's loss is the loaded model's, as transformers computes it on the same batch
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gemma_folder), dtype=torch.float32).eval()
    x, y = next(iter(train_loader(WindowStream.of_folder(data, 32, 4, seed=1337), num_batches=1)))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten()).item()
    first = read_metrics(out)[0]
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, rel=1e-5)
    assert "val_bpb" in read_metrics(out)[-1]

    result = module("export", "--checkpoint", out, "--out", hf)
    assert result.returncode == 0, result.stderr
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(hf))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
    original = transformers.AutoTokenizer.from_pretrained(str(gemma_folder))
    text = "Once upon a time, Lily saw a big red ball."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == original(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.eos_token == "<eos>" and exported.config.eos_token_id == tokenizer.eos_token_id == 1
    with torch.no_grad():
        logits = exported(torch.tensor([[1, *ids]])).logits
    assert logits.shape == (1, len(ids) + 1, exported.config.vocab_size) and torch.isfinite(logits).all()


def test_documents_start_with_bos_as_transformers_encodes_them(gemma_folder, tmp_path):
    """Gemma was trained with <bos> at every document start: prepare puts it there, as the model's own tokenizer
    does with add_special_tokens, and records it for sampling; each document is those ids and end-of-text."""
    data = tmp_path / "data"
    result = module("prepare", "--input", TINYSTORIES, "--separator", "<|endoftext|>", "--tokenizer", gemma_folder,
                    "--out", data, "--val_fraction", "0.05", "--workers", "2")
    assert result.returncode == 0, result.stderr
    meta = json.loads((data / "meta.json").read_text())
    assert meta["bos_token"] == 2 and load_tokenizer(data).bos_token == 2
    tokens = np.concatenate([np.fromfile(data / f"{split}.bin", dtype=meta["dtype"]) for split in ("train", "val")])
    documents = [tuple(doc) for doc in np.split(tokens, np.flatnonzero(tokens == 1) + 1)[:-1]]
    original = transformers.AutoTokenizer.from_pretrained(str(gemma_folder))
    texts = [text.strip() for text in TINYSTORIES.read_text().split("<|endoftext|>") if text.strip()]
    expected = [(*original(text, add_special_tokens=True)["input_ids"], 1) for text in texts]
    assert expected[0][0] == 2 and sorted(documents) == sorted(expected)


def test_data_and_init_from_must_share_a_tokenizer(gemma_folder, demo_data_dir, tmp_path):
    """Byte-tokenized data fits the model's vocabulary, but its ids mean other text: refused before training."""
    result = train(["--config", CONFIG, "--init_from", str(gemma_folder), "--data_dir", str(demo_data_dir),
                    "--out_dir", str(tmp_path / "out"), *SMALL])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and f"--tokenizer {gemma_folder}" in result.stderr
    assert not list((tmp_path / "out").rglob("*.safetensors"))
    gpt2_sized = tmp_path / "gpt2_sized"  # a vocabulary beyond the model's is refused first
    shutil.copytree(demo_data_dir, gpt2_sized)
    meta = json.loads((gpt2_sized / "meta.json").read_text())
    (gpt2_sized / "meta.json").write_text(json.dumps({**meta, "tokenizer": "gpt2", "vocab_size": 50257}))
    result = train(["--config", CONFIG, "--init_from", str(gemma_folder), "--data_dir", str(gpt2_sized),
                    "--out_dir", str(tmp_path / "out2"), *SMALL])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-3000:]
    assert "vocabulary of 50257 tokens but the model has model.vocab_size = 600" in result.stderr
