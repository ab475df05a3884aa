"""Multiple-choice tasks (HellaSwag-style JSON Lines) scored by a language model's log-likelihood of each ending.

One task file holds one example per line: a context, a list of endings and the index of the right one. The
field names of the common files are accepted (`ctx` or `context`; `endings` or `choices`; `label`, `gold` or
`answer`). Each ending follows its context after one space and is scored as lm-evaluation-harness scores a
multiple-choice task: the ending's tokens are those of encode(context + " " + ending) past encode(context), the
context is fed after the data's document prefix (end-of-text, as every training document followed one), the
sequence is cut from the left to the model's context, and the score is the summed log-probability of the
ending's tokens. `acc` counts examples whose likeliest ending is the right one; `acc_norm` divides each score by
the ending's length in characters first (lm-eval's acc_norm), which favours no ending for its length.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from accel_train.data.documents import document_prefix
from accel_train.errors import UserError
from accel_train.numerals import whole_number

CONTEXT_FIELDS = ("ctx", "context")
ENDING_FIELDS = ("endings", "choices")
LABEL_FIELDS = ("label", "gold", "answer")
DELIMITER = " "  # between a context and each ending: lm-eval's default target_delimiter
TASKS_DIR = Path(__file__).resolve().parent / "tasks"  # the tasks that ship with the package, by name
ROW_BUCKET = 64  # rows are padded to a power-of-two multiple of this: few shapes for a compiled model


@dataclasses.dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, ...]
    label: int


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # the file's stem: metrics are `<name>/acc` and `<name>/acc_norm`
    path: Path
    examples: tuple[Example, ...]


def task_path(spec: str) -> Path:
    """A task file as given, or the shipped task of that name (`story_endings`)."""
    path = Path(spec)
    shipped = TASKS_DIR / f"{spec}.jsonl"
    if not path.is_file() and path.suffix == "" and shipped.is_file():
        return shipped
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TASKS_DIR.glob("*.jsonl")))
        raise UserError(f"task file {spec} not found: give a JSON Lines file or a shipped task ({known})")
    return path


def read_tasks(specs: str) -> list[Task]:
    """The tasks of a comma-separated list of files or shipped task names; any fault is one UserError."""
    tasks = [read_task(task_path(spec.strip())) for spec in specs.split(",") if spec.strip()]
    names = [task.name for task in tasks]
    if len(set(names)) < len(names):
        raise UserError(f"two task files share a name ({', '.join(names)}); their metrics would collide: rename one")
    return tasks


def read_task(path: Path) -> Task:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read task file {path}: {getattr(err, 'strerror', None) or err}") from None
    examples = tuple(parse_example(path, n, line) for n, line in enumerate(lines, 1) if line.strip())
    if not examples:
        raise UserError(f"task file {path} holds no examples")
    return Task(path.stem, path, examples)


def _field(row: dict, names: tuple[str, ...], where: str):
    for name in names:
        if name in row:
            return row[name]
    raise UserError(f"{where}: no {' or '.join(repr(n) for n in names)} field")


def parse_example(path: Path, n: int, line: str) -> Example:
    """Line `n` of a task file as an Example, or a UserError naming the line and what is wrong with it."""
    where = f"task file {path} line {n}"
    try:
        row = json.loads(line)
    except ValueError as err:
        raise UserError(f"{where} is not JSON: {err}") from None
    if not isinstance(row, dict):
        raise UserError(f"{where} must be a JSON object")
    context, endings, label = (_field(row, names, where) for names in (CONTEXT_FIELDS, ENDING_FIELDS, LABEL_FIELDS))
    if not isinstance(context, str):
        raise UserError(f"{where}: the context must be a string")
    if not isinstance(endings, list) or not endings:
        raise UserError(f"{where}: the endings must be a non-empty list")
    if not all(isinstance(e, str) and e for e in endings):
        raise UserError(f"{where}: every ending must be a non-empty string")
    if isinstance(label, str) and whole_number(label.strip()) is not None:  # HuggingFace's HellaSwag writes text
        label = whole_number(label.strip())
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise UserError(f"{where}: the label must be the index of an ending, 0 to {len(endings) - 1}; got {label!r}")
    return Example(context, tuple(endings), label)


def encode_ending(encode: Callable[[str], list[int]], prefix: list[int], context: str, ending: str,
                  block_size: int) -> tuple[list[int], int]:
    """(tokens, n): the prefixed context and the ending's tokens, cut from the left to block_size + 1 tokens
    (block_size fed, each predicting the next), and how many of the last tokens are the ending's. A context's
    trailing spaces move to the ending, as lm-eval does, so that a word's space stays with its word."""
    continuation = DELIMITER + ending
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped):] + continuation
    context_ids = encode(context)
    ending_ids = encode(context + continuation)[len(context_ids):]
    tokens = (prefix + context_ids + ending_ids)[-(block_size + 1):]
    return tokens, min(len(ending_ids), len(tokens) - 1)


