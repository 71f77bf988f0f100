"""The interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads with the backends themselves, not with this interface (CLI start-up)
    import torch

# A hook function gets the site's tensor (TransformerLens shape, e.g. [batch, pos, d_model] or
# [batch, pos, n_heads, d_head] for attn.hook_z) and returns a replacement or None.
HookFn = Callable[["torch.Tensor"], "torch.Tensor | None"]


class StopForward(Exception):
    """Raised inside a hook to end a forward pass early (everything needed is captured)."""


class Backend(ABC):
    """Forward passes of one HF model with hooks at site names.

    Capabilities (class flags, read instead of backend names): ``persistent_hooks``, installed
    hooks fire on every call of the HF model itself (``generate``, the HF Trainer, the exact
    shortcuts of :mod:`workbench._forward`), not only inside :meth:`run`."""

    name: str
    valid_hooks: set[str]
    persistent_hooks: bool = False

    def __init__(self, model, tokenizer, model_id: str):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id

    @abstractmethod
    def install(self, hooks: Sequence[tuple[str, HookFn]]) -> AbstractContextManager:
        """Install hooks for the duration of a ``with`` block (removed on any exit)."""

    @abstractmethod
    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        hooks: Sequence[tuple[str, HookFn]] = (),
        **kwargs,
    ) -> Any:
        """One forward pass of the HF model with ``hooks`` (and any installed ones) active.

        Returns the HF output (``.logits`` [batch, pos, vocab]); ``None`` if a hook raised
        :class:`StopForward`.
        """

    def installed_count(self) -> int:
        """How many hooks :meth:`install` has active right now."""
        return 0

    def hook_count(self) -> int:
        """How many hook functions are attached right now (a leak check)."""
        return 0
