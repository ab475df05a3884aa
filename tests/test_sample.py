"""Sampling: the KV cache changes nothing, a seed fixes the sample, end-of-text ends it, the CLI decodes."""

import string
import sys

import pytest
import torch

from accel_train.models.gemma3 import Gemma3, ModelConfig
from accel_train.models.generation import generate
from helpers import TINY_MODEL, run, tinystories, train

# Few tokens, so end-of-text comes up soon; a short window, so samples run far past it.
SMALL = ModelConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=16, sliding_window=5, sliding_window_pattern=2,
                    query_pre_attn_scalar=16, max_position_embeddings=128)
EOT = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = Gemma3(SMALL).eval()
    with torch.no_grad():  # random norms and larger weights: peaked, position-dependent predictions
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() == 1 else 0.2)
    return model


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_and_uncached_generation_agree(model, temperature):
    prompt = [EOT, 5, 7, 1]
    cached = generate(model, prompt, 40, temperature=temperature, seed=1, use_cache=True)
    uncached = generate(model, prompt, 40, temperature=temperature, seed=1, use_cache=False)
    assert len(cached) == 40  # no end-of-text token given: runs to max_new_tokens, far past the window
    assert cached == uncached


def test_same_seed_same_sample(model):
    first, again = (generate(model, [EOT], 50, temperature=1.0, top_k=8, seed=11) for _ in range(2))
    other = generate(model, [EOT], 50, temperature=1.0, top_k=8, seed=12)
    assert first == again
    assert first != other


def test_top_k_limits_the_choice(model):
    greedy = generate(model, [EOT], 30, temperature=0.0)
    assert generate(model, [EOT], 30, temperature=5.0, top_k=1, seed=4) == greedy


def test_end_of_text_ends_the_sample(model):
    unstopped = generate(model, [EOT], 100, temperature=1.0, seed=5)
    stopped = generate(model, [EOT], 100, temperature=1.0, seed=5, eot_token=EOT)
    assert EOT in unstopped  # the comparison means something only if the token does come up
    assert stopped == unstopped[:unstopped.index(EOT)]


def test_generation_stops_at_the_context_length(model):
    prompt = [1] * (SMALL.max_position_embeddings - 6)
    assert len(generate(model, prompt, 50, temperature=1.0)) == 6


def sample_cli(*args):
    return run([sys.executable, "-m", "accel_train.sample", *args])


def test_cli_samples_decode_and_repeat_with_their_seed(trained_run):
    out_dir, _ = trained_run
    common = ["--checkpoint", str(out_dir), "--prompt", "Once upon a time", "--max_new_tokens", "60"]
    two = sample_cli(*common, "--seed", "7", "--num_samples", "2")
    second_again = sample_cli(*common, "--seed", "8")
    assert two.returncode == 0 and second_again.returncode == 0, two.stderr + second_again.stderr
    first, second = two.stdout.split("-" * 40 + "\n")
    assert second == second_again.stdout  # sample i uses seed + i, whatever else ran before it
    assert first != second
    for text in (first, second):
        assert text.startswith("Once upon a time")
        continuation = text[len("Once upon a time"):]
        # decoded with the demo data's byte tokenizer, a trained model writes mostly letters and spaces
        assert sum(c in string.ascii_letters + " .,\n" for c in continuation) > 0.8 * len(continuation)


def test_cli_names_a_missing_checkpoint(tmp_path):
    result = sample_cli("--checkpoint", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "nowhere" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_finished_run_prints_a_sample(trained_run):
    _, stdout = trained_run
    samples = [line for line in stdout.splitlines() if line.startswith("sample: ")]
    assert len(samples) == 1
    assert 0 < len(samples[0]) - len("sample: ") <= 40 * 4  # 40 byte tokens at most (a few may be replaced)


def test_a_gpt2_run_samples_with_the_real_encoding(tmp_path):
    """A run on TinyStories prepared with GPT-2: the CLI's greedy sample is tiktoken's text of the ids the
    model generates after end-of-text and "Once upon a time" (7454, 2402, 257, 640)."""
    import tiktoken

    from accel_train.checkpointing.trained_model import load_model

    (tmp_path / "stories.txt").write_text("<|endoftext|>".join(tinystories()[:200]))
    data, out = tmp_path / "data", tmp_path / "out"
    result = run([sys.executable, "-m", "accel_train.prepare", "--input", str(tmp_path / "stories.txt"),
                  "--separator", "<|endoftext|>", "--tokenizer", "gpt2", "--out", str(data), "--val_fraction", "0.1"])
    assert result.returncode == 0, result.stderr
    result = train(["--data_dir", str(data), "--out_dir", str(out), *TINY_MODEL, "--model.vocab_size", "50257",
                    "--block_size", "32", "--batch_size", "2", "--gradient_accumulation_steps", "1", "--max_iters", "2",
                    "--warmup_steps", "1", "--eval_interval", "2", "--eval_iters", "1", "--sample_tokens", "0",
                    "--plot", "false"])
    assert result.returncode == 0, result.stderr[-3000:]
    sampled = sample_cli("--checkpoint", str(out), "--prompt", "Once upon a time", "--temperature", "0",
                         "--max_new_tokens", "12")
    assert sampled.returncode == 0, sampled.stderr
    model, _ = load_model(out)
    ids = generate(model, [50256, 7454, 2402, 257, 640], 12, temperature=0.0, eot_token=50256)
    assert sampled.stdout == "Once upon a time" + tiktoken.get_encoding("gpt2").decode(ids) + "\n"
