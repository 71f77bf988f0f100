"""Full fine-tuning: every weight of the model is trained (the unembedding's bridge-only bias aside)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...interventions import Intervention
from ..run_folder import RunFolder
from .base import Method, strip_bridge

if TYPE_CHECKING:
    from ...model import Workbench

MODEL_DIR = "model"


def trainable_full(name: str) -> bool:
    # The bridge gives the unembedding a zero bias the HF model does not have: keep it frozen.
    return not strip_bridge(name).endswith("lm_head.bias")


def save_full_weights(wb: Workbench, folder: str | Path) -> Path:
    """Plain-HF safetensors + config + tokenizer: ``Workbench.load(folder)`` loads it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {strip_bridge(n): p.detach().cpu().contiguous() for n, p in wb.model.named_parameters()
               if trainable_full(n)}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    wb.model.config.save_pretrained(str(folder))
    wb.tokenizer.save_pretrained(str(folder))
    return folder


def load_full_weights(wb: Workbench, folder: str | Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / "model.safetensors"))
    params = {strip_bridge(n): p for n, p in wb.model.named_parameters() if trainable_full(n)}
    missing = sorted(set(params) - set(saved))
    if missing:
        raise ValueError(f"{folder}: weights missing for {missing[:4]}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(saved[k])


class FullMethod(Method):
    name = "full"

    def prepare(self) -> None:
        for n, p in self.wb.model.named_parameters():
            p.requires_grad_(trainable_full(n))

    def warm_start(self, run_dir: Path) -> None:
        load_full_weights(self.wb, run_dir / MODEL_DIR)

    def save_trainables(self, folder: Path) -> None:
        save_full_weights(self.wb, Path(folder) / MODEL_DIR)

    def load_trainables(self, folder: Path) -> None:
        load_full_weights(self.wb, Path(folder) / MODEL_DIR)

    @classmethod
    def apply(cls, run: RunFolder, recipe: Mapping[str, Any], wb: Workbench) -> list[Intervention]:
        run.require(MODEL_DIR)
        load_full_weights(wb, run / MODEL_DIR)
        return []
