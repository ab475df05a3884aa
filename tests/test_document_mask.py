"""Document masking: attention stays inside each document of a window, on the CPU's dense-mask path and in
FlexAttention's rendering of the same rule, combined with the sliding window, and in training runs."""

import random
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from accel_train.config import load_config
from accel_train.models.gemma3 import Gemma3, attention_rule, dense_mask, document_ids
from accel_train.checkpointing.trained_model import load_model
from accel_train.models.generation import generate
from accel_train.training.tracking import read_metrics
from helpers import TINY_MODEL, TRAIN, command, max_difference, run, run_side_by_side
from interrupt import comparable_rows, finish, interrupt

SEP = 0  # the token that opens each document


def documents(*lengths: int, seed: int = 0) -> list[torch.Tensor]:
    """Documents of these lengths: the separator, then random tokens that are not it."""
    g = torch.Generator().manual_seed(seed)
    return [torch.cat([torch.tensor([SEP]), torch.randint(1, 300, (n - 1,), generator=g)]) for n in lengths]


def tiny_model(window: int, separator: int | None = SEP) -> Gemma3:
    """Two layers: the first attends within a sliding window, the second globally."""
    cfg = load_config([*TINY_MODEL, "--model.vocab_size", "300", "--model.sliding_window", str(window),
                       "--model.sliding_window_pattern", "2"])
    torch.manual_seed(0)
    return Gemma3(cfg.model, document_separator=separator).eval()


def logits(model: Gemma3, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens[None])[0][0]


@pytest.mark.parametrize("window", [64, 5])
def test_a_packed_window_computes_each_document_as_if_alone(window):
    """A window of three documents gives each one's tokens the logits of that document run by itself. RoPE
    makes attention depend on distances only, so a document's later positions in the window change nothing
    but rounding. With window 5 the documents are longer than the sliding window, so both limits bind."""
    docs = documents(7, 12, 9)
    packed = torch.cat(docs)
    model = tiny_model(window)
    together = logits(model, packed)
    start = 0
    for doc in docs:
        alone = logits(model, doc)
        assert (together[start:start + len(doc)] - alone).abs().max().item() < 1e-4, start
        start += len(doc)
    unmasked = logits(tiny_model(window, separator=None), packed)
    assert (unmasked[len(docs[0]):] - together[len(docs[0]):]).abs().max().item() > 1e-2  # the mask mattered


def test_a_window_that_starts_mid_document_and_repeated_separators():
    """The tokens before the first separator are one (cut) document; a separator right after another is a
    document of one token, which attends to itself only."""
    head, tail = documents(6, 8, seed=1)
    window = torch.cat([head[1:], torch.tensor([SEP]), tail])
    model = tiny_model(4)
    together = logits(model, window)
    cut = len(head) - 1
    assert (together[:cut] - logits(model, head[1:])).abs().max().item() < 1e-4
    assert (together[cut] - logits(model, torch.tensor([SEP]))[0]).abs().max().item() < 1e-4
    assert (together[cut + 1:] - logits(model, tail)).abs().max().item() < 1e-4


def test_document_ids_start_a_document_at_each_separator():
    idx = torch.tensor([[5, 0, 3, 4, 0, 0, 7], [0, 1, 2, 3, 4, 5, 6]])
    assert document_ids(idx, SEP).tolist() == [[0, 1, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1]]


def test_gradients_do_not_cross_documents():
    """Training on a packed window: the loss of the second document's tokens has no gradient from the first's
    embeddings (what attention must not read, it cannot learn from)."""
    first, second = documents(10, 10, seed=2)
    packed = torch.cat([first, second])[None]
    model = tiny_model(64)
    model.train()
    hidden = model.embed_tokens(packed).detach().requires_grad_()
    original = model.embed_tokens.forward
    model.embed_tokens.forward = lambda idx: hidden  # the same embeddings, as a leaf whose gradient we read
    try:
        logits_, _ = model(packed)
    finally:
        model.embed_tokens.forward = original
    logits_[0, len(first):].logsumexp(-1).sum().backward()
    assert hidden.grad[0, :len(first)].abs().max().item() == 0
    assert hidden.grad[0, len(first):].abs().max().item() > 0


def flex_document_attention(q, k, v, idx, window):
    """What the compiled forward does on CUDA (Gemma3.document_masks, then Attention): the block mask of the
    documents of idx, made from the rule, and FlexAttention under it."""
    rule = attention_rule(window, document_ids(idx, SEP))
    block_mask = create_block_mask(rule, idx.shape[0], None, idx.shape[1], idx.shape[1], device=idx.device)
    return flex_attention(q, k, v, block_mask=block_mask, scale=0.2, enable_gqa=True)


@pytest.mark.parametrize("window, compiled", [(None, False), (40, False), (40, True)])
def test_flex_attention_with_the_rule_matches_the_dense_mask(window, compiled):
    """The CUDA path's block mask and the CPU path's dense mask come from the same rule and give the same
    attention (FlexAttention runs forward on the CPU too); 200 positions, not a multiple of its 128-blocks.
    Compiled (one graph, mask included) as on CUDA, inductor makes its CPU kernel; the Triton kernel and the
    backward, which the CPU lacks, only a GPU checks (docs/speed.md)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 200, 32), torch.randn(2, 1, 200, 32), torch.randn(2, 1, 200, 32)
    idx = torch.randint(0, 30, (2, 200))  # a separator (0) every 30 tokens or so
    attend = torch.compile(flex_document_attention, fullgraph=True) if compiled else flex_document_attention
    flex = attend(q, k, v, idx, window)
    rule = attention_rule(window, document_ids(idx, SEP))
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(rule, 2, 200, "cpu"), scale=0.2,
                                           enable_gqa=True)
    assert (flex - dense).abs().max().item() < 1e-5
    without_documents = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(attention_rule(window), 2, 200,
                                                                                     "cpu"), scale=0.2, enable_gqa=True)
    assert (dense - without_documents).abs().max().item() > 1e-2  # the documents mattered


def test_generation_is_unchanged_by_masking():
    """A prompt is one document (it starts at the separator, and a sample ends at the next): cached and
    uncached generation of a masked model give the unmasked model's sample."""
    masked, plain = tiny_model(5), tiny_model(5, separator=None)
    prompt = documents(6, seed=3)[0].tolist()
    samples = [generate(model, prompt, 30, temperature=1.0, eot_token=SEP, seed=4, use_cache=cached)
               for model in (masked, plain) for cached in (True, False)]
    assert samples[0] == samples[1] == samples[2] == samples[3] and len(samples[0]) > 5


