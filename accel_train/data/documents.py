"""Where documents begin in a prepared token stream: the token that document masking splits windows at.

`prepare` writes each document followed by the end-of-text token, so that token also stands right before
every document but the first; where it puts BOS at each document start (meta.json `bos_token`), BOS opens them.
Either way the separator is the first token of the document it opens, and the model masks at it; and what
precedes every document (`document_prefix`), which sampling and task scoring put before their text.
"""

from __future__ import annotations

from pathlib import Path

from accel_train.data.meta import DataMeta
from accel_train.errors import UserError


def document_boundary(meta: DataMeta, data_dir, needed_by: str | None = None) -> tuple[str, int] | None:
    """('bos', id) where the data marks document starts with BOS, else ('eot', id) where it ends them with
    end-of-text (that token also opens the next document); None where meta.json names neither, unless a setting
    (`needed_by`, e.g. "window_start document") needs documents: then it is refused in one line."""
    if meta.bos_token is not None:
        return "bos", meta.bos_token
    if meta.eot_token is not None:
        return "eot", meta.eot_token
    if needed_by is None:
        return None
    raise UserError(f"{needed_by} needs documents, but {Path(data_dir) / 'meta.json'} names no token that marks "
                    f"them (bos_token or eot_token); prepare the data with python -m accel_train.prepare, or "
                    f"change {needed_by.split()[0]}")


def masking_separator(mode: str, folder) -> int | None:
    """The separator the model masks attention at under config `document_mask` (auto, on or off) in the data of
    `folder` (a data.folder.DataFolder), or None for plain causal attention; `on` for data that names no separator
    is refused in one line."""
    if mode == "off":
        return None
    boundary = folder.document_boundary("document_mask on" if mode == "on" else None)
    return None if boundary is None else boundary[1]


def document_prefix(eot_token: int, bos_token: int | None) -> list[int]:
    """What every training document followed: end-of-text, then the data's BOS where its documents start with one."""
    return [eot_token] + ([bos_token] if bos_token is not None else [])
