"""One config key's default, meaning and constraints, declared once beside its dataclass field.

A key may carry `choices`, a range (`low` and `high` inclusive, `above` and `below` exclusive) and `rules`:
constraints that tie it to another key (`at_most("learning_rate")`, `divides(...)`) or to a property of its
own (`even()`). `--help`, docs/configuration.md's table (`describe`) and `check` (all of validation) read them
from the field's metadata, so a constraint is stated where it is enforced and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from accel_train.errors import UserError

INT64_MAX = 2**63 - 1  # torch holds integers in 64 bits


@dataclass(frozen=True)
class Rule:
    """A constraint beyond a key's range: `says` is how --help and the docs state it; `broken(key, value, owner)`
    is the one-line error when `value` (the key's, in the dataclass `owner`) breaks it, else None."""
    says: str
    broken: Callable[[str, Any, Any], str | None]


@dataclass(frozen=True)
class Range:
    """A number's allowed interval; each end inclusive (low, high), exclusive (above, below) or open (None)."""
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None

    def describe(self) -> str:
        """`at least 1`, `positive`, `in [0, 1)`, ...; empty when the key has no declared bound."""
        bottom = f"[{self.low}" if self.low is not None else f"({self.above}" if self.above is not None else ""
        top = f"{self.high}]" if self.high is not None else f"{self.below})" if self.below is not None else ""
        if bottom and top:
            return f"in {bottom}, {top}"
        if self.low is not None:
            return f"at least {self.low}"
        if self.above is not None:
            return "positive" if self.above == 0 else f"above {self.above}"
        if self.high is not None:
            return f"at most {self.high}"
        return f"below {self.below}" if self.below is not None else ""

    def holds(self, value) -> bool:
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and (self.above is None or value > self.above) and (self.below is None or value < self.below))


def declare(default, help: str, choices: tuple[str, ...] = (), low: float | None = None, high: float | None = None,
            above: float | None = None, below: float | None = None, rules: tuple[Rule, ...] = ()):
    """A dataclass field whose metadata documents and constrains it: `help`, `choices` for an enumerated key,
    the smallest and largest value a number may take (`low`/`high`, or `above`/`below` for bounds it must not
    reach; None: no bound but the code's own), and `rules` that tie it to other keys."""
    return field(default=default, metadata={"help": help, "choices": choices, "rules": rules,
                                            "range": Range(low, high, above, below)})


def _value_error(value, declared: Range) -> str | None:
    """Why a number does not fit its key: nan or inf (they pass every comparison-based check, as nan < 0 is False,
    and only surface later, as a diverged run), outside the declared range, or an integer beyond 64 bits."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if declared.holds(value):
        if not isinstance(value, int) or abs(value) <= INT64_MAX:
            return None
        declared = Range(high=INT64_MAX) if value > 0 else Range(low=-INT64_MAX)  # the side of 64 bits it left
    span = declared.describe()
    return f"must {'lie' if span.startswith('in ') else 'be'} {span}, got {value}"


def _fields(obj, prefix: str = ""):
    """(key, field, value, owner) of every setting of a dataclass, those of nested ones as `prefix.KEY`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, value, obj


def check(obj, noun: str = "config key") -> None:
    """Refuse the first value that breaks its key's declaration: each value alone first (finite, in its range,
    one of its choices), then the rules between keys, both in the order the keys are declared."""
    keys = list(_fields(obj))
    for key, f, value, _ in keys:
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"{noun} '{key}' must be one of {', '.join(choices)}; got '{value}'")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = _value_error(value, f.metadata.get("range", Range()))
            if problem:
                raise UserError(f"{noun} '{key}' {problem}")
    for key, f, value, owner in keys:
        for rule in f.metadata.get("rules", ()):
            problem = rule.broken(key, value, owner)
            if problem:
                raise UserError(problem)


def describe(f: dataclasses.Field, code: Callable[[str], str] = str) -> str:
    """A key's meaning followed by its constraints: range, choices (each written with `code`) and rules."""
    choices = f.metadata.get("choices")
    declared = [f.metadata.get("range", Range()).describe(), *(rule.says for rule in f.metadata.get("rules", ()))]
    if choices:
        declared.append(f"one of {', '.join(code(c) for c in choices)}")
    return "; ".join([f.metadata["help"], *filter(None, declared)])


def _sibling(key: str, other: str, owner) -> tuple[str, Any]:
    """The name (as the user writes it, beside `key`) and value of `other`, a dotted path from `owner`."""
    value = owner
    for part in other.split("."):
        value = getattr(value, part)
    return key.rpartition(".")[0] + "." * ("." in key) + other, value


def at_most(other: str, why: str = "") -> Rule:
    """The key may not exceed `other`."""
    def broken(key, value, owner):
        name, limit = _sibling(key, other, owner)
        return None if value <= limit else f"{key} ({value}) is above {name} ({limit}){why}; set {key} <= {name}"
    return Rule(f"at most {other}", broken)


def below(other: str, why: str = "") -> Rule:
    """The key must stay under `other`."""
    def broken(key, value, owner):
        name, limit = _sibling(key, other, owner)
        return None if value < limit else f"{key} ({value}) must be below {name} ({limit}){why}"
    return Rule(f"below {other}", broken)


def divides(other: str, named: str = "", why: str = "", zero_passes: bool = False) -> Rule:
    """The key divides `other` (a key or a property of the owner, written as `named`); with `zero_passes`, 0
    (the key's "choose for me") is not a divisor and passes."""
    def broken(key, value, owner):
        name, whole = _sibling(key, other, owner)
        if (zero_passes and value == 0) or whole % value == 0:
            return None
        return f"{key} ({value}) must divide {named or name} ({whole}){why}"
    return Rule(f"divides {named or other}", broken)


def multiple_of(other: str, why: str = "") -> Rule:
    """The key is a whole multiple of `other`."""
    def broken(key, value, owner):
        name, part = _sibling(key, other, owner)
        return None if value % part == 0 else f"{key} ({value}) must be a multiple of {name} ({part}){why}"
    return Rule(f"a multiple of {other}", broken)


def times_below(other: str, limit: float, why: str) -> Rule:
    """The key times `other` stays below `limit`."""
    def broken(key, value, owner):
        name, factor = _sibling(key, other, owner)
        if value * factor < limit:
            return None
        return f"{key} x {name} is {value * factor:g}; at {limit:g} or more {why}: lower {key} or {name}"
    return Rule(f"times {other} below {limit:g}", broken)


def even(why: str = "") -> Rule:
    def broken(key, value, owner):
        return None if value % 2 == 0 else f"{key} must be even{why}, got {value}"
    return Rule(f"even{why and ','}{why}", broken)
