"""Where documents begin in a prepared token stream: the token that document masking splits windows at.

`prepare` writes each document followed by the end-of-text token, so that token also stands right before
every document but the first; where it puts BOS at each document start (meta.json `bos_token`), BOS opens them.
Either way the separator is the first token of the document it opens, and the model masks at it.
"""

from __future__ import annotations

from pathlib import Path

from accel_train.data.meta import read_meta
from accel_train.data.mixture import training_sources
from accel_train.errors import UserError

SEPARATOR_KEYS = ("bos_token", "eot_token")  # meta.json's keys, the first present wins


def document_separator(meta: dict, where: str = "meta.json") -> int | None:
    """The id of the token that opens each document of the data described by `meta`; None if it names none."""
    for key in SEPARATOR_KEYS:
        value = meta.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < meta["vocab_size"]:
            raise UserError(f"{where}: '{key}' must be a token id below vocab_size {meta['vocab_size']}, "
                            f"got {value!r:.60}")
        return value
    return None


def masking_separator(mode: str, data_dir) -> int | None:
    """The separator the model masks attention at under config `document_mask` (auto, on or off), or None for
    plain causal attention; `on` for data that names no separator is refused in one line."""
    if mode == "off":
        return None
    meta_path = Path(data_dir) / "meta.json"
    separator = document_separator(read_meta(Path(data_dir)), str(meta_path)) if meta_path.exists() else None
    if separator is None and mode == "on":
        raise UserError(f"document_mask is on but {meta_path} names no token that starts documents (bos_token or "
                        "eot_token); prepare the data with python -m accel_train.prepare or set --document_mask off")
    return separator


def first_folder(cfg) -> str:
    """The folder whose meta.json names the separator: data_dir, or a mixture's first (all share one tokenizer)."""
    return training_sources(cfg.data_mix, cfg.data_dir)[0].data_dir
