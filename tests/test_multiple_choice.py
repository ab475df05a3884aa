"""Multiple-choice tasks: our score against lm-evaluation-harness's on an exported model, the loop's score against
the command's, two processes against one, the shipped task, and bad task files refused before training starts."""

import json
import subprocess
import sys

import pytest

from accel_train.evaluation.demo_task import write_task
from accel_train.evaluation.multiple_choice import TASKS_DIR, read_tasks
from accel_train.training.metrics_plot import draw
from accel_train.score import score
from accel_train.training.tracking import read_metrics
from helpers import (REPO, TINY_MODEL, TRAIN, assert_one_error_line, command, run_side_by_side, subprocess_env,
                     tinystories, train)


def sentences(story: str) -> list[str]:
    return [s.strip() + "." for s in story.replace("!", ".").replace("?", ".").split(".") if s.strip()]


def own_task(path, count: int):
    """Examples of real English: a story's first sentence, then its second sentence among the second sentences of
    other stories (three or four endings). One context ends in a space and one ending is not ASCII, the cases
    where where a tokenizer's boundary and a length in characters matter."""
    stories = [sentences(s) for s in tinystories() if len(sentences(s)) > 2]
    stories = [s for s in stories if len(s[0]) < 70 and len(s[1]) < 45][:count + 3]
    rows = []
    for i in range(count):
        endings = [stories[i + k][1] for k in range(3 + i % 2)]
        order = sorted(range(len(endings)), key=lambda k: (k * 7 + i) % len(endings))
        rows.append({"ctx": stories[i][0], "endings": [endings[k] for k in order], "label": order.index(0)})
    rows[0]["ctx"] += " "
    rows[1]["endings"][0] += " Café!"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


LM_EVAL = """
import json, sys
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
answers = []
for job in json.loads(sys.argv[1]):
    model = HFLM(pretrained=job["hf_dir"], device="cpu", batch_size=8, dtype="float32", **job["hflm"])
    tasks = TaskManager(include_path=job["task_dir"])
    out = simple_evaluate(model=model, tasks=["mine"], task_manager=tasks, log_samples=True)
    samples = sorted(out["samples"]["mine"], key=lambda s: s["doc_id"])
    answers.append({"results": out["results"]["mine"], "lls": [[r[0] for r in s["filtered_resps"]] for s in samples]})
print(json.dumps(answers))
"""
# lm-eval's multiple_choice task on our file. The context starts with the document prefix written as text (end-of-text,
# then BOS where the data has it), which the exported tokenizer reads as those tokens: lm-eval feeds a non-empty
# context after nothing otherwise.
TASK_YAML = """task: mine
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{prefix}{{{{ctx}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def lm_eval_scores(jobs: list[tuple], tmp_path) -> list[dict]:
    """lm-eval's results and log-likelihoods for each (hf_dir, task, prefix, HFLM arguments), all in one process:
    importing lm-eval costs more than scoring these tiny models."""
    specs = []
    for i, (hf_dir, task, prefix, hflm) in enumerate(jobs):
        task_dir = tmp_path / f"lm_eval_task_{i}"
        task_dir.mkdir()
        (task_dir / "mine.yaml").write_text(TASK_YAML.format(path=task, prefix=prefix))
        specs.append({"hf_dir": str(hf_dir), "task_dir": str(task_dir), "hflm": hflm})
    env = subprocess_env({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")})
    result = subprocess.run([sys.executable, "-c", LM_EVAL, json.dumps(specs)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def bos_bpe_folder(root):
    """TinyStories prepared with a byte-level BPE of 512 tokens (with merges) whose post-processor puts <bos> before
    every text, as Gemma's does: every document of the data starts with BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from accel_train.data.tokenizer import EOT_TEXT, hf_tokenizer
    from accel_train.data.dataset import write_dataset

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(tinystories(), trainers.BpeTrainer(
        vocab_size=512, special_tokens=[EOT_TEXT, "<bos>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    (root / "tokenizer").mkdir(parents=True)
    backend.save(str(root / "tokenizer" / "tokenizer.json"))
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOT_TEXT, "bos_token": "<bos>"}))
    tokenizer = hf_tokenizer(root / "tokenizer")
    assert tokenizer.bos_token == 1 and len(tokenizer.encode("Once upon a time")) < 8  # words merged
    write_dataset(root / "data", tinystories(), tokenizer, source={"input": "tinystories"}, val_fraction=0.1)
    return root / "data"


