"""One config key's default, meaning and allowed values, stated once beside its dataclass field.

`--help`, the README's configuration table and `TrainConfig.validate()` all read them from the field's metadata.
"""

from __future__ import annotations

from dataclasses import field


def setting(default, help: str, choices: tuple[str, ...] = ()):
    """A dataclass field whose metadata documents it: `help`, and `choices` for an enumerated key."""
    return field(default=default, metadata={"help": help, "choices": choices})
