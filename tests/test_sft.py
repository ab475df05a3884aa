"""Supervised fine-tuning: conversations prepared with a loss mask, trained on the assistant's tokens alone with
the mean over every trained token of a step, sampled and exported with their chat template.

One tiny run fine-tunes on a conversation set where the user always says the same sentence and the assistant
answers "ok" a varying number of times: a model trained on the user's tokens would learn that sentence at once,
so its loss there tells whether the mask held. The varying answers give micro-batches very different numbers of
trained tokens, where a mean of per-micro-batch means and the mean over the step's tokens differ.
"""

import json
import random

import numpy as np
import pytest
import torch

from accel_train.checkpointing.trained_model import TrainedModel
from accel_train.data.chat import OWN_TEMPLATE, ChatEncoder, fingerprint, load_template
from accel_train.data.meta import read_meta
from accel_train.data.folder import open_mask, open_split
from accel_train.errors import UserError
from accel_train.evaluation.story_questions import conversations, story_of, write
from accel_train.export import export
from accel_train.prepare import main as prepare
from accel_train.models.generation import chat_answer
from accel_train.training.tracking import read_metrics
from helpers import REPO, TINY_MODEL, launch, run, train

USER = "Please say ok as many times as you like."
SCRIPT = str(REPO / "tests" / "scripts" / "train_and_record_gradients.py")
SHAPE = [*TINY_MODEL, "--model.vocab_size", "320"]
RUN = [*SHAPE, "--block_size", "128", "--window_start", "document",
       "--learning_rate", "5e-3", "--min_lr", "5e-4", "--warmup_steps", "2", "--grad_clip", "0",
       "--eval_interval", "40", "--eval_iters", "2", "--log_interval", "1", "--dtype", "float32", "--device", "cpu",
       "--plot", "false", "--sample_tokens", "0"]


def conversation(k: int) -> dict:
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": USER},
                         {"role": "assistant", "content": " ".join(["ok"] * k)}]}


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    """A folder of 300 conversations prepared with the byte tokenizer."""
    folder = tmp_path_factory.mktemp("sft")
    rng = random.Random(0)
    (folder / "chats.jsonl").write_text("".join(json.dumps(conversation(rng.randint(1, 12))) + "\n"
                                                for _ in range(300)))
    prepare(["--chat", "--input", str(folder / "chats.jsonl"), "--out", str(folder / "data"), "--tokenizer", "byte",
             "--block_size", "128", "--val_fraction", "0.1", "--workers", "1"])
    return folder / "data"


@pytest.fixture(scope="module")
def fine_tuned(chat_data, tmp_path_factory):
    """out_dir of a tiny model trained 40 steps on the conversations, one process, no accumulation, batch 8,
    recording its gradients."""
    out = tmp_path_factory.mktemp("sft_run")
    result = launch(SCRIPT, [*RUN, "--data_dir", str(chat_data), "--out_dir", str(out), "--max_iters", "40",
                             "--batch_size", "8", "--gradient_accumulation_steps", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_prepare_trains_on_the_assistants_content_and_its_end_of_turn_alone(chat_data):
    meta, tokens, mask = read_meta(chat_data), open_split(str(chat_data), "train"), open_mask(str(chat_data), "train")
    ids, trained = tokens.tokens(), mask.tokens().astype(bool)
    assert len(trained) == len(ids) and meta.trained_tokens["train"] == trained.sum()
    assert meta.chat_template_fingerprint == fingerprint(load_template(chat_data)) == fingerprint(OWN_TEMPLATE)
    ends = np.flatnonzero(ids == 256)
    for start, end in zip(np.concatenate(([0], ends[:-1] + 1))[:5], ends[:5]):  # the first conversations
        document, kept = ids[start:end + 1], trained[start:end + 1]
        assert kept[-1]  # the end-of-text that ends the assistant's turn
        answer = bytes(document[kept][:-1].tolist()).decode()
        assert answer and set(answer.split()) == {"ok"}
        assert bytes(document[~kept].tolist()).decode().endswith(f"{USER}\n<|assistant|>\n")


@pytest.mark.parametrize("line, complaint", [
    ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}, "message 0 has no role"),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "unknown role"),
    ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "yo"}]}, "empty content"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "x" * 150}, {"role": "assistant", "content": "yo"}]}, "--block_size"),
])
def test_a_bad_conversation_is_one_line_naming_its_file_and_line(tmp_path, line, complaint):
    good = json.dumps(conversation(2))
    (tmp_path / "chats.jsonl").write_text(f"{good}\n\n{json.dumps(line)}\n{good}\n")
    with pytest.raises(UserError, match=f"chats.jsonl line 3: .*{complaint}"):
        prepare(["--chat", "--input", str(tmp_path / "chats.jsonl"), "--out", str(tmp_path / "out"),
                 "--tokenizer", "byte", "--block_size", "128", "--workers", "1"])
    assert not (tmp_path / "out").exists()


