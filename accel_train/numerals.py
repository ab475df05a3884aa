"""Whole numbers written as text by people or by this program (a task file's label, the step in a checkpoint
folder's name, the process id in a staging folder's name), read by one rule: ASCII digits 0-9 only.

Testing with `str.isdigit()` and converting with `int()` disagree: isdigit accepts "²" and "①", which int() refuses
with a ValueError; int() accepts " 7", "+7", "1_0" and other scripts' digits, which no such name or label means."""

from __future__ import annotations


def whole_number(text: str) -> int | None:
    """The number `text` spells in ASCII digits, or None where it is anything else."""
    return int(text) if text.isascii() and text.isdigit() else None
