"""The package's logger: ``logging`` under the name ``workbench``, shown by default.

Progress messages of long steps (training, experiments) go through :func:`get_logger`. Unless the
application has configured logging itself (a handler on the root or the ``workbench`` logger),
they are printed to the current ``sys.stdout`` at INFO level, so that a notebook or the command
line shows them; ``logging.getLogger("workbench").setLevel(logging.WARNING)`` silences them.
"""

from __future__ import annotations

import logging
import sys


class _CurrentStdout(logging.Handler):
    """Write to whatever ``sys.stdout`` is at the time (Jupyter and pytest swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stdout, flush=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` (a ``workbench.*`` name), with the default handler installed once."""
    root = logging.getLogger("workbench")
    if not root.handlers and not logging.getLogger().handlers:
        root.addHandler(_CurrentStdout())
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name)
