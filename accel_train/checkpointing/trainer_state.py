"""trainer_state.json's fields and their types, checked where a checkpoint is read: a field of the wrong type
(`"step": "8"`, `"format_version": "1"`, a hand edit) is one line naming the field and what it holds, never a
traceback from deep in a resume, nor a message that prints "1" as if it were 1."""

from __future__ import annotations

import json

from accel_train.errors import UserError

FORMAT_VERSION = 1  # what a checkpoint holds and how: raise it with any change that this version's readers cannot take
STATE_FILE = "trainer_state.json"
SPIKE_HISTORY = "spike_history"  # spike_sigma's history (training/loss_spikes.py): {"loss": [...], "grad_norm": [...]}
MIXTURE = "mixture"  # data_mix's weights and each source's windows given, at next_batch



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
# every field the trainer writes, with the kinds its value may be; the OPTIONAL ones only with the settings that use
# them (spike_sigma: training/loss_spikes.py's history; data_mix: each source's weight and windows given)
FIELDS = {"step": ("count",), "tokens": ("count",), "next_batch": ("count",), "skipped_steps": ("count",),
          "processes": ("positive",), "run_id": ("string",), "config": ("object",), "data": ("object",),
          "best_val_loss": ("number", "null"), "val_loss": ("number", "null"), "evaluation_owed": ("object", "null"),
          SPIKE_HISTORY: ("history",), MIXTURE: ("mixture",)}
OPTIONAL = {SPIKE_HISTORY, MIXTURE}


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
