"""One config key's default, meaning and allowed values, stated once beside its dataclass field.

`--help`, the README's configuration table and `TrainConfig.validate()` all read them from the field's metadata.
"""

from __future__ import annotations

from dataclasses import field


def setting(default, help: str, choices: tuple[str, ...] = (), low: float | None = None, high: float | None = None):
    """A dataclass field whose metadata documents it: `help`, `choices` for an enumerated key, and `low` and
    `high` for the smallest and largest value a number may take (None: no bound but the code's own)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": (low, high)})
