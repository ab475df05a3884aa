"""--init_from takes every weight of the model from the folder: a folder with a weight missing, an extra one, or a
config.json that does not fit its weights is refused with one error line before out_dir is made, where transformers
would fill the gap with random values or stop with a size-mismatch traceback. Sharded folders load whole."""

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from accel_train.models.hf import hf_config, hf_state_dict
from accel_train.models.gemma3 import ModelConfig
from helpers import TRAIN, assert_one_error_line, command, run_side_by_side

SHAPE = ModelConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=16,
                    sliding_window_pattern=2, max_position_embeddings=256)
DOWN = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A tiny Gemma3ForCausalLM as transformers saves it (tied, so without lm_head.weight)."""
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    torch.manual_seed(0)
    transformers.Gemma3ForCausalLM(hf_config(SHAPE, eot_token=1)).save_pretrained(str(folder))
    return folder


def damaged(folder, dest, weights=dict, config=dict):
    """A copy of the HuggingFace folder with its weights and config.json changed."""
    shutil.copytree(folder, dest)
    save_file(weights(load_file(dest / "model.safetensors")), dest / "model.safetensors", metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config(json.loads((dest / "config.json").read_text()))))
    return dest


def without(name):
    return lambda weights: {k: v for k, v in weights.items() if k != name}


def plus(name, source):
    return lambda weights: {**weights, name: weights[source].clone()}


def changed(**fields):
    return lambda config: {**config, **fields}


@pytest.mark.parametrize("weights, config, words", [
    (without(DOWN), {}, ["missing", DOWN]),
    (plus("model.layers.0.mlp.extra.weight", DOWN), {}, ["unexpected model.layers.0.mlp.extra.weight"]),
    (plus("lm_head.weight", "model.embed_tokens.weight"), {}, ["unexpected lm_head.weight", "ties lm_head"]),
    (dict, {"tie_word_embeddings": False}, ["missing lm_head.weight"]),
    (dict, {"intermediate_size": 96}, ["model.layers.0.mlp.down_proj.weight is [64, 128] but config.json makes it "
                                       "[64, 96]"]),
    (dict, {"num_hidden_layers": 4, "layer_types": ["sliding_attention", "full_attention"] * 2},
     ["missing model.layers.2.", "and 23 more"]),
], ids=["missing", "unexpected", "tied head given", "untied, no head", "resized", "more layers"])
def test_weights_that_do_not_fit_the_model_are_named(hf_model, tmp_path, weights, config, words):
    from accel_train.errors import UserError
    from accel_train.models.hf import hf_model_config

    folder = damaged(hf_model, tmp_path / "hf", weights, changed(**config))
    with pytest.raises(UserError) as refused:
        hf_model_config(folder)
    assert all(word in str(refused.value) for word in words), str(refused.value)


def test_training_refuses_such_a_folder_before_making_out_dir(hf_model, demo_data_dir, tmp_path):
    """A weight missing (transformers: random values, exit 0) or config.json's vocab_size beside the weights'
    (transformers: a size-mismatch traceback): one error line, and out_dir is never made."""
    cases = {"missing": (damaged(hf_model, tmp_path / "missing", without(DOWN)), ["missing", DOWN]),
             "resized": (damaged(hf_model, tmp_path / "vocab", config=changed(vocab_size=310)),
                         ["model.embed_tokens.weight is [300, 64] but config.json makes it [310, 64]"])}
    runs = [(name, command(TRAIN, ["--data_dir", str(demo_data_dir), "--out_dir", str(tmp_path / f"out {name}"),
                                   "--init_from", str(folder), "--max_iters", "2", "--warmup_steps", "1",
                                   "--sample_tokens", "0"]), words)
            for name, (folder, words) in cases.items()]
    for name, (status, stderr, words) in run_side_by_side(runs).items():
        assert_one_error_line(status, stderr, *words)
        assert not (tmp_path / f"out {name}").exists(), name  # refused before out_dir was made


def test_a_sharded_folder_loads_every_weight(hf_model, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_model))
    model.save_pretrained(str(tmp_path), max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    ours = hf_state_dict(tmp_path)
    theirs = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert ours["lm_head.weight"] is ours["embed_tokens.weight"]  # tied, as in our model


def test_a_shard_gone_is_refused(hf_model, tmp_path):
    from accel_train.errors import UserError

    transformers.AutoModelForCausalLM.from_pretrained(str(hf_model)).save_pretrained(str(tmp_path),
                                                                                     max_shard_size="40KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(UserError, match=f"names {shard.name}, missing from"):
        hf_state_dict(tmp_path)
