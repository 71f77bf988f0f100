"""Reading the JSON and YAML files workbench writes or takes (manifests, run configs, recipes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, doc: Any, indent: int = 1) -> Path:
    """``json.dumps(doc)`` into ``path`` (its folder made) through a temporary file and a rename, so
    a reader never sees half a file; NaN stays NaN, other non-JSON values are written as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=indent, default=str))
    os.replace(tmp, path)
    return path


def parse_file(path: str | Path, error: type[Exception], fmt: str = "json") -> Any:
    """The content of ``path`` read as ``fmt`` (``"json"`` or ``"yaml"``); a file that does not
    parse raises ``error`` naming it (the caller checks that the file exists)."""
    path = Path(path)
    text = path.read_text()
    if fmt == "yaml":
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise error(f"{path}: not valid YAML: {err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path} is corrupt (not JSON: {err})") from None


def settings_from_dict(cls, data: Any, source: str, error: type[Exception], quick: bool = False,
                       untyped: tuple[str, ...] = ()) -> dict:
    """Check an experiment file's mapping against the dataclass ``cls``: unknown keys (with the
    closest known one), then, after merging the ``quick`` block when asked, each value's type
    against the default's (``untyped`` keys and ``None`` values pass). Returns the merged mapping."""
    import dataclasses
    import difflib

    if not isinstance(data, dict):
        raise error(f"{source}: an experiment is a mapping of keys to values")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in [*data, *(data.get("quick") or {})]:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise error(f"{source}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                        + f". Known keys: {', '.join(known)}")
    if quick:
        data = {**data, **(data.get("quick") or {})}
    defaults = cls()
    data = dict(data)
    for key, value in data.items():
        want = type(getattr(defaults, key))
        if key in untyped or value is None:
            continue
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)  # YAML's 1 for 1.0
            continue
        if not isinstance(value, want) or isinstance(value, bool) != (want is bool):
            raise error(f"{source}: {key!r} should be a {want.__name__}, got {value!r}")
    return data


def read_yaml_file(path: str | Path, error: type[Exception], what: str = "experiment file") -> Any:
    """The YAML content of an existing file (``FileNotFoundError`` naming ``what`` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return parse_file(path, error, "yaml")