RUN = [*TINY_MODEL, "--batch_size", "4", "--block_size", "128", "--max_iters", "4", "--warmup_steps", "2",
       "--learning_rate", "3e-3", "--min_lr", "3e-4", "--grad_clip", "0.05", "--eval_interval", "2", "--eval_iters",
       "2", "--log_interval", "1", "--checkpoint_interval", "1", "--dtype", "float32", "--device", "cpu",
       "--plot", "false", "--sample_tokens", "0", "--demo_data", "false"]


def run_args(data_dir, out_dir, mask: str, accumulation: int, *extra) -> list[str]:
    return [*RUN, "--data_dir", str(data_dir), "--out_dir", str(out_dir), "--document_mask", mask,
            "--gradient_accumulation_steps", str(accumulation), *extra]


@pytest.fixture(scope="module")
def runs(demo_data_dir, tmp_path_factory):
    """out_dir of three runs started side by side on the demo corpus (byte stories of ~580 tokens between
    end-of-text tokens, so about one window in five holds a boundary): masked on one process with accumulation
    4, masked on two with accumulation 2 (the same global batches), and unmasked on one."""
    root = tmp_path_factory.mktemp("document_mask_runs")
    cases = {"masked": ("on", 1, 4), "masked_2p": ("on", 2, 2), "unmasked": ("off", 1, 4)}
    results = run_side_by_side([(name, command(TRAIN, run_args(demo_data_dir, root / name, mask, accumulation,
                                                               "--keep_last", "0"), processes), [])
                                for name, (mask, processes, accumulation) in cases.items()], timeout=600)
    for name, (status, stderr, _) in results.items():
        assert status == 0, (name, stderr[-3000:])
    return {name: root / name for name in cases}


def final_weights(out_dir, step: int = 4) -> dict:
    return load_file(out_dir / "checkpoints" / f"step_{step}" / "model.safetensors")


def test_two_processes_train_with_document_masking_as_one_does(runs):
    """Documents are found in each window alone, so how windows are dealt to processes and micro-batches
    changes nothing: the same losses, norms and weights as one process, to fp32 rounding (the gradient
    all-reduce sums in another order), as tests/test_processes.py asks of unmasked runs."""
    one, two = read_metrics(runs["masked"]), read_metrics(runs["masked_2p"])
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 5))
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)  # evaluations are not compared: each process
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)  # draws its own evaluation windows
    assert max_difference(final_weights(runs["masked"]), final_weights(runs["masked_2p"])) < 1e-6
    unmasked = read_metrics(runs["unmasked"])
    assert max(abs(a["loss"] - u["loss"]) for a, u in zip(one, unmasked)) > 1e-4  # masking was in effect
    assert max_difference(final_weights(runs["masked"]), final_weights(runs["unmasked"])) > 1e-4


def test_a_masked_run_killed_and_resumed_is_bit_exact(demo_data_dir, runs, tmp_path):
    out, log, rng = tmp_path / "out", tmp_path / "log.txt", random.Random(5)
    args = run_args(demo_data_dir, out, "on", 4, "--keep_last", "2")
    events = [interrupt(kind, args, 1, out, rng, 4, log) for kind in ("kill-step", "kill-save")]
    assert finish(args, 1, log) == 0, log.read_text()[-3000:]
    assert all(e["interrupted"] for e in events), events
    assert (out / "checkpoints" / "step_4" / "model.safetensors").read_bytes() == \
        (runs["masked"] / "checkpoints" / "step_4" / "model.safetensors").read_bytes()
    assert comparable_rows(out) == comparable_rows(runs["masked"])


def test_a_masked_run_samples_and_exports_for_single_documents(runs, demo_data_dir, tmp_path):
    """Sampling needs no mask (a prompt is one document), and HuggingFace's Gemma 3, which has none, computes
    what the masked model does for a window holding one document: the export is valid for such inputs."""
    import transformers

    sampled = run([sys.executable, "-m", "accel_train.sample", "--checkpoint", str(runs["masked"]), "--prompt",
                   "Once upon a time", "--max_new_tokens", "20"])
    assert sampled.returncode == 0 and sampled.stdout.strip(), sampled.stderr[-3000:]
    exported = run([sys.executable, "-m", "accel_train.export", "--checkpoint", str(runs["masked"]), "--out",
                    str(tmp_path / "hf"), "--data_dir", str(demo_data_dir)])
    assert exported.returncode == 0, exported.stderr[-3000:]
    ours, _ = load_model(runs["masked"])
    ours.document_separator = 256  # the byte tokenizer's end-of-text, as the run masked at
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    one_document = torch.cat([torch.tensor([256]), torch.randint(0, 256, (100,))])[None]
    with torch.no_grad():
        assert (ours(one_document)[0] - theirs(one_document).logits).abs().max().item() < 1e-4
