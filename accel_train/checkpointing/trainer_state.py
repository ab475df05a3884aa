"""The run's state between optimizer steps (`TrainerState`), which each checkpoint saves as trainer_state.json
beside Accelerate's weights, optimizer and RNG states: the one place it is written and read.

Its fields and their types are checked where a checkpoint is read: a field of the wrong type (`"step": "8"`,
`"format_version": "1"`, a hand edit) is one line naming the field and what it holds, never a traceback from
deep in a resume, nor a message that prints "1" as if it were 1.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from accel_train.errors import UserError

FORMAT_VERSION = 1  # what a checkpoint holds and how: raise it with any change that this version's readers cannot take
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where a run stands after its last optimizer step: what the loop advances and each checkpoint saves."""
    run_id: str  # the tracker's run, which a resumed run continues
    config: dict  # the config (TrainConfig.to_dict()) of the run that saved it: what a resume may not change
    processes: int  # how many processes that run had
    data: dict = field(default_factory=dict)  # what identifies its data (data.mixture.Mixture.identity)
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # tokens trained on, every process together
    next_batch: int = 0  # the data stream's first global batch after `step`
    skipped_steps: int = 0  # updates skipped (nonfinite skip, spike_sigma), counted in the metrics
    best_val_loss: float | None = None  # the lowest validation loss so far
    val_loss: float | None = None  # the validation loss at `step`, where that step was evaluated
    # the metrics row of `step` when a stop signal cut its evaluations short: the resumed run does them first
    evaluation_owed: dict | None = None
    spike_history: dict | None = None  # spike_sigma's {"loss": [...], "grad_norm": [...]}, oldest first
    mixture: dict | None = None  # data_mix's {"weights": {source: w}, "counts": {source: windows given}}
    later_fields: dict = field(default_factory=dict)  # fields a later version wrote (see field_problems), kept

    @property
    def owes_evaluation(self) -> bool:
        """Whether the checkpoint's step still owes its evaluations (and its metrics row)."""
        return self.evaluation_owed is not None

    def to_json(self) -> dict:
        """trainer_state.json's object; the fields of settings this run does not use are left out."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "later_fields"}
        written = {name: value for name, value in fields.items() if not (name in OPTIONAL and value is None)}
        return {**self.later_fields, **written, "format_version": FORMAT_VERSION}

    @classmethod
    def of_json(cls, fields: dict) -> TrainerState:
        """The state that trainer_state.json's object `fields` holds, once check_format and field_problems passed."""
        known = {name: fields[name] for name in FIELDS if name in fields}
        return cls(**known, later_fields={name: value for name, value in fields.items()
                                          if name not in FIELDS and name != "format_version"})



def _count(value) -> bool:
    return type(value) is int and value >= 0


def _number(value) -> bool:
    return type(value) in (int, float)


def _of(value, keys: tuple[str, ...], holds) -> bool:
    """Whether value is an object of exactly `keys` (any, if empty), each holding what `holds` accepts."""
    return isinstance(value, dict) and (not keys or set(value) == set(keys)) and all(map(holds, value.values()))


KINDS = {"count": ("a whole number", _count),
         "positive": ("a positive whole number", lambda v: _count(v) and v >= 1),
         "number": ("a number", _number),
         "string": ("a string", lambda v: isinstance(v, str)),
         "object": ("an object", lambda v: isinstance(v, dict)),
         "null": ("null", lambda v: v is None),
         "history": ('{"loss": [numbers], "grad_norm": [numbers]}',
                     lambda v: _of(v, ("loss", "grad_norm"), lambda past: isinstance(past, list)
                                   and all(map(_number, past)))),
         "mixture": ('{"weights": {source: number}, "counts": {source: whole number}}',
                     lambda v: _of(v, ("weights", "counts"), lambda _: True) and _of(v["weights"], (), _number)
                     and _of(v["counts"], (), _count))}
# every field of TrainerState that the trainer writes, with the kinds its value may be; the OPTIONAL ones only with
# the settings that use them (spike_sigma: training/loss_spikes.py's history; data_mix: each source's weight and
# windows given)
FIELDS = {"step": ("count",), "tokens": ("count",), "next_batch": ("count",), "skipped_steps": ("count",),
          "processes": ("positive",), "run_id": ("string",), "config": ("object",), "data": ("object",),
          "best_val_loss": ("number", "null"), "val_loss": ("number", "null"), "evaluation_owed": ("object", "null"),
          "spike_history": ("history",), "mixture": ("mixture",)}
OPTIONAL = {"spike_history", "mixture"}


def shown(value) -> str:
    """A JSON value as the file holds it (a string in its quotes), cut short."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_format(folder, state) -> None:
    """Refuse a checkpoint whose format_version is not this version's number, before any other field is read:
    another format may hold other fields."""
    found = state.get("format_version", ...)
    if type(found) is int and found == FORMAT_VERSION:
        return
    if found is ...:
        written = "no format_version (it predates them)"
    else:
        written = f"format_version {shown(found)}" + ("" if type(found) is int else ", not a whole number")
    raise UserError(f"cannot read checkpoint {folder}: it has {written}, and this accel_train reads format_version "
                    f"{FORMAT_VERSION} only; use the accel_train version that wrote it, or start a new out_dir")


def field_problems(state: dict) -> list[str]:
    """What is wrong with each field of `state` (format_version aside): missing or of the wrong kind; the config
    also as a config, since every reader builds one from it. Fields it does not know are a later version's
    additions that this one can do without (one it could not would have raised FORMAT_VERSION)."""
    from accel_train.config import config_from_dict

    problems = [f"no '{name}'" for name in sorted(FIELDS.keys() - OPTIONAL - state.keys())]
    for name, kinds in FIELDS.items():
        if name in state and not any(KINDS[kind][1](state[name]) for kind in kinds):
            problems.append(f"'{name}' must be {' or '.join(KINDS[kind][0] for kind in kinds)}, "
                            f"not {shown(state[name])}")
    if not problems:
        try:
            config_from_dict(state["config"])
        except UserError as err:
            problems.append(f"its config is not a valid one ({err})")
    return problems
