"""A training run folder: what :func:`~workbench.train.train` writes and everything else reads.

``config.json`` (format tag ``workbench_run`` with its version, recipe, model, data hash, trainable
parameter counts, versions), ``data.jsonl`` (the records trained on), ``metrics.jsonl`` (one line
per logged step), ``summary.json`` (written last: it marks the run finished), ``loss_curve.svg``,
``checkpoint-N/`` folders and the method's artifacts (``adapter/``, ``model/``, ``head_bias/``, ...).
JSON files are written atomically (a temporary file, then a rename), so an interrupted run never
leaves half a config or summary behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._files import parse_file, write_json_atomic
from .errors import RunFolderError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
DATA_FILE = "data.jsonl"
FORMAT = "workbench_run"
VERSION = 1


class RunFolder:
    """The files of one training run. ``RunFolder(path).config`` reads and checks ``config.json``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ state
    def is_run(self) -> bool:
        """Whether the folder holds a workbench run (it has a ``config.json``)."""
        return (self.path / CONFIG_FILE).is_file()

    def finished(self) -> bool:
        """Whether the run ended (``summary.json`` is written last)."""
        return (self.path / SUMMARY_FILE).is_file()

    # ------------------------------------------------------------------ reading
    @property
    def config(self) -> dict:
        """``config.json``, with a clear error if it is missing, corrupt or not a run's."""
        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise RunFolderError(f"{self.path} is not a training run folder (no {CONFIG_FILE})")
        cfg = parse_file(path, RunFolderError)
        if not isinstance(cfg, dict) or "recipe" not in cfg or "model_id" not in cfg:
            raise RunFolderError(f"{path} is not a workbench run config (no recipe / model_id)")
        version = cfg.get(FORMAT)
        if version is not None and version > VERSION:
            raise RunFolderError(f"{path} was written by a newer workbench (run format {version}; this one "
                                 f"reads up to {VERSION})")
        return cfg

    @property
    def summary(self) -> dict:
        path = self.path / SUMMARY_FILE
        if not path.is_file():
            raise RunFolderError(f"run {self.path} has not finished (no {SUMMARY_FILE})")
        return parse_file(path, RunFolderError)

    def metrics(self) -> list[dict]:
        """The logged steps, in order (``[]`` before the first log)."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def require(self, artifact: str | None) -> None:
        """Raise unless the finished artifact folder ``artifact`` exists."""
        if artifact and not (self.path / artifact).is_dir():
            raise RunFolderError(f"run {self.path} has no {artifact}/ folder: the run did not finish (resume it "
                                 f"with resume_from_checkpoint: true) or the folder is incomplete")

    # ------------------------------------------------------------------ writing
    def write_config(self, config: dict) -> Path:
        return write_json_atomic(self.path / CONFIG_FILE, {FORMAT: VERSION, **config})

    def write_summary(self, summary: dict) -> Path:
        return write_json_atomic(self.path / SUMMARY_FILE, summary)

    def append_metrics(self, row: dict) -> None:
        with (self.path / METRICS_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop log lines past the checkpoint (the interrupted run's tail)."""
        keep = [m for m in self.metrics() if m.get("step", 0) <= step]
        path = self.path / METRICS_FILE
        if path.is_file():
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(json.dumps(m) + "\n" for m in keep))
            os.replace(tmp, path)


def read_run_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run folder, with a clear error if it is missing or corrupt."""
    return RunFolder(run_dir).config


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The ``metrics.jsonl`` rows of a run folder."""
    return RunFolder(run_dir).metrics()
