"""Workbench: study and steer concepts inside language models, for safety research.

The top-level names load on first use (PEP 562), so ``import workbench`` and the command line's
``--help`` do not pay for importing torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ActivationStore", "Activations", "DEFAULT_MODEL", "Workbench", "load", "__version__"]

_LAZY = {"ActivationStore": ".activations", "Activations": ".model", "Workbench": ".model",
         "DEFAULT_MODEL": ".models", "load": ".models"}

if TYPE_CHECKING:
    from .activations import ActivationStore
    from .model import Activations, Workbench
    from .models import DEFAULT_MODEL, load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
