"""The user's own labelled prompts: a ``.jsonl`` or ``.csv`` file with a ``prompt`` and a ``label``
column (``harmful`` / ``benign``, or 1 / 0), read into :class:`Record` s.

    >>> records = load_prompt_file("my_prompts.jsonl")      # [Record(id="my_prompts/0", ...), ...]

A bad file gets one error that names the file and the line (1-based, as an editor shows it):
a missing column, an empty file, a prompt that is not text or is blank, an unknown label, a
file that is not UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .registry import Record

LABELS = {"harmful": 1, "benign": 0, "1": 1, "0": 0, 1: 1, 0: 0}


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file and the line."""


def _label(value, where: str) -> int:
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, bool) or key not in LABELS:
        raise PromptFileError(f"{where}: label {value!r} is not one of harmful, benign, 1, 0")
    return LABELS[key]


def _rows(path: Path, text: str):
    """``(line number, {column: value})`` for each data row."""
    if path.suffix == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{path}:{i}: not a JSON object ({err.msg})") from None
            if not isinstance(row, dict):
                raise PromptFileError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            yield i, row
    elif path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None:
            return
        missing = [c for c in ("prompt", "label") if c not in reader.fieldnames]
        if missing:
            raise PromptFileError(f"{path}:1: the header {reader.fieldnames} has no {' or '.join(missing)} column")
        for row in reader:
            yield reader.line_num, row
    else:
        raise PromptFileError(f"{path}: a prompt file is .jsonl or .csv, not {path.suffix or 'without suffix'}")


def load_prompt_file(path: str | Path, require_label: bool = True) -> list[Record]:
    """Records from ``path`` (``id`` = ``{file stem}/{row index}``, ``source`` = the file stem).

    ``require_label``: every row needs a ``label``; otherwise rows without one get ``None``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PromptFileError(f"{path}:{line}: not UTF-8 text (byte {raw[err.start]:#x}); save the file as UTF-8") from None
    records = []
    for line, row in _rows(path, text):
        where = f"{path}:{line}"
        if "prompt" not in row:
            raise PromptFileError(f"{where}: no 'prompt' field (fields: {sorted(row)})")
        prompt = row["prompt"]
        if not isinstance(prompt, str):
            raise PromptFileError(f"{where}: prompt is a {type(prompt).__name__}, not text: {prompt!r:.60}")
        if not prompt.strip():
            raise PromptFileError(f"{where}: the prompt is empty")
        label = row.get("label")
        if label in (None, "") and require_label:
            raise PromptFileError(f"{where}: no label (harmful / benign)")
        records.append(Record(id=f"{path.stem}/{len(records)}", prompt=prompt,
                              label=None if label in (None, "") else _label(label, where), source=path.stem,
                              category=row.get("category") or None))
    if not records:
        raise PromptFileError(f"{path}: no prompts in the file")
    return records