def test_a_multi_turn_conversation_too_long_is_cut_after_the_last_assistant_turn_that_fits():
    from accel_train.data.chat import Conversation
    from accel_train.data.tokenizer import ByteTokenizer

    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one"},
             {"role": "user", "content": "more " * 20}, {"role": "assistant", "content": "two"}]
    ids, mask = ChatEncoder(ByteTokenizer(), OWN_TEMPLATE).encode(Conversation("x", turns), 64)
    assert bytes(ids[:-1].tolist()).decode() == "<|user|>\nhi\n<|assistant|>\none" and ids[-1] == 256
    assert mask.sum() == len("one") + 1


def test_the_model_learns_the_assistants_turns_and_not_the_users(fine_tuned, chat_data):
    trained = TrainedModel(fine_tuned)
    ids = torch.from_numpy(open_split(str(chat_data), "val").tokens(0, 400).astype(np.int64))
    kept = torch.from_numpy(open_mask(str(chat_data), "val").tokens(0, 400).astype(bool))
    with torch.no_grad():
        logits, _ = trained.model(ids[None, :-1])
    losses = torch.nn.functional.cross_entropy(logits[0], ids[1:], reduction="none")
    sentence = np.frombuffer(USER.encode(), dtype=np.uint8)
    starts = np.flatnonzero((np.lib.stride_tricks.sliding_window_view(ids.numpy(), len(sentence)) == sentence).all(1))
    user = np.concatenate([np.arange(start, start + len(sentence) - 1) for start in starts])  # its 2nd byte on
    assert losses[kept[1:]].mean() < 0.8  # the answers (and their ends) are learned
    assert losses[user].mean() > 2.0  # the user's sentence, repeated in every conversation, is not


