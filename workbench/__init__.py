"""Workbench: study and steer concepts inside language models, for safety research."""

from .activations import ActivationStore
from .model import Activations, Workbench
from .models import DEFAULT_MODEL, load

__version__ = "0.1.0"
__all__ = ["ActivationStore", "Activations", "DEFAULT_MODEL", "Workbench", "load", "__version__"]
