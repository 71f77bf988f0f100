"""Reading the JSON and YAML files workbench writes or takes (manifests, run configs, recipes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