def encode_task(task: Task, encode, prefix: list[int], block_size: int) -> list[list[tuple[list[int], int]]]:
    """Every example's endings, encoded (encode_ending)."""
    return [[encode_ending(encode, prefix, ex.context, ending, block_size) for ending in ex.endings]
            for ex in task.examples]


def padded_length(longest: int, block_size: int) -> int:
    """The width a batch is padded to: ROW_BUCKET times a power of two, at most block_size."""
    width = ROW_BUCKET
    while width < longest:
        width *= 2
    return min(width, block_size)


@torch.no_grad()
def ending_log_likelihoods(logits_of: Callable[[torch.Tensor], torch.Tensor], rows: list[tuple[list[int], int]],
                           batch_rows: int, block_size: int, device) -> list[float]:
    """The summed log-probability of each row's last n tokens, in one forward pass of `batch_rows` rows, padded
    on the right (a causal model's positions never see what follows them) to a width shared by many batches."""
    width = padded_length(max(len(tokens) - 1 for tokens, _ in rows), block_size)
    inputs = torch.zeros((batch_rows, width), dtype=torch.long)
    targets = torch.zeros((batch_rows, width), dtype=torch.long)
    scored = torch.zeros((batch_rows, width), dtype=torch.bool)
    for i, (tokens, n) in enumerate(rows):
        length = len(tokens) - 1
        inputs[i, :length] = torch.tensor(tokens[:-1])
        targets[i, :length] = torch.tensor(tokens[1:])
        scored[i, length - n:length] = True
    logits = logits_of(inputs.to(device)).float()
    log_probs = F.log_softmax(logits, dim=-1).gather(-1, targets.to(device)[..., None])[..., 0]
    sums = (log_probs * scored.to(device)).sum(dim=1)
    return sums[:len(rows)].tolist()


def predictions(example: Example, scores: list[float]) -> tuple[bool, bool]:
    """(acc, acc_norm) of one example: is its likeliest ending the right one, raw and per character."""
    def best(values):
        return max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equals, as numpy's argmax

    normalized = [score / len(ending) for score, ending in zip(scores, example.endings)]
    return best(scores) == example.label, best(normalized) == example.label


class TaskScorer:
    """Tasks encoded once, then scored by a model as often as asked, on one process or split between several.

    Examples go in fixed groups (as many as `batch_rows` rows hold), group g to process g % processes, so each
    group is the same forward pass whatever the number of processes and the counts, summed across them, are
    one process's. `stop_requested()`, asked after every round of groups, must answer alike on every process.
    """

    def __init__(self, tasks: list[Task], encode, prefix: list[int], block_size: int, batch_rows: int):
        self.tasks, self.block_size = tasks, block_size
        self.encoded = [encode_task(task, encode, prefix, block_size) for task in tasks]
        self.batch_rows = max([batch_rows] + [len(ex.endings) for task in tasks for ex in task.examples])

    def groups(self, task: Task) -> list[range]:
        per_group = max(1, self.batch_rows // max(len(ex.endings) for ex in task.examples))
        return [range(i, min(i + per_group, len(task.examples))) for i in range(0, len(task.examples), per_group)]

    def log_likelihoods(self, index: int, group: range, logits_of, device) -> list[list[float]]:
        """Each example's ending scores, for the examples of `group` in task `index`, in one forward pass."""
        encoded = self.encoded[index]
        rows = [row for i in group for row in encoded[i]]
        flat = ending_log_likelihoods(logits_of, rows, self.batch_rows, self.block_size, device)
        scores, start = [], 0
        for i in group:
            scores.append(flat[start:start + len(encoded[i])])
            start += len(encoded[i])
        return scores

    @torch.no_grad()
    def score(self, logits_of, device, rank: int = 0, processes: int = 1, stop_requested=None,
              sum_across=lambda counts: counts) -> dict | None:
        """{'<task>/acc': ..., '<task>/acc_norm': ...} of every task, or None where a stop cut it short."""
        results = {}
        for index, task in enumerate(self.tasks):
            counts = torch.zeros(2, dtype=torch.float64, device=device)  # right answers: raw, per character
            groups = self.groups(task)
            for first in range(0, len(groups), processes):
                if first + rank < len(groups):
                    group = groups[first + rank]
                    for i, scores in zip(group, self.log_likelihoods(index, group, logits_of, device)):
                        counts += torch.tensor(predictions(task.examples[i], scores), dtype=torch.float64,
                                               device=device)
                if stop_requested is not None and stop_requested():
                    return None
            acc, acc_norm = (sum_across(counts) / len(task.examples)).tolist()
            results.update({f"{task.name}/acc": acc, f"{task.name}/acc_norm": acc_norm})
        return results


def task_scorer(specs: str, tokenizer, block_size: int, batch_rows: int) -> TaskScorer:
    """The tasks of `specs`, encoded with `tokenizer` (load_tokenizer's of the data, whose bos_token is
    meta.json's) and after the data's document prefix, as training saw every document."""
    prefix = document_prefix(tokenizer.eot_token, tokenizer.bos_token)
    return TaskScorer(read_tasks(specs), tokenizer.encode, prefix, block_size, batch_rows)