def train_bos_bpe_model(root):
    """(out_dir, task) of a tiny model trained for 3 steps on `bos_bpe_folder`'s data, with 24-token blocks."""
    data, out, task = bos_bpe_folder(root), root / "run", own_task(root / "mine.jsonl", 8)
    result = train(["--data_dir", str(data), "--out_dir", str(out), *TINY_MODEL, "--model.vocab_size", "512",
                    "--max_iters", "3", "--warmup_steps", "1", "--batch_size", "4", "--block_size", "24",
                    "--gradient_accumulation_steps", "1", "--learning_rate", "3e-3", "--eval_interval", "3",
                    "--eval_iters", "1", "--sample_tokens", "0", "--plot", "false", "--demo_data", "false"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, task


@pytest.fixture(scope="module")
def harness(trained_run, tmp_path_factory):
    """{case: (out_dir, hf_dir, task, lm-eval's answer)} for the demo's byte model and a BOS BPE model, the two
    scored by one lm-eval process."""
    from accel_train.export import export

    root = tmp_path_factory.mktemp("harness")
    (root / "byte").mkdir()
    byte_out, byte_task = trained_run[0], own_task(root / "byte" / "mine.jsonl", 8)  # scores named mine/...
    bos_out, bos_task = train_bos_bpe_model(root / "bos_bpe")
    cases = {"byte": (byte_out, export(byte_out, root / "byte_hf"), byte_task),
             "bos_bpe": (bos_out, export(bos_out, root / "bos_bpe_hf"), bos_task)}
    answers = lm_eval_scores([(cases["byte"][1], byte_task, "<|endoftext|>", {}),
                              (cases["bos_bpe"][1], bos_task, "<|endoftext|><bos>",
                               {"add_bos_token": False, "max_length": 24})], root)
    return {name: (*case, answer) for (name, case), answer in zip(cases.items(), answers, strict=True)}


def test_our_score_equals_lm_evaluation_harness(harness):
    from accel_train.score import hf_scorer

    out, hf_dir, task, theirs = harness["byte"]
    expected = {"mine/acc": theirs["results"]["acc,none"], "mine/acc_norm": theirs["results"]["acc_norm,none"]}
    assert score(hf_dir, str(task)) == expected
    assert score(out, str(task)) == expected  # the checkpoint itself, as the loop scores it
    model, logits_of, scorer = hf_scorer(hf_dir, str(task), None, None)
    ours = scorer.log_likelihoods(0, range(8), logits_of, "cpu")
    for mine, reference in zip(ours, theirs["lls"], strict=True):
        assert max(abs(a - b) for a, b in zip(mine, reference, strict=True)) < 1e-3, (mine, reference)


def test_a_bos_bpe_models_scores_equal_lm_evaluation_harness_with_contexts_cut_from_the_left(harness):
    """The loop's scoring of data whose documents start with BOS puts BOS before the context, as training did and as
    lm-eval does given that prefix; a block_size of 24 cuts most contexts from the left, in both alike."""
    from accel_train.score import checkpoint_scorer

    out, _, task, theirs = harness["bos_bpe"]
    assert score(out, str(task)) == {"mine/acc": theirs["results"]["acc,none"],
                                     "mine/acc_norm": theirs["results"]["acc_norm,none"]}
    _, logits_of, scorer = checkpoint_scorer(out, str(task), None, None)
    assert sum(len(tokens) == 25 for ex in scorer.encoded[0] for tokens, _ in ex) > 16  # cut from the left
    assert any(tokens[:2] == [0, 1] for ex in scorer.encoded[0] for tokens, _ in ex)  # the prefix: eot, bos
    ours = [lls for group in scorer.groups(scorer.tasks[0])
            for lls in scorer.log_likelihoods(0, group, logits_of, "cpu")]
    for mine, reference in zip(ours, theirs["lls"], strict=True):
        assert max(abs(a - b) for a, b in zip(mine, reference, strict=True)) < 1e-3, (mine, reference)


def test_in_loop_scores_equal_the_command_and_two_processes_equal_one(demo_data_dir, tmp_path):
    task, out = own_task(tmp_path / "mine.jsonl", 7), tmp_path / "run"
    result = train(["--data_dir", str(demo_data_dir), "--out_dir", str(out), *TINY_MODEL, "--max_iters", "4",
                    "--warmup_steps", "1", "--batch_size", "2", "--gradient_accumulation_steps", "1",
                    "--learning_rate", "3e-3", "--eval_interval", "2", "--eval_iters", "1", "--checkpoint_interval",
                    "2", "--keep_last", "0", "--tasks", str(task), "--log_interval", "1", "--sample_tokens", "0",
                    "--plot", "false", "--demo_data", "false"], processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["step"]: row for row in read_metrics(out) if "mine/acc" in row}
    assert sorted(rows) == [2, 4]
    for step, row in rows.items():  # one process scores every example of the checkpoint the two processes saved
        assert score(out / "checkpoints" / f"step_{step}", str(task)) == {k: row[k] for k in ("mine/acc",
                                                                                             "mine/acc_norm")}
    labels = [line.get_label() for ax in draw(read_metrics(out)).axes for line in ax.get_lines()]
    assert "mine/acc" in labels and "mine/acc_norm" in labels


def test_the_shipped_task_is_what_its_generator_writes(tmp_path):
    write_task(tmp_path / "story_endings.jsonl")
    assert (tmp_path / "story_endings.jsonl").read_bytes() == (TASKS_DIR / "story_endings.jsonl").read_bytes()
    (task,) = read_tasks("story_endings")  # by name, wherever the package is installed
    assert len(task.examples) == 200 and {len(ex.endings) for ex in task.examples} == {4}


def test_bad_task_files_are_one_line_before_training(demo_data_dir, tmp_path):
    good = '{"ctx": "A", "endings": ["b", "c"], "label": 1}\n'
    files = {"malformed": good + "{not json\n", "out_of_range": '{"ctx": "A", "endings": ["b", "c"], "label": 2}\n',
             "no_endings": '{"context": "A", "endings": [], "gold": 0}\n', "no_label": '{"ctx": "A", "endings": ["b"]}',
             "superscript": good + '{"ctx": "A", "endings": ["b", "c"], "label": "\u00b2"}\n'}  # isdigit, not int
    for name, text in files.items():
        (tmp_path / f"{name}.jsonl").write_text(text)
    words = {"missing": ["missing.jsonl", "not found"], "malformed": ["line 2", "not JSON"],
             "out_of_range": ["line 1", "label", "0 to 1"], "no_endings": ["line 1", "endings"],
             "no_label": ["line 1", "'label'"], "superscript": ["line 2", "0 to 1", "'\u00b2'"]}
    cases = [(name, command(TRAIN, ["--data_dir", str(demo_data_dir), "--out_dir", str(tmp_path / f"out_{name}"),
                                    *TINY_MODEL, "--demo_data", "false", "--tasks", str(tmp_path / f"{name}.jsonl")]),
              expected) for name, expected in words.items()]
    cases.append(("command", [sys.executable, "-m", "accel_train.score", "--checkpoint", str(tmp_path),
                              "--task", str(tmp_path / "superscript.jsonl")], words["superscript"]))
    for name, (status, stderr, expected) in run_side_by_side(cases).items():
        assert_one_error_line(status, stderr, *expected)
        assert not (tmp_path / f"out_{name}" / "checkpoints").exists(), name