def test_the_step_loss_and_gradients_are_those_of_the_mean_over_its_trained_tokens(fine_tuned, chat_data,
                                                                                   tmp_path):
    """Two processes with accumulation 4 take the same 8 windows per step as one process without accumulation,
    in micro-batches of one window with very different counts of trained tokens: the step's loss and gradients
    must be the same (a mean of per-micro-batch means would differ by far more than rounding)."""
    result = launch(SCRIPT, [*RUN, "--data_dir", str(chat_data), "--out_dir", str(tmp_path), "--max_iters", "2",
                             "--warmup_steps", "1", "--batch_size", "1", "--gradient_accumulation_steps", "4"],
                    processes=2, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_metrics(fine_tuned)[0], read_metrics(tmp_path)[0]
    assert one["step"] == two["step"] == 1
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    one_grads = torch.load(fine_tuned / "gradients_0.pt")[0]
    for rank in (0, 1):
        for a, b in zip(one_grads, torch.load(tmp_path / f"gradients_{rank}.pt")[0]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_sample_chat_and_transformers_give_the_same_greedy_answer(fine_tuned, chat_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run(["python", "-m", "accel_train.sample", "--checkpoint", str(fine_tuned), "--chat", USER,
                  "--temperature", "0", "--max_new_tokens", "60"])
    assert result.returncode == 0, result.stderr[-2000:]
    answer = result.stdout.removesuffix("\n")
    assert set(answer.split()) == {"ok"}  # it answers as the assistant did
    hf = export(fine_tuned, tmp_path / "hf")
    tokenizer, model = AutoTokenizer.from_pretrained(str(hf)), AutoModelForCausalLM.from_pretrained(str(hf))
    asked = tokenizer.apply_chat_template([{"role": "user", "content": USER}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)
    trained = TrainedModel(fine_tuned)
    chat = ChatEncoder(trained.tokenizer(), trained.chat_template())
    assert asked["input_ids"][0].tolist() == chat.prompt(USER)
    out = model.generate(**asked, do_sample=False, max_new_tokens=60)
    theirs = tokenizer.decode(out[0, asked["input_ids"].shape[1]:], skip_special_tokens=True)
    assert theirs == answer == chat_answer(trained.model, chat, USER, 60, temperature=0)


def test_a_mixture_of_conversations_and_plain_text_trains_from_a_checkpoint_of_ours(fine_tuned, chat_data,
                                                                                   demo_data_dir, tmp_path):
    """init_from the fine-tuned run's out_dir: its shape (no model.* given: the config's default is the 270M one)
    and its weights, which already answer the conversations."""
    result = train([*RUN[len(SHAPE):], "--init_from", str(fine_tuned), "--out_dir", str(tmp_path),
                    "--data_mix", f"{chat_data}=0.5,{demo_data_dir}=0.5", "--max_iters", "3", "--batch_size", "4",
                    "--gradient_accumulation_steps", "1", "--eval_interval", "3", "--learning_rate", "1e-4",
                    "--min_lr", "1e-5"])
    assert result.returncode == 0, result.stderr[-3000:]
    row = read_metrics(tmp_path)[-1]
    assert {"val_loss/data", "val_bpb/demo_data"} <= row.keys() and all(map(np.isfinite, row.values()))
    assert row["val_loss/data"] < 1.0  # a fresh model's is about ln(320) = 5.8


def test_story_questions_are_answered_by_their_story_and_held_out_apart(tmp_path):
    write(tmp_path, train=300, heldout=50)
    sets = {name: [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "heldout")}
    assert len(sets["train"]) == 300 and len(sets["heldout"]) == 50
    assert not set(map(story_of, sets["train"])) & set(map(story_of, sets["heldout"]))
    for row in sets["train"] + sets["heldout"]:
        user, assistant = row["messages"]
        assert assistant["content"] in story_of(row)
    assert conversations(5, 7) == conversations(5, 7)  # the same sets every time


GEMMA_LIKE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
              "else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def test_a_huggingface_tokenizer_brings_its_own_template_and_its_end_of_turn_token(tmp_path):
    """A Gemma-like folder: BOS opens each conversation, <end_of_turn> ends the assistant's turn and is trained on,
    the newline after it and the markup are not; <eos> (end-of-text) closes the document."""
    from tokenizers import processors

    from accel_train.models.hf import byte_level_backend

    backend = byte_level_backend()
    backend.add_special_tokens(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[
        ("<bos>", backend.token_to_id("<bos>"))])
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "bos_token": "<bos>",
                                                              "chat_template": GEMMA_LIKE}))
    (tmp_path / "chats.jsonl").write_text("".join(json.dumps(conversation(k)) + "\n" for k in (1, 2, 3, 4) * 20))
    prepare(["--chat", "--input", str(tmp_path / "chats.jsonl"), "--out", str(tmp_path / "data"), "--tokenizer",
             str(folder), "--block_size", "128", "--val_fraction", "0.2", "--workers", "2"])
    tokens = open_split(str(tmp_path / "data"), "train").tokens()
    kept = open_mask(str(tmp_path / "data"), "train").tokens().astype(bool)
    first = tokens[:np.flatnonzero(tokens == backend.token_to_id("<eos>"))[0] + 1]
    decode = lambda ids: backend.decode(ids.tolist(), skip_special_tokens=False)  # noqa: E731
    assert decode(first).startswith("<bos><start_of_turn>system\nBe brief.<end_of_turn>\n")
    answer, rest = decode(first[kept[:len(first)]]), decode(first[~kept[:len(first)]])
    assert answer.endswith("<end_of_turn>") and set(answer.removesuffix("<end_of_turn>").split()) == {"ok"}
    assert rest.endswith("<start_of_turn>model\n\n<eos>")  # the markup, the newline after the turn, end-of-text
    assert load_template(tmp_path / "data") == GEMMA_LIKE
